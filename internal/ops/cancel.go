package ops

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// CancelResult is the answer to a cancel (DELETE /api/events/{eventId}).
type CancelResult struct {
	EventID       string `json:"eventId"`
	JobID         string `json:"jobId,omitempty"`
	Status        string `json:"status"` // the job's: cancelled
	Queue         string `json:"queue,omitempty"`
	PreviousState string `json:"previousState,omitempty"`
	TaskDeleted   bool   `json:"taskDeleted"`
}

// cancelWait bounds how long Cancel waits for a cancelled running task to
// stop before it leaves the task to its handler, which revokes it.
const cancelWait = 10 * time.Second

// Cancel marks the job cancelled first (so a handler that still runs
// revokes its task), then deletes a waiting task or cancels a running one
// and deletes it once it stops. ErrConflict for a completed event or job.
func (o *Operator) Cancel(ctx context.Context, id string) (*CancelResult, error) {
	ev, err := o.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	return o.cancel(ctx, ev)
}

// cancel is Cancel of an event looked up.
func (o *Operator) cancel(ctx context.Context, ev *event) (*CancelResult, error) {
	id := ev.ID
	res := &CancelResult{EventID: id, Status: tasks.StatusCancelled}
	if ev.Task != nil {
		res.Queue, res.PreviousState = ev.Task.Queue, ev.Task.State.String()
		if ev.Task.State == asynq.TaskStateCompleted {
			return nil, conflictf("event %s is completed: nothing to cancel", id)
		}
	}
	if ev.Job != nil {
		res.JobID = ev.Job.ID
		if ev.Job.Status == tasks.StatusCompleted {
			return nil, conflictf("job %s is completed: nothing to cancel", ev.Job.ID)
		}
		if ev.Job.Status != tasks.StatusCancelled {
			if err := o.cfg.Store.MarkCancelled(ctx, ev.Job.ID, id); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					return nil, conflictf("job %s moved on to another run meanwhile", ev.Job.ID)
				}
				return nil, storeErr(err)
			}
		}
	}
	if ev.Task == nil {
		return res, nil
	}
	q := ev.Task.Queue
	if ev.Task.State == asynq.TaskStateActive {
		if err := o.cfg.Inspector.CancelProcessing(id); err != nil {
			return nil, redisErr(err)
		}
	}
	// A cancelled handler revokes its task (deleted by asynq) or leaves it
	// to retry; delete whatever is left once it is no longer active.
	deadline := time.Now().Add(cancelWait)
	for {
		err := o.cfg.Inspector.DeleteTask(q, id)
		switch {
		case err == nil, errors.Is(err, asynq.ErrTaskNotFound):
			res.TaskDeleted = true
			o.log.Info("event cancelled", "eventId", id, "queue", q, "previous", res.PreviousState)
			return res, nil
		case errors.Is(err, asynq.ErrQueueNotFound):
			res.TaskDeleted = true
			return res, nil
		}
		// FailedPrecondition: still active.
		if time.Now().After(deadline) || ctx.Err() != nil {
			o.log.Warn("cancelled task still running; its handler will revoke it", "eventId", id, "err", err)
			return res, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}
