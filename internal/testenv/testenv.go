// Package testenv gives tests the stores they run against: the real Redis
// and MongoDB named by REDIS_URL / MONGODB_URI, else embedded ones
// (miniredis, FerretDB on a temp dir).
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
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
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
		cfg.Prepare, cfg.Sync, cfg.Checkpoint, cfg.HistoryWindow = mongoDev.Prepare, mongoDev.Sync, mongoDev.Checkpoint, mongoDev.HistoryWindow
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

// Redis returns connection options for a Redis database of this test
// package's own (db, 1–10; 11 and 12 belong to the peer benchmarks, 13 to `insights bench`, 14 to the loadtest test), flushed
// first. With REDIS_URL set it is that server; else a miniredis that stops
// when the test ends.
func Redis(t testing.TB, db int) asynq.RedisConnOpt {
	t.Helper()
	if u := os.Getenv("REDIS_URL"); u != "" {
		opt, err := asynq.ParseRedisURI(u)
		if err != nil {
			t.Fatalf("REDIS_URL: %v", err)
		}
		o, ok := opt.(asynq.RedisClientOpt)
		if !ok {
			t.Fatalf("REDIS_URL: tests need a plain redis:// URL, got %T", opt)
		}
		o.DB = db
		c := redis.NewClient(&redis.Options{Addr: o.Addr, Username: o.Username, Password: o.Password, DB: db, TLSConfig: o.TLSConfig})
		defer c.Close()
		if err := c.FlushDB(context.Background()).Err(); err != nil {
			t.Fatalf("flush redis db %d: %v", db, err)
		}
		return o
	}
	r, err := devstack.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return asynq.RedisClientOpt{Addr: r.Addr()}
}

// WaitFor polls cond until it holds or the deadline passes.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok && err == nil {
			return
		}
		lastErr = err
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("timed out after %v waiting for %s (last error: %v)", within, what, lastErr)
}
