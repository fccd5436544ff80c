package ops

// Netlify's internal events (docs/DESIGN.md section 12): awl:retry-failed-events
// and awl:delete-events, which the BMS app's client sends through the
// router like any event, mapped onto this service's retry, bulk retry and
// cancel.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// InternalResult is what an internal event did: how many events it
// matched and acted on, and the bulk action it started (retry of every
// failed job), to follow at GET /api/jobs/bulk/{bulkId}.
type InternalResult struct {
	Matched int    `json:"matched"`
	Done    int    `json:"done"`
	Skipped int    `json:"skipped"`
	Failed  int    `json:"failed"`
	BulkID  string `json:"bulkId,omitempty"`
	// Errors are the first few reasons events were skipped or failed.
	Errors []string `json:"errors,omitempty"`
}

const maxInternalErrors = 10

func (r *InternalResult) count(err error) {
	switch {
	case err == nil:
		r.Done++
		return
	case errors.Is(err, ErrConflict), errors.Is(err, ErrNotFound):
		r.Skipped++
	default:
		r.Failed++
	}
	if len(r.Errors) < maxInternalErrors {
		r.Errors = append(r.Errors, err.Error())
	}
}

// RetryFailedEvents is awl:retry-failed-events: the dead-lettered events
// given by id run again (with their full retry budget, as Retry does);
// without ids, every failed job of generate-insights (a bulk retry, so
// trimmed tasks are enqueued again too) and every archived
// insights-completed follow-up, or those of eventNames alone.
func (o *Operator) RetryFailedEvents(ctx context.Context, user string, d *tasks.RetryFailedData) (*InternalResult, error) {
	res := &InternalResult{}
	if len(d.EventIDs) > 0 {
		for _, id := range d.EventIDs {
			res.Matched++
			res.count(o.retryDeadLettered(ctx, id))
		}
		return res, nil
	}
	names := d.EventNames
	if len(names) == 0 {
		names = []string{tasks.EventGenerateInsights, tasks.EventInsightsCompleted}
	}
	if slices.Contains(names, tasks.EventGenerateInsights) {
		op, _, err := o.StartBulk(ctx, BulkRequest{Action: BulkRetry, Filter: store.JobFilter{Status: tasks.StatusFailed}, User: user})
		if err != nil {
			return nil, err
		}
		res.BulkID, res.Matched = op.ID, op.Matched
	}
	if slices.Contains(names, tasks.EventInsightsCompleted) {
		err := o.eachTask(tasks.FollowUpQueue, asynq.TaskStateArchived, func(t *asynq.TaskInfo) {
			if t.Type != tasks.EventInsightsCompleted {
				return
			}
			res.Matched++
			res.count(o.retryDeadLettered(ctx, t.ID))
		})
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// retryDeadLettered runs event id again if it is dead-lettered (its job
// failed, or its task archived).
func (o *Operator) retryDeadLettered(ctx context.Context, id string) error {
	ev, err := o.lookup(ctx, id)
	if err != nil {
		return err
	}
	if st := netlifyState(ev, time.Now()); st != tasks.NetlifyDeadLettered {
		return conflictf("event %s is %s, not dead-lettered", id, st)
	}
	_, err = o.retry(ctx, ev)
	return err
}

// DeleteEvents is awl:delete-events: the events given by id, or every
// event in one of states (Netlify's: pending, delayed, hibernating,
// processing, dead-lettered). A waiting or running event is cancelled as
// DELETE /api/events/{eventId} cancels it (its job reads cancelled); a
// dead-lettered one leaves the dead-letter queue and its job stays failed,
// with its error: the app's own job document is never deleted. Events
// in a state that was not asked for are left alone, whatever their ids.
func (o *Operator) DeleteEvents(ctx context.Context, d *tasks.DeleteEventsData) (*InternalResult, error) {
	if o.cfg.Inspector == nil {
		return nil, ErrNoRedis
	}
	res := &InternalResult{}
	del := func(id string) error {
		ev, err := o.lookup(ctx, id)
		if err != nil {
			return err
		}
		st := netlifyState(ev, time.Now())
		if len(d.States) > 0 && !slices.Contains(d.States, st) {
			return conflictf("event %s is %s, not %v", id, st, d.States)
		}
		switch st {
		case tasks.NetlifyDone:
			return conflictf("event %s is done: nothing to delete", id)
		case tasks.NetlifyDeadLettered:
			if ev.Task == nil {
				return conflictf("event %s is no longer in the dead-letter queue", id)
			}
			if err := o.cfg.Inspector.DeleteTask(ev.Task.Queue, id); err != nil && !errors.Is(err, asynq.ErrTaskNotFound) {
				return redisErr(err)
			}
			o.log.Info("dead-lettered event deleted", "eventId", id, "queue", ev.Task.Queue)
			return nil
		}
		_, err = o.cancel(ctx, ev)
		return err
	}
	if len(d.EventIDs) > 0 {
		for _, id := range d.EventIDs {
			res.Matched++
			res.count(del(id))
		}
		return res, nil
	}
	// By state: the tasks in the asynq states that hold them, read first
	// (a page at a time) and then acted on, each checked again by del.
	var ids []string
	for _, q := range tasks.Queues {
		for _, state := range asynqStatesOf(d.States) {
			err := o.eachTask(q, state, func(t *asynq.TaskInfo) {
				if t.Type == tasks.EventGenerateInsights || t.Type == tasks.EventInsightsCompleted {
					ids = append(ids, t.ID)
				}
			})
			if err != nil {
				return nil, err
			}
		}
	}
	for _, id := range ids {
		res.Matched++
		res.count(del(id))
	}
	return res, nil
}

// asynqStatesOf is where asynq keeps the tasks of Netlify's states.
func asynqStatesOf(states []string) []asynq.TaskState {
	var out []asynq.TaskState
	add := func(s asynq.TaskState) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, st := range states {
		switch st {
		case tasks.NetlifyPending:
			add(asynq.TaskStatePending)
		case tasks.NetlifyProcessing:
			add(asynq.TaskStateActive)
		case tasks.NetlifyDelayed, tasks.NetlifyHibernating:
			add(asynq.TaskStateScheduled)
			add(asynq.TaskStateRetry)
		case tasks.NetlifyDeadLettered:
			add(asynq.TaskStateArchived)
		}
	}
	return out
}

// eachTask calls fn for every task of queue in state, a page at a time.
func (o *Operator) eachTask(queue string, state asynq.TaskState, fn func(*asynq.TaskInfo)) error {
	list := map[asynq.TaskState]func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		asynq.TaskStatePending:   o.cfg.Inspector.ListPendingTasks,
		asynq.TaskStateActive:    o.cfg.Inspector.ListActiveTasks,
		asynq.TaskStateScheduled: o.cfg.Inspector.ListScheduledTasks,
		asynq.TaskStateRetry:     o.cfg.Inspector.ListRetryTasks,
		asynq.TaskStateArchived:  o.cfg.Inspector.ListArchivedTasks,
	}[state]
	if list == nil {
		return fmt.Errorf("no list of %s tasks", state)
	}
	const size = 500
	for page := 1; ; page++ {
		ts, err := list(queue, asynq.PageSize(size), asynq.Page(page))
		if errors.Is(err, asynq.ErrQueueNotFound) {
			return nil
		}
		if err != nil {
			return redisErr(err)
		}
		for _, t := range ts {
			fn(t)
		}
		if len(ts) < size {
			return nil
		}
	}
}
