// Package testenv gives tests the stores they run against: the real Redis
// and MongoDB named by REDIS_URL / MONGODB_URI, else embedded ones
// (miniredis, FerretDB on a temp dir). It is also the one home of what more
// than one package's tests share: each package's Redis database
// (redisdb.go), the fakes of the service's collaborators (fakes.go), the
// waits (wait.go) and, in fakegemini, the model's API.
package testenv

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/internal/store"
)

var (
	mongoOnce sync.Once
	mongoURI  string
	mongoErr  error
	mongoDev  *devstack.Mongo
)

// MongoURI returns MONGODB_URI, or the URI of one embedded FerretDB shared by
// the test binary.
func MongoURI(t testing.TB) string {
	t.Helper()
	if u := os.Getenv("MONGODB_URI"); u != "" {
		return u
	}
	mongoOnce.Do(func() {
		dir, err := os.MkdirTemp("", "insights-ferretdb-")
		if err != nil {
			mongoErr = err
			return
		}
		m, err := devstack.StartMongo(context.Background(), dir, nil)
		if err != nil {
			mongoErr = err
			return
		}
		mongoURI, mongoDev = m.URI, m
	})
	if mongoErr != nil {
		t.Fatalf("embedded FerretDB: %v", mongoErr)
	}
	return mongoURI
}

var nonWord = regexp.MustCompile(`[^A-Za-z0-9]+`)

// DBName is a database name of its own for this test.
func DBName(t testing.TB) string {
	n := nonWord.ReplaceAllString(t.Name(), "_")
	if len(n) > 30 {
		n = n[len(n)-30:]
	}
	return fmt.Sprintf("t%d_%s", time.Now().UnixNano()%1e9, strings.Trim(n, "_"))
}

// StoreConfig is the store configuration for a fresh database of this test:
// on the embedded FerretDB it is wired as the service wires its own (_id
// indexes and group commit).
func StoreConfig(t testing.TB) store.Config {
	t.Helper()
	cfg := store.Config{URI: MongoURI(t), Database: DBName(t)}
	if os.Getenv("MONGODB_URI") == "" {
		cfg.Prepare, cfg.Sync, cfg.Checkpoint, cfg.HistoryWindow, cfg.SQLite = mongoDev.Prepare, mongoDev.Sync, mongoDev.Checkpoint, mongoDev.HistoryWindow, mongoDev.SQLite
	}
	return cfg
}

// Store opens the store on a fresh database, dropped when the test ends.
func Store(t testing.TB) *store.Store {
	t.Helper()
	return StoreWith(t, nil)
}

// StoreWith is Store with StoreConfig changed by adjust first (nil: none).
func StoreWith(t testing.TB, adjust func(*store.Config)) *store.Store {
	t.Helper()
	ctx := context.Background()
	cfg := StoreConfig(t)
	if adjust != nil {
		adjust(&cfg)
	}
	s, err := store.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		_ = s.Database().Drop(context.Background())
		_ = s.Close(context.Background())
	})
	return s
}
