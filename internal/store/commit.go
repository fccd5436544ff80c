package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Group commit for the embedded store.
//
// SQLite lets one connection write at a time; FerretDB opens many, so
// concurrent writers wait on SQLite's busy handler, which sleeps in
// milliseconds (measured: 1.3 ms an update with 20 writers against 0.19 ms
// from one). And each commit's fdatasync costs about as much as the update
// itself. So on the embedded store every write goes through the committer.
// A group writer takes the writes queued while the previous group was being
// made durable, sends the job and system updates among them as one
// unordered bulk write per collection (one round trip for the group, where
// one write after another spent most of its time waiting to be scheduled),
// runs the other writes one by one, makes the whole group durable with one
// Sync, and only then releases each waiter with its own result. A write
// that failed fails only its own caller; a failed Sync fails every write of
// its group, since none of them is known to be durable.
//
// A MongoDB server (and FerretDB over PostgreSQL) needs none of this: each
// write is durable when acknowledged, and the server already shares one
// journal or WAL flush among concurrent commits.

// DefaultGroupMax is the most writes one group holds when Config.GroupMax
// is 0.
const DefaultGroupMax = 128

// DefaultGroupWriters is how many groups are committed at once when
// Config.GroupWriters is 0. SQLite still takes one commit at a time, but
// most of an update's time in FerretDB is decoding and encoding the
// document, which two writers overlap: measured 93 → 110 workflows/s from
// one writer to two on 2 cores, where more give nothing.
const DefaultGroupWriters = 2

// ErrClosed is returned for a write queued after Close.
var ErrClosed = errors.New("store: closed")

type write struct {
	ctx context.Context // the caller's: a write whose caller gave up before its group started is not run
	// Either model, sent in the group's bulk write on coll, or fn, run on
	// its own.
	coll  *mongo.Collection
	model mongo.WriteModel
	fn    func(ctx context.Context) error
	err   error
	// matched: an update model matched its document. A bulk result counts
	// matches for the whole bulk only, so when some document was missing
	// unsure is set and the caller finds out for itself.
	matched, unsure bool
	done            chan struct{}
}

// CheckpointEvery is how many groups pass between two calls of
// Config.Checkpoint.
const CheckpointEvery = 256

type committer struct {
	queue chan *write
	sync  func(ctx context.Context) error
	// checkpoint (nil: none) runs every CheckpointEvery groups with mu held
	// for writing: no group is being written meanwhile.
	checkpoint func(ctx context.Context) error
	mu         sync.RWMutex
	groups     atomic.Int64
	max        int
	opCtx      func(context.Context) (context.Context, context.CancelFunc)
	stop       chan struct{}
	once       sync.Once
	stopped    chan struct{}
}

// checkpointFn may be nil.
func newCommitter(syncFn, checkpointFn func(context.Context) error, max, writers int, opCtx func(context.Context) (context.Context, context.CancelFunc)) *committer {
	if max <= 0 {
		max = DefaultGroupMax
	}
	if writers <= 0 {
		writers = DefaultGroupWriters
	}
	c := &committer{queue: make(chan *write, max), sync: syncFn, checkpoint: checkpointFn, max: max, opCtx: opCtx,
		stop: make(chan struct{}), stopped: make(chan struct{})}
	var wg sync.WaitGroup
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.loop()
		}()
	}
	go func() {
		wg.Wait()
		close(c.stopped)
	}()
	return c
}

// do queues w and waits until it is durable, or failed, or ctx is done.
// When ctx ends after w was taken into a group, w still runs to its end
// (its outcome is then unknown to the caller, as with any cut-off write).
func (c *committer) do(ctx context.Context, w *write) error {
	w.ctx, w.done = ctx, make(chan struct{})
	select {
	case c.queue <- w:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.stop:
		return ErrClosed
	}
	select {
	case <-w.done:
		return w.err
	case <-ctx.Done():
		return ctx.Err()
	case <-c.stopped:
		select {
		case <-w.done:
			return w.err
		default:
			return ErrClosed // queued after the committer drained
		}
	}
}

