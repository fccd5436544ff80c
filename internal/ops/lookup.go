package ops

import (
	"context"
	"encoding/json"
	"errors"
	"slices"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// event is what Redis and MongoDB know of one eventId.
type event struct {
	ID   string
	Job  *store.Job      // the job whose current run is this event; nil when none
	Task *asynq.TaskInfo // nil when Redis does not have the task
	// JobID is the job's, or the jobId in the task's payload.
	JobID string
}

// lookup finds an event's job (by eventId) and its task: first in the job's
// queue, then in every queue, since asynq task ids are unique per queue
// only. ErrNotFound when neither store knows it.
func (o *Operator) lookup(ctx context.Context, id string) (*event, error) {
	if o.cfg.Store == nil {
		return nil, ErrNoStore
	}
	if o.cfg.Inspector == nil {
		return nil, ErrNoRedis
	}
	ev := &event{ID: id}
	job, err := o.cfg.Store.GetJobByEvent(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, storeErr(err)
	default:
		ev.Job = job
	}
	if err := o.findTask(ev); err != nil {
		return nil, err
	}
	if ev.Job == nil && ev.Task == nil {
		return nil, notFoundf("event %s not found", id)
	}
	return ev, nil
}

// eventOf is the current run of a job already read (a bulk action's): its
// task found as lookup finds it, without looking the job up by eventId
// (which FerretDB answers by scanning every job).
func (o *Operator) eventOf(job *store.Job) (*event, error) {
	if o.cfg.Inspector == nil {
		return nil, ErrNoRedis
	}
	ev := &event{ID: job.EventID, Job: job}
	if job.EventID == "" {
		ev.JobID = job.ID
		return ev, nil // the app's own job, never sent
	}
	if err := o.findTask(ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// findTask sets ev.Task (nil when Redis does not have it) and ev.JobID.
func (o *Operator) findTask(ev *event) error {
	id := ev.ID
	var queues []string
	if ev.Job != nil && ev.Job.Queue != "" {
		queues = append(queues, ev.Job.Queue)
	}
	for _, q := range tasks.Queues {
		if !slices.Contains(queues, q) {
			queues = append(queues, q)
		}
	}
	for _, q := range queues {
		info, err := o.cfg.Inspector.GetTaskInfo(q, id)
		if err == nil {
			ev.Task = info
			break
		}
		if !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
			return redisErr(err)
		}
	}
	if ev.Task == nil {
		// Queues other than ours (a task put there by hand).
		all, err := o.cfg.Inspector.Queues()
		if err != nil {
			return redisErr(err)
		}
		for _, q := range all {
			if slices.Contains(queues, q) {
				continue
			}
			if info, err := o.cfg.Inspector.GetTaskInfo(q, id); err == nil {
				ev.Task = info
				break
			}
		}
	}
	if ev.Job != nil {
		ev.JobID = ev.Job.ID
	} else if ev.Task != nil {
		// A follow-up, or a task of a run its job has moved on from.
		var p struct {
			JobID string `json:"jobId"`
		}
		if json.Unmarshal(ev.Task.Payload, &p) == nil && tasks.ValidID(p.JobID) {
			ev.JobID = p.JobID
		}
	}
	return nil
}
