package ops

import (
	"context"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// EventStatus is the answer of GET /api/events/{eventId} and what
// `insights status` prints.
type EventStatus struct {
	EventID   string `json:"eventId"`
	EventName string `json:"eventName,omitempty"`
	JobID     string `json:"jobId,omitempty"`
	// State is the asynq task state (pending, scheduled, active, retry,
	// archived, completed); null when Redis no longer has the task.
	State *string `json:"state"`
	Queue string  `json:"queue,omitempty"`
	// Retried counts the retries scheduled in the current run (the job's
	// retry budget used): its failures, less the last one when that ended
	// the run (job failed), which was never retried. MaxRetry is that
	// budget (MAX_RETRIES).
	Retried       int        `json:"retried"`
	MaxRetry      int        `json:"maxRetry"`
	NextProcessAt *time.Time `json:"nextProcessAt"`
	LastError     *string    `json:"lastError"`
	LastFailedAt  *time.Time `json:"lastFailedAt,omitempty"`
	CompletedAt   *time.Time `json:"completedAt,omitempty"`
	// NetlifyState is the event's state in Netlify's words (pending,
	// delayed, processing, hibernating, dead-lettered, done), for the BMS
	// app's Netlify client and its operators.
	NetlifyState string `json:"netlifyState"`
	// Job is the job whose current run this event is, with its steps, as
	// View shows it.
	Job *store.Job `json:"job"`
}

// Status is what MongoDB and Redis know of an event: the task's state where
// Redis has it, the job's otherwise, and the job itself. ErrNotFound when
// neither knows it.
func (o *Operator) Status(ctx context.Context, id string) (*EventStatus, error) {
	ev, err := o.lookup(ctx, id)
	if err != nil {
		return nil, err
	}
	st := o.statusOf(ev)
	st.Job = o.View(ev.Job)
	return st, nil
}

// statusOf is ev's status without its Job.
func (o *Operator) statusOf(ev *event) *EventStatus {
	st := &EventStatus{EventID: ev.ID, JobID: ev.JobID, MaxRetry: o.cfg.MaxRetries}
	if ev.Job != nil {
		st.EventName = ev.Job.EventName
		st.Queue = ev.Job.Queue
		st.Retried = retriesOf(ev.Job)
		if ev.Job.Error != nil && ev.Job.Status != tasks.StatusCompleted {
			msg := *ev.Job.Error
			st.LastError = &msg
			st.LastFailedAt = timePtr(ev.Job.FailedAt())
		}
		if ev.Job.ProcessAt != nil && (ev.Job.Status == tasks.StatusScheduled || ev.Job.Status == tasks.StatusQueued) {
			st.NextProcessAt = timePtr(*ev.Job.ProcessAt)
		}
		if ev.Job.CompletedAt != nil {
			st.CompletedAt = timePtr(*ev.Job.CompletedAt)
		}
	}
	if t := ev.Task; t != nil {
		state := t.State.String()
		st.State = &state
		st.EventName = t.Type
		st.Queue = t.Queue
		// asynq reports a pending task's next process time as "now", a
		// value that changes with each read: a pending task is due, since
		// its job's due time where it has one, else null.
		if t.State != asynq.TaskStatePending {
			st.NextProcessAt = timePtr(t.NextProcessAt)
		}
		if t.LastErr != "" {
			msg := t.LastErr
			st.LastError = &msg
			st.LastFailedAt = timePtr(t.LastFailedAt)
		}
		if !t.CompletedAt.IsZero() {
			st.CompletedAt = timePtr(t.CompletedAt)
		}
		switch {
		case t.Type == tasks.EventInsightsCompleted:
			// The follow-up's budget is MAX_RETRIES too, kept by its
			// handler; asynq's retried counts its failures alone.
			st.Retried = t.Retried
		case t.Type != tasks.EventGenerateInsights || ev.Job == nil:
			st.Retried, st.MaxRetry = t.Retried, t.MaxRetry // a task of nobody's
		}
	}
	st.NetlifyState = netlifyState(ev, time.Now())
	return st
}

// netlifyState is ev's state in Netlify's words: its job's where it has
// one (the job knows a run waiting for flow control, and an outage of
// Redis), else its task's.
func netlifyState(ev *event, now time.Time) string {
	if j := ev.Job; j != nil {
		at := now
		if j.ProcessAt != nil {
			at = *j.ProcessAt
		}
		if ev.Task != nil && !ev.Task.NextProcessAt.IsZero() {
			at = ev.Task.NextProcessAt
		}
		return tasks.NetlifyState(j.Status, at, now)
	}
	if t := ev.Task; t != nil {
		switch t.State {
		case asynq.TaskStatePending, asynq.TaskStateAggregating:
			return tasks.NetlifyPending
		case asynq.TaskStateActive:
			return tasks.NetlifyProcessing
		case asynq.TaskStateScheduled, asynq.TaskStateRetry:
			if t.NextProcessAt.Sub(now) >= tasks.HibernateAfter {
				return tasks.NetlifyHibernating
			}
			return tasks.NetlifyDelayed
		case asynq.TaskStateArchived:
			return tasks.NetlifyDeadLettered
		}
	}
	return tasks.NetlifyDone
}

// retriesOf is the number of retries a job's current run has had
// scheduled: a failure that failed the job (no-retry error, budget spent)
// was not followed by one.
func retriesOf(j *store.Job) int {
	n := j.Failures
	if j.Status == tasks.StatusFailed {
		n--
	}
	return max(n, 0)
}

// timePtr is t in UTC, or nil (JSON null) when t is zero.
func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}