func (c *committer) loop() {
	group := make([]*write, 0, c.max)
	for {
		select {
		case w := <-c.queue:
			group = append(group[:0], w)
		case <-c.stop:
			c.drain()
			return
		}
		// Whatever queued meanwhile joins this group: no timer, so a lone
		// write waits for nothing, and under load groups grow by themselves.
	gather:
		for len(group) < c.max {
			select {
			case w := <-c.queue:
				group = append(group, w)
			default:
				break gather
			}
		}
		c.mu.RLock()
		c.commit(group)
		c.mu.RUnlock()
		if c.checkpoint != nil && c.groups.Add(1)%CheckpointEvery == 0 {
			c.mu.Lock()
			ctx, cancel := c.opCtx(context.Background())
			_ = c.checkpoint(ctx) // maintenance: a failure is tried again CheckpointEvery groups later
			cancel()
			c.mu.Unlock()
		}
	}
}

func (c *committer) commit(group []*write) {
	ran := 0
	var bulks []*mongo.Collection
	byColl := map[*mongo.Collection][]*write{}
	for _, w := range group {
		if err := w.ctx.Err(); err != nil {
			w.err = err
			continue
		}
		ran++
		if w.model != nil {
			if _, ok := byColl[w.coll]; !ok {
				bulks = append(bulks, w.coll)
			}
			byColl[w.coll] = append(byColl[w.coll], w)
			continue
		}
		// Detached from the caller's cancellation: a write once started runs
		// to its end, so a group never leaves a half-sent command behind.
		ctx, cancel := c.opCtx(context.Background())
		w.err = w.fn(ctx)
		cancel()
	}
	for _, coll := range bulks {
		ctx, cancel := c.opCtx(context.Background())
		bulkWrite(ctx, coll, byColl[coll])
		cancel()
	}
	if ran > 0 {
		ctx, cancel := c.opCtx(context.Background())
		err := c.sync(ctx)
		cancel()
		if err != nil {
			err = fmt.Errorf("make writes durable: %w", err)
			for _, w := range group {
				if w.err == nil {
					w.err = err
				}
			}
		}
	}
	for _, w := range group {
		close(w.done)
	}
}

// bulkWrite sends ws as one unordered bulk write and gives each its own
// outcome.
func bulkWrite(ctx context.Context, coll *mongo.Collection, ws []*write) {
	models := make([]mongo.WriteModel, len(ws))
	for i, w := range ws {
		models[i] = w.model
	}
	res, err := coll.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(false))
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && bwe.WriteConcernError == nil && len(bwe.WriteErrors) > 0 {
		// FerretDB ignores ordered=false: it stops at the first refused
		// update and reports it at index 0, whichever it was, so no write of
		// the bulk is known to be applied. Each fails with the error; read
		// as a single write's error, so IsDuplicateKeyError works on it (and
		// an upsert that lost a race is tried again, see Store.update).
		we := bwe.WriteErrors[0]
		err = fmt.Errorf("a bulk of %d writes stopped at a refused one, maybe this: %w",
			len(ws), mongo.WriteException{WriteErrors: mongo.WriteErrors{we.WriteError}})
	}
	if err != nil {
		for _, w := range ws {
			w.err = err
		}
		return
	}
	// Inserts and upserts count as matched here: only updates of a
	// missing document make the counts fall short.
	all := int(res.MatchedCount+res.InsertedCount+res.UpsertedCount) >= len(ws)
	for _, w := range ws {
		w.matched, w.unsure = all, !all
	}
}

// drain fails what is still queued at Close.
func (c *committer) drain() {
	for {
		select {
		case w := <-c.queue:
			w.err = ErrClosed
			close(w.done)
		default:
			return
		}
	}
}

func (c *committer) close(ctx context.Context) error {
	c.once.Do(func() { close(c.stop) })
	select {
	case <-c.stopped:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("store: groups still in flight at close: %w", ctx.Err())
	}
}
