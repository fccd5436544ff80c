package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
)

// Reconcile re-enqueues, with the same eventId, every live job (queued,
// scheduled, processing, retrying), and every completed job whose
// follow-up was never sent, unchanged for at least quiet whose task Redis
// no longer has: MongoDB is the source of truth, so an accepted event
// is never lost to a Redis restart, a Redis without persistence or a task
// deleted by hand. It returns how many it re-enqueued.
//
// An outage of Redis (down, or still loading its data after a restart)
// stops the pass at the first job it meets, with an error outage.Of reads:
// nothing is known of the tasks then, and nothing is re-enqueued or
// changed; the next pass looks again.
func (a *App) Reconcile(ctx context.Context, quiet time.Duration) (int, error) {
	n := 0
	var errs []error
	err := a.Store.EachStale(ctx, time.Now().Add(-quiet), func(j *store.Job) error {
		_, err := a.Inspector.GetTaskInfo(j.Queue, j.EventID)
		if err == nil {
			return nil
		}
		if !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
			return outage.Mark(ctx, outage.Redis, fmt.Errorf("look up the task of job %s: %w", j.ID, err))
		}
		// A completed job without its follow-up runs again too: its
		// completed steps are skipped, send-completion sends it.
		if _, err := a.Client.Restore(ctx, j.Run()); err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			errs = append(errs, fmt.Errorf("re-enqueue %s: %w", j.ID, err))
			return nil
		}
		_ = a.Store.Touch(ctx, j)
		a.Log.Info("re-enqueued a job whose task was gone from Redis", "jobId", j.ID, "eventId", j.EventID, "queue", j.Queue, "status", j.Status)
		n++
		return nil
	})
	return n, errors.Join(append(errs, err)...)
}
