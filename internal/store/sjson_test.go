package store

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/devstack"
)

// TestDecodeSJSON: a document read from FerretDB's SQLite row is the one
// FerretDB itself answers, for every BSON type the store's documents (and
// the BMS app's) hold.
func TestDecodeSJSON(t *testing.T) {
	ctx := context.Background()
	m, err := devstack.StartMongo(ctx, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := Open(ctx, Config{URI: m.URI, Database: "sj", Prepare: m.Prepare, SQLite: m.SQLite})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	now := time.Now().UTC().Truncate(time.Millisecond)
	oid := bson.NewObjectID()
	doc := bson.D{{Key: "_id", Value: oid}, {Key: "id", Value: "app-job"}, {Key: "status", Value: "failed"},
		{Key: "i32", Value: int32(-7)}, {Key: "i64", Value: int64(1) << 40}, {Key: "f", Value: 2.5}, {Key: "whole", Value: 3.0},
		{Key: "t", Value: true}, {Key: "no", Value: false}, {Key: "nil", Value: nil}, {Key: "at", Value: now},
		{Key: "bin", Value: bson.Binary{Subtype: 4, Data: []byte{1, 2, 3}}}, {Key: "re", Value: bson.Regex{Pattern: "a.b", Options: "i"}},
		{Key: "ts", Value: bson.Timestamp{T: 5, I: 6}}, {Key: "str", Value: "quote \" \\ é \u2028 <>&"},
		{Key: "nested", Value: bson.D{{Key: "z", Value: 1}, {Key: "a", Value: bson.A{int32(1), "x", bson.D{{Key: "k", Value: now}}}}}},
		{Key: "arr", Value: bson.A{}},
		{Key: "empty", Value: bson.D{}},
		{Key: "progress", Value: bson.A{bson.D{{Key: "timestamp", Value: now}, {Key: "type", Value: "status"}, {Key: "data", Value: bson.D{{Key: "message", Value: "m"}}}}}},
	}
	if _, err := s.jobs.InsertOne(ctx, doc); err != nil {
		t.Fatal(err)
	}
	want, err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: oid}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	db, table, err := s.idx.handle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var row []byte
	if err := db.QueryRowContext(ctx, fmt.Sprintf(`SELECT _ferretdb_sjson FROM %q`, table)).Scan(&row); err != nil {
		t.Fatal(err)
	}
	d, err := decodeSJSON(row)
	if err != nil {
		t.Fatal(err)
	}
	got, err := bson.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	if g, w := bson.Raw(got).String(), want.String(); g != w {
		t.Errorf("decoded from SQLite:\n%s\nFerretDB answers:\n%s", g, w)
	}
	j, err := decodeJobSJSON(row)
	if err != nil || j.ID != "app-job" || j.Status != "failed" || len(j.Progress) != 1 || !j.Progress[0].Timestamp.Equal(now) {
		t.Fatalf("job decoded: %+v, %v", j, err)
	}
}
