package ops

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// RetryResult is the answer to a retry (POST /api/events/{eventId}/retry).
type RetryResult struct {
	EventID       string `json:"eventId"`
	JobID         string `json:"jobId,omitempty"`
	Queue         string `json:"queue"`
	PreviousState string `json:"previousState"`
	State         string `json:"state"`
	Action        string `json:"action"` // run | re-enqueued
}

// Retry runs an archived, retry or scheduled task now; a failed job whose
// task Redis no longer has is enqueued again with its eventId. A run the
// operator starts again from the archive or a failed job gets its full
// retry budget back. ErrConflict for a cancelled job or a task in another
// state.
func (o *Operator) Retry(ctx context.Context, id string) (*RetryResult, error) {
	ev, err := o.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	return o.retry(ctx, ev)
}

// retry is Retry of an event looked up.
func (o *Operator) retry(ctx context.Context, ev *event) (*RetryResult, error) {
	id := ev.ID
	res := &RetryResult{EventID: id}
	if ev.Job != nil {
		res.JobID = ev.Job.ID
		if ev.Job.Status == tasks.StatusCancelled {
			return nil, conflictf("job %s was cancelled; send the event again to start a new run", ev.Job.ID)
		}
	}
	if ev.Task != nil {
		res.Queue, res.PreviousState = ev.Task.Queue, ev.Task.State.String()
		switch ev.Task.State {
		case asynq.TaskStateArchived, asynq.TaskStateRetry, asynq.TaskStateScheduled:
		default:
			return nil, conflictf("event %s is %s: only an archived, retry or scheduled task can be run now", id, ev.Task.State)
		}
		if ev.Task.State == asynq.TaskStateArchived || (ev.Job != nil && ev.Job.Status == tasks.StatusFailed) {
			if err := o.resetBudget(ctx, ev.Job); err != nil {
				return nil, err
			}
		}
		if err := o.cfg.Inspector.RunTask(ev.Task.Queue, id); err != nil {
			if errors.Is(err, asynq.ErrTaskNotFound) {
				return nil, conflictf("event %s changed state meanwhile; look again", id)
			}
			return nil, redisErr(err)
		}
		res.State, res.Action = asynq.TaskStatePending.String(), "run"
		o.log.Info("event run now", "eventId", id, "queue", ev.Task.Queue, "previous", res.PreviousState)
		return res, nil
	}
	// Redis has lost the task (retention, a flush): Mongo is the source of
	// truth, so a failed run is enqueued again from the job's fields.
	job := ev.Job
	if job.Status != tasks.StatusFailed {
		return nil, conflictf("event %s has no task in Redis and its job is %s: nothing to retry", id, job.Status)
	}
	if o.cfg.Client == nil {
		// Checked before the budget is reset for a run that cannot start.
		return nil, ErrNoClient
	}
	if err := o.resetBudget(ctx, job); err != nil {
		return nil, err
	}
	run := job.Run()
	run.ProcessAt = time.Now() // the operator asks for it now, whatever it was due
	info, err := o.cfg.Client.Restore(ctx, run)
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil, conflictf("event %s was enqueued again meanwhile", id)
	}
	if err != nil {
		return nil, redisErr(err)
	}
	res.Queue, res.PreviousState, res.State, res.Action = info.Queue, "", info.State.String(), "re-enqueued"
	o.log.Info("failed job re-enqueued", "eventId", id, "jobId", job.ID, "queue", info.Queue)
	return res, nil
}

// ResetBudgets gives the jobs whose current runs are these events their
// full retry budget back: the operator starts those runs again elsewhere
// (asynqmon's Run), and the worker never infers a re-run from a status. An
// event without a job (a follow-up) keeps asynq's own budget.
func (o *Operator) ResetBudgets(ctx context.Context, eventIDs ...string) error {
	if o.cfg.Store == nil {
		return ErrNoStore
	}
	for _, id := range eventIDs {
		job, err := o.cfg.Store.GetJobByEvent(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return storeErr(err)
		}
		if err := o.resetBudget(ctx, job); err != nil {
			return err
		}
	}
	return nil
}

// ResetArchivedBudgets is ResetBudgets for every archived task of queue
// (asynqmon's Run all).
func (o *Operator) ResetArchivedBudgets(ctx context.Context, queue string) error {
	if o.cfg.Inspector == nil {
		return ErrNoRedis
	}
	const pageSize = 1000
	var ids []string
	for page := 1; ; page++ {
		archived, err := o.cfg.Inspector.ListArchivedTasks(queue, asynq.Page(page), asynq.PageSize(pageSize))
		if err != nil {
			return redisErr(err)
		}
		for _, t := range archived {
			ids = append(ids, t.ID)
		}
		if len(archived) < pageSize {
			break
		}
	}
	return o.ResetBudgets(ctx, ids...)
}

// resetBudget gives a run the operator starts again its full retry budget.
// job nil (a follow-up), or a job that moved on to another run: nothing to
// do.
func (o *Operator) resetBudget(ctx context.Context, job *store.Job) error {
	if job == nil {
		return nil
	}
	if err := o.cfg.Store.ResetBudget(ctx, job.ID, job.EventID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return storeErr(err)
	}
	return nil
}
