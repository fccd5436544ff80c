package ops

import (
	"context"
	"errors"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// deleteJob removes a job that has no live run: its task left in Redis
// (archived, completed), its follow-up's task, its document and its
// recorded runs. ErrConflict for a live job: cancel it first.
func (o *Operator) deleteJob(ctx context.Context, job *store.Job) error {
	if tasks.Live(job.Status) {
		return conflictf("job %s is %s: cancel it first", job.ID, job.Status)
	}
	if o.cfg.Inspector != nil && job.EventID != "" {
		ev, err := o.eventOf(job)
		if err != nil {
			return err
		}
		if ev.Task != nil {
			if err := o.cfg.Inspector.DeleteTask(ev.Task.Queue, ev.ID); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
				if ev.Task.State == asynq.TaskStateActive {
					return conflictf("job %s is still running: cancel it first", job.ID)
				}
				return redisErr(err)
			}
		}
		if f := job.FollowUp; f != nil {
			err := o.cfg.Inspector.DeleteTask(tasks.QueueLow, f.EventID)
			if err != nil && !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
				return redisErr(err)
			}
		}
	}
	err := o.cfg.Store.DeleteJob(ctx, job.ID, job.EventID)
	switch {
	case errors.Is(err, store.ErrLive):
		return conflictf("job %s is %s: cancel it first", job.ID, job.Status)
	case errors.Is(err, store.ErrNotFound):
		return conflictf("job %s moved on to another run meanwhile", job.ID)
	case err != nil:
		return storeErr(err)
	}
	o.log.Info("job deleted", "jobId", job.ID, "eventId", job.EventID)
	return nil
}
