package store

import (
	"context"
	"hash/maphash"
	"sync/atomic"
)

// Run locks: what makes a job's writes atomic on FerretDB v1.
//
// FerretDB applies an update by reading the document, changing it in Go and
// writing the whole of it back, with nothing in between to stop another
// update of the same document: the later write-back loses the earlier one
// (a cancel overwritten by an attempt's start, a checkpoint by a touch), and
// a filter condition is only checked against what was read. So on FerretDB
// every write of a job document (and of a system's lastInsights) holds that
// document's lock for its read, its check in Go and its write until the
// write is durable; on MongoDB the condition is in the update's filter and
// no lock is taken.
//
// A run's plain checkpoints do not read the job first: each lock stripe
// counts the transitions that end a run (a cancel, a new run claimed or
// started), and a run that has seen its stripe's count unchanged since it
// last read its job knows no transition happened. Only when the count moved
// (for this job or another of the stripe) does it read the job again, so
// the check costs a read per transition, not per checkpoint.
//
// The locks are in-process: FerretDB is the embedded store of one process
// (serve refuses split roles on it), or a test's. Several processes writing
// one FerretDB over MONGODB_URI are not made safe by them.

// runLockStripes is the number of lock stripes: jobs hashing to one stripe
// share its lock (a few microseconds' wait, never a deadlock: no caller holds
// two).
const runLockStripes = 1024

type runLocks struct {
	seed  maphash.Seed
	sem   [runLockStripes]chan struct{}
	epoch [runLockStripes]atomic.Uint64
}

func newRunLocks() *runLocks {
	l := &runLocks{seed: maphash.MakeSeed()}
	for i := range l.sem {
		l.sem[i] = make(chan struct{}, 1)
	}
	return l
}

func (l *runLocks) stripe(key string) int {
	return int(maphash.String(l.seed, key) % runLockStripes)
}

// heldLock is one held stripe.
type heldLock struct {
	l *runLocks
	i int
}

// lock takes key's stripe, or gives up when ctx ends.
func (l *runLocks) lock(ctx context.Context, key string) (heldLock, error) {
	i := l.stripe(key)
	select {
	case l.sem[i] <- struct{}{}:
		return heldLock{l, i}, nil
	case <-ctx.Done():
		return heldLock{}, ctx.Err()
	}
}

func (h heldLock) unlock() {
	if h.l != nil {
		<-h.l.sem[h.i]
	}
}

// transition records, with the stripe held, that a run of it ends or
// changes hands: every run of the stripe reads its job before its next
// write.
func (h heldLock) transition() {
	if h.l != nil {
		h.l.epoch[h.i].Add(1)
	}
}

// seen is the stripe's count, plus one so that a Job's zero means "never
// read under the lock".
func (h heldLock) seen() uint64 {
	if h.l == nil {
		return 0
	}
	return h.l.epoch[h.i].Load() + 1
}

// lockJob takes the lock of job jobID's writes on FerretDB; on MongoDB it
// takes nothing (its updates are atomic with their filter). The caller
// unlocks once its write is durable.
func (s *Store) lockJob(ctx context.Context, jobID string) (heldLock, error) {
	if s.locks == nil {
		return heldLock{}, nil
	}
	return s.locks.lock(ctx, "job\x00"+jobID)
}

// lockSystem is lockJob for a system document.
func (s *Store) lockSystem(ctx context.Context, systemID string) (heldLock, error) {
	if s.locks == nil {
		return heldLock{}, nil
	}
	return s.locks.lock(ctx, "system\x00"+systemID)
}
