// Package devstack runs the embedded stores of the default, zero-config
// mode: an in-process miniredis and an in-process FerretDB (SQLite handler)
// that speaks the MongoDB wire protocol to the real driver.
package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/alicebob/miniredis/v2"
)

// Mongo is an embedded FerretDB.
type Mongo struct {
	URI    string
	cancel context.CancelFunc
	done   chan struct{}
}

// StartMongo starts FerretDB with its SQLite files under dir and waits until
// it accepts connections. logger may be nil (FerretDB's own logs are then
// dropped below warnings).
func StartMongo(ctx context.Context, dir string, logger *slog.Logger) (*Mongo, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: create %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	// Pick a free port first: FerretDB reports its address only after Run.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("devstack: pick a port: %w", err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: addr},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/",
		Logger:    logger,
	})
	if err != nil {
		return nil, fmt.Errorf("devstack: ferretdb: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	m := &Mongo{URI: "mongodb://" + addr + "/", cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		_ = f.Run(rctx)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return m, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			m.Close()
			return nil, errors.Join(errors.New("devstack: ferretdb did not start"), err, ctx.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops FerretDB and waits for its files to be closed.
func (m *Mongo) Close() {
	m.cancel()
	<-m.done
}

// Redis is an embedded miniredis. It keeps nothing on disk.
type Redis struct {
	*miniredis.Miniredis
	stop chan struct{}
}

// StartRedis starts miniredis on a loopback port. Its clock follows the wall
// clock so keys with an expiry (asynq's leases, completed-task retention)
// expire as they would in Redis.
func StartRedis() (*Redis, error) {
	mr := miniredis.NewMiniRedis()
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("devstack: miniredis: %w", err)
	}
	r := &Redis{Miniredis: mr, stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-r.stop:
				return
			case now := <-t.C:
				mr.SetTime(now)
				mr.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	return r, nil
}

// URL is the redis:// URL of the embedded server.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }

// Close stops the server; everything in it is lost.
func (r *Redis) Close() {
	close(r.stop)
	r.Miniredis.Close()
}
