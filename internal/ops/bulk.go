package ops

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// Bulk actions: POST /api/jobs/bulk.
const (
	BulkRetry  = "retry"
	BulkCancel = "cancel"
	BulkDelete = "delete"
)

// BulkActions are the actions Bulk takes.
var BulkActions = []string{BulkRetry, BulkCancel, BulkDelete}

// Bulk work is bounded: the matched jobs are kept in chunks of
// Config.BulkChunkSize ids, at most bulkWorkers jobs are acted on at once, and
// progress is recorded at least every bulkHeartbeat, so an action whose
// process died (nothing recorded for bulkStale) is resumed by ResumeBulk.
const (
	DefaultBulkChunkSize = 500
	bulkWorkers          = 8
	bulkHeartbeat        = 10 * time.Second
	bulkStale            = time.Minute
)

// BulkRequest is one bulk action.
type BulkRequest struct {
	Action string
	Filter store.JobFilter
	// User is who asked (the audit and the action's record).
	User string
	// All must be set for an empty filter: an action on every job is
	// never taken by omission.
	All bool
}

// ErrEmptyFilter: a bulk action's filter selects every job and the request
// did not say all.
var ErrEmptyFilter = errors.New("the filter is empty: it selects every job; name at least one field, or send all: true to act on every job")

// CountBulk is the dry run of a bulk action: how many jobs the filter
// selects now.
func (o *Operator) CountBulk(ctx context.Context, f store.JobFilter) (int, error) {
	if o.cfg.Store == nil {
		return 0, ErrNoStore
	}
	n, err := o.cfg.Store.CountJobs(ctx, f)
	if err != nil {
		return 0, storeErr(err)
	}
	return int(n), nil
}

// StartBulk records the action and the jobs its filter selects now, then
// acts on them in the background; done is closed once it has finished (or
// the Operator is closed: ResumeBulk then finishes it later). The returned
// op is a copy as it stood when the work started: read the action again
// (GetBulk) for its progress.
func (o *Operator) StartBulk(ctx context.Context, req BulkRequest) (op *store.BulkOp, done <-chan struct{}, err error) {
	if o.cfg.Store == nil {
		return nil, nil, ErrNoStore
	}
	if req.Action != BulkDelete && o.cfg.Inspector == nil {
		return nil, nil, ErrNoRedis
	}
	switch req.Action {
	case BulkRetry, BulkCancel, BulkDelete:
	default:
		return nil, nil, fmt.Errorf("unknown bulk action %q", req.Action)
	}
	if req.Filter.Empty() && !req.All {
		return nil, nil, ErrEmptyFilter
	}
	now := time.Now().UTC()
	op = &store.BulkOp{ID: uuid.NewString(), Action: req.Action, Filter: req.Filter, User: req.User,
		Status: store.BulkSelecting, CreatedAt: now, UpdatedAt: now}
	if err := o.cfg.Store.CreateBulkOp(ctx, op); err != nil {
		return nil, nil, storeErr(err)
	}
	if err := o.selectJobs(ctx, op); err != nil {
		return nil, nil, err
	}
	snapshot := *op
	return &snapshot, o.background(op), nil
}

// selectJobs writes the jobs op's filter selects, in chunks, and marks it
// running.
func (o *Operator) selectJobs(ctx context.Context, op *store.BulkOp) error {
	size := o.cfg.BulkChunkSize
	chunk := make([]store.JobRef, 0, size)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if err := o.cfg.Store.AddBulkChunk(ctx, op.ID, op.Chunks, chunk); err != nil {
			return err
		}
		op.Chunks++
		op.Matched += len(chunk)
		chunk = chunk[:0]
		return nil
	}
	err := o.cfg.Store.EachJobRef(ctx, op.Filter, func(ref store.JobRef) error {
		chunk = append(chunk, ref)
		if len(chunk) == size {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return storeErr(err)
	}
	op.Status = store.BulkRunning
	if op.Matched == 0 {
		op.Status = store.BulkDone
		op.FinishedAt = new(time.Now().UTC())
	}
	if err := o.cfg.Store.SaveBulkOp(ctx, op); err != nil {
		return storeErr(err)
	}
	return nil
}

// background works op through on the Operator's own context; the channel
// is closed when it returns.
func (o *Operator) background(op *store.BulkOp) <-chan struct{} {
	done := make(chan struct{})
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		defer close(done)
		if err := o.workBulk(o.bg, op); err != nil {
			o.log.Warn("bulk action interrupted; it resumes later", "bulkId", op.ID, "action", op.Action, "err", err)
		}
	}()
	return done
}

