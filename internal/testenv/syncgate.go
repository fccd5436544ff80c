package testenv

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// ErrInjected is the error a SyncGate's failing Sync returns.
var ErrInjected = errors.New("testenv: injected sync failure")

// SyncGate wraps a store's Sync (store.Config.Sync) so that tests can hold a
// group commit between its writes and its acknowledgement: a closed gate
// lets a Sync through only with a permit, and FailNext makes Syncs fail.
type SyncGate struct {
	mu      sync.Mutex
	opened  chan struct{} // closed while the gate is open
	permits chan struct{}
	entered atomic.Int64
	fail    atomic.Int64
}

// NewSyncGate returns an open gate.
func NewSyncGate() *SyncGate {
	g := &SyncGate{opened: make(chan struct{}), permits: make(chan struct{}, 1024)}
	close(g.opened)
	return g
}

// Wrap returns next behind the gate.
func (g *SyncGate) Wrap(next func(ctx context.Context, database string) error) func(ctx context.Context, database string) error {
	return func(ctx context.Context, database string) error {
		g.entered.Add(1)
		g.mu.Lock()
		opened := g.opened
		g.mu.Unlock()
		select {
		case <-opened:
		case <-g.permits:
		case <-ctx.Done():
			return ctx.Err()
		}
		for n := g.fail.Load(); n > 0; n = g.fail.Load() {
			if g.fail.CompareAndSwap(n, n-1) {
				return ErrInjected
			}
		}
		return next(ctx, database)
	}
}

// Close holds every later Sync until a permit or Open.
func (g *SyncGate) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.opened:
		g.opened = make(chan struct{})
	default:
	}
}

// Open lets every Sync through.
func (g *SyncGate) Open() {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.opened:
	default:
		close(g.opened)
	}
}

// Allow lets n more held Syncs through.
func (g *SyncGate) Allow(n int) {
	for range n {
		g.permits <- struct{}{}
	}
}

// FailNext makes the next n Syncs that pass the gate fail with ErrInjected.
func (g *SyncGate) FailNext(n int) { g.fail.Add(int64(n)) }

// Entered counts the Syncs that reached the gate.
func (g *SyncGate) Entered() int64 { return g.entered.Load() }
