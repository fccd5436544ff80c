package ops

import (
	"context"
	"errors"

	"github.com/bmsview/insights/internal/store"
)

// JobDetail is one job as the API and the job page show it, from one read
// of the job: the job as View shows it, the status of its current run's
// event and that run's follow-up. What Redis could not tell is nil with its
// error beside it, since Redis down or slow must not hide the job MongoDB
// has.
type JobDetail struct {
	// Job is the job as View shows it.
	Job *store.Job
	// Event is the status of the job's current run as Status answers it,
	// without its Job (that is Job). Nil for a job that has no run (no
	// eventId: the app's own job) or when EventErr is set.
	Event    *EventStatus
	EventErr error
	// FollowUp is the run's insights-completed follow-up as FollowUp
	// reads it. Nil for a job that has no run or when FollowUpErr is set.
	FollowUp    *FollowUpStatus
	FollowUpErr error
}

// Job reads job id once and what Redis knows of its current run: the
// detail the job's API answer and its page show. ErrNoStore without a
// store, ErrNotFound for an unknown job; without Redis, EventErr (for a job
// with a run) and FollowUpErr are ErrNoRedis.
func (o *Operator) Job(ctx context.Context, id string) (*JobDetail, error) {
	if o.cfg.Store == nil {
		return nil, ErrNoStore
	}
	job, err := o.cfg.Store.GetJob(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, notFoundf("job %s not found", id)
	case err != nil:
		return nil, storeErr(err)
	}
	d := &JobDetail{Job: o.View(job)}
	if job.EventID != "" {
		// The job just read is the event's: Status would read it again
		// by eventId, which FerretDB answers by scanning every job.
		if ev, err := o.eventOf(job); err != nil {
			d.EventErr = err
		} else {
			d.Event = o.statusOf(ev)
		}
	}
	d.FollowUp, d.FollowUpErr = o.FollowUp(ctx, job)
	return d, nil
}
