package devstack

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// While a reader stays open, SQLite cannot rewind its write-ahead log and
// it grows with every write; Checkpoint truncates it once it passes the
// limit.
func TestCheckpointTruncatesAStarvedLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	m, err := StartMongo(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.walLimit = 1 << 20
	c, err := mongo.Connect(options.Client().ApplyURI(m.URI))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Disconnect(ctx)
	db := c.Database("wal")
	for i := range 50 {
		if _, err := db.Collection("a").InsertOne(ctx, bson.D{{Key: "i", Value: i}}); err != nil {
			t.Fatal(err)
		}
	}
	cur, err := db.Collection("a").Find(ctx, bson.D{}, options.Find().SetBatchSize(2))
	if err != nil {
		t.Fatal(err)
	}
	if !cur.Next(ctx) {
		t.Fatal("no document")
	}
	pad := make([]byte, 64<<10)
	for i := range 60 { // about 4 MB
		if _, err := db.Collection("b").InsertOne(ctx, bson.D{{Key: "i", Value: i}, {Key: "pad", Value: pad}}); err != nil {
			t.Fatal(err)
		}
	}
	wal := filepath.Join(dir, "wal.sqlite-wal")
	before := size(t, wal)
	if before <= m.walLimit {
		t.Fatalf("log is %d bytes with a reader open, want more than %d (the starvation this guards against)", before, m.walLimit)
	}
	// While the reader holds its snapshot, Checkpoint gives up after its
	// short wait and says so (the store's writes wait on it).
	if err := m.Checkpoint(ctx, "wal"); !errors.Is(err, ErrCheckpointBusy) {
		t.Fatalf("Checkpoint with a reader open: %v, want ErrCheckpointBusy", err)
	}
	_ = cur.Close(ctx)
	if err := m.Checkpoint(ctx, "wal"); err != nil {
		t.Fatal(err)
	}
	if after := size(t, wal); after >= m.walLimit {
		t.Fatalf("log is %d bytes after Checkpoint (was %d), want under %d", after, before, m.walLimit)
	}
	if n, err := db.Collection("b").CountDocuments(ctx, bson.D{}); err != nil || n != 60 {
		t.Fatalf("after the checkpoint: %d documents, %v; want 60", n, err)
	}
}

func size(t *testing.T, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}