// GetBulk reads a bulk action and the outcomes of its first limit matched
// jobs (all of them when limit < 0; none when 0), in the order they were
// matched: OutcomePending for those it has not acted on yet.
func (o *Operator) GetBulk(ctx context.Context, id string, limit int) (*store.BulkOp, []store.BulkOutcome, error) {
	if o.cfg.Store == nil {
		return nil, nil, ErrNoStore
	}
	op, err := o.cfg.Store.GetBulkOp(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, notFoundf("bulk action %s not found", id)
	}
	if err != nil {
		return nil, nil, storeErr(err)
	}
	out := []store.BulkOutcome{}
	for i := 0; i < op.Chunks && (limit < 0 || len(out) < limit); i++ {
		c, err := o.cfg.Store.GetBulkChunk(ctx, id, i)
		if err != nil {
			return nil, nil, storeErr(err)
		}
		for k, ref := range c.Jobs {
			if limit >= 0 && len(out) == limit {
				break
			}
			if k < len(c.Outcomes) && c.Outcomes[k].Outcome != "" {
				out = append(out, c.Outcomes[k])
				continue
			}
			out = append(out, store.BulkOutcome{JobID: ref.JobID, EventID: ref.EventID, Outcome: store.OutcomePending})
		}
	}
	return op, out, nil
}

// ResumeBulk takes over every unfinished bulk action nobody has recorded
// progress of for a minute (its process died or stopped) and finishes it
// in the background. It returns how many it took over.
func (o *Operator) ResumeBulk(ctx context.Context) (int, error) {
	if o.cfg.Store == nil {
		return 0, ErrNoStore
	}
	ops, err := o.cfg.Store.ListBulkOps(ctx, true, 100)
	if err != nil {
		return 0, storeErr(err)
	}
	n := 0
	for _, op := range ops {
		op, err := o.cfg.Store.ClaimBulkOp(ctx, op.ID, time.Now().Add(-bulkStale))
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return n, storeErr(err)
		}
		if op.Status == store.BulkSelecting {
			// Cut off while writing the matched jobs: select again (the
			// chunks are rewritten in place).
			op.Chunks, op.Matched = 0, 0
			if err := o.selectJobs(ctx, op); err != nil {
				return n, err
			}
		}
		o.log.Info("bulk action resumed", "bulkId", op.ID, "action", op.Action, "chunk", op.Next, "of", op.Chunks)
		o.background(op)
		n++
	}
	return n, nil
}

// workBulk acts on op's jobs from its next chunk on, recording each
// chunk's outcomes and then the action's progress.
func (o *Operator) workBulk(ctx context.Context, op *store.BulkOp) error {
	for ; op.Next < op.Chunks; op.Next++ {
		c, err := o.cfg.Store.GetBulkChunk(ctx, op.ID, op.Next)
		if err != nil {
			return err
		}
		// A chunk cut off half-way is done again whole: each action on a
		// job it already did finds the job moved on and is skipped.
		before := *op
		c.Outcomes = make([]store.BulkOutcome, len(c.Jobs))
		if err := o.workChunk(ctx, op, before, c); err != nil {
			*op = before
			return err
		}
		if err := o.cfg.Store.SaveBulkChunk(ctx, c); err != nil {
			*op = before
			return err
		}
		if op.Next+1 == op.Chunks {
			op.Status = store.BulkDone
			op.FinishedAt = new(time.Now().UTC())
		}
		next := *op
		next.Next++
		if err := o.cfg.Store.SaveBulkOp(ctx, &next); err != nil {
			return err
		}
	}
	o.log.Info("bulk action done", "bulkId", op.ID, "action", op.Action, "matched", op.Matched,
		"done", op.Done, "failed", op.Failed, "skipped", op.Skipped)
	return nil
}

// workChunk acts on a chunk's jobs, bulkWorkers at a time, counting their
// outcomes on op. Every bulkHeartbeat it records that the action is alive
// with the counts it had before the chunk (before): a chunk cut off is
// done again whole, so its partial counts must never be recorded.
func (o *Operator) workChunk(ctx context.Context, op *store.BulkOp, before store.BulkOp, c *store.BulkChunk) error {
	type result struct {
		i   int
		out store.BulkOutcome
	}
	jobs := make(chan int)
	results := make(chan result)
	var wg sync.WaitGroup
	for range bulkWorkers {
		wg.Go(func() {
			for i := range jobs {
				results <- result{i, o.actOn(ctx, op.Action, op.Filter, c.Jobs[i])}
			}
		})
	}
	go func() {
		defer close(jobs)
		for i := range c.Jobs {
			select {
			case jobs <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { wg.Wait(); close(results) }()
	last := time.Now()
	for r := range results {
		c.Outcomes[r.i] = r.out
		switch r.out.Outcome {
		case store.OutcomeDone:
			op.Done++
		case store.OutcomeSkipped:
			op.Skipped++
		default:
			op.Failed++
		}
		if time.Since(last) >= bulkHeartbeat {
			last = time.Now()
			if err := o.cfg.Store.SaveBulkOp(ctx, &before); err != nil {
				o.log.Warn("bulk action progress not recorded", "bulkId", op.ID, "err", err)
			}
		}
	}
	return ctx.Err()
}

// actOn does action to one job's run and says how it went: skipped when
// the job is in no state for it, moved on to another run since it was
// matched or no longer matches filter (a failed job retried and completed
// meanwhile is never deleted by a filter of failures), failed when a store
// failed.
func (o *Operator) actOn(ctx context.Context, action string, filter store.JobFilter, ref store.JobRef) store.BulkOutcome {
	out := store.BulkOutcome{JobID: ref.JobID, EventID: ref.EventID}
	skip := func(format string, args ...any) store.BulkOutcome {
		out.Outcome, out.Detail = store.OutcomeSkipped, fmt.Sprintf(format, args...)
		return out
	}
	fail := func(err error) store.BulkOutcome {
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			return skip("%s", err.Error())
		}
		out.Outcome, out.Detail = store.OutcomeFailed, err.Error()
		return out
	}
	job, err := o.cfg.Store.GetJob(ctx, ref.JobID)
	if errors.Is(err, store.ErrNotFound) {
		return skip("job %s no longer exists", ref.JobID)
	}
	if err != nil {
		return fail(storeErr(err))
	}
	if job.EventID != ref.EventID {
		return skip("job %s moved on to another run", ref.JobID)
	}
	if !filter.Matches(job) {
		return skip("job %s no longer matches the filter (it is %s)", ref.JobID, job.Status)
	}
	if job.EventID == "" && action != BulkDelete {
		return skip("job %s was never sent: send it to start its run", ref.JobID)
	}
	switch action {
	case BulkDelete:
		if err := o.deleteJob(ctx, job); err != nil {
			return fail(err)
		}
		out.Detail = "deleted"
	case BulkRetry:
		ev, err := o.eventOf(job)
		if err != nil {
			return fail(err)
		}
		res, err := o.retry(ctx, ev)
		if err != nil {
			return fail(err)
		}
		out.Detail = res.Action
	case BulkCancel:
		if !tasks.Live(job.Status) {
			return skip("job %s is %s: nothing to cancel", job.ID, job.Status)
		}
		ev, err := o.eventOf(job)
		if err != nil {
			return fail(err)
		}
		if _, err := o.cancel(ctx, ev); err != nil {
			return fail(err)
		}
		out.Detail = "cancelled"
	}
	out.Outcome = store.OutcomeDone
	return out
}
