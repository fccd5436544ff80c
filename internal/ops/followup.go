package ops

import (
	"context"
	"errors"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// The follow-up's states that are not asynq's.
const (
	// FollowUpUnsent: the run has not sent its follow-up (send-completion
	// has not run) and Redis has no such task.
	FollowUpUnsent = "unsent"
	// FollowUpGone: the run sent it, but Redis no longer has the task
	// (its retention passed, or Redis lost its data).
	FollowUpGone = "gone"
)

// FollowUpStatus is the chain of a job's current run: its
// insights-completed follow-up task as Redis knows it (the job view's
// followUpTask, the job page's Chain).
type FollowUpStatus struct {
	TaskID    string `json:"taskId"`
	EventName string `json:"eventName"`
	Queue     string `json:"queue"`
	// State is the asynq task state (pending, scheduled, active, retry,
	// archived, completed), FollowUpUnsent or FollowUpGone.
	State string `json:"state"`
	// Retried counts the follow-up's failures (asynq's own count: its
	// handler keeps a budget of MaxRetry, MAX_RETRIES).
	Retried       int        `json:"retried"`
	MaxRetry      int        `json:"maxRetry"`
	LastError     *string    `json:"lastError"`
	LastFailedAt  *time.Time `json:"lastFailedAt,omitempty"`
	NextProcessAt *time.Time `json:"nextProcessAt,omitempty"`
	// EnqueuedAt is when the run recorded sending it (job.followUp).
	EnqueuedAt  *time.Time `json:"enqueuedAt,omitempty"`
	CompletedAt *time.Time `json:"completedAt,omitempty"`
}

// InRedis reports whether Redis has the task (it has a state of asynq's).
func (f *FollowUpStatus) InRedis() bool {
	return f.State != FollowUpUnsent && f.State != FollowUpGone
}

// FollowUp reads the insights-completed follow-up of job's current run:
// task id tasks.FollowUpTaskIDPrefix + eventId, on tasks.FollowUpQueue.
// nil, nil for a job that has no run (no eventId). Redis is asked even
// before the run recorded the send, since send-completion enqueues before
// its checkpoint is written.
func (o *Operator) FollowUp(ctx context.Context, job *store.Job) (*FollowUpStatus, error) {
	if o.cfg.Inspector == nil {
		return nil, ErrNoRedis
	}
	if job == nil || job.EventID == "" {
		return nil, nil
	}
	f := &FollowUpStatus{TaskID: tasks.FollowUpTaskIDPrefix + job.EventID, EventName: tasks.EventInsightsCompleted,
		Queue: tasks.FollowUpQueue, MaxRetry: o.cfg.MaxRetries}
	if job.FollowUp != nil {
		if job.FollowUp.EventID != "" {
			f.TaskID = job.FollowUp.EventID // what the run recorded sending
		}
		f.EnqueuedAt = timePtr(job.FollowUp.EnqueuedAt)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	info, err := o.cfg.Inspector.GetTaskInfo(f.Queue, f.TaskID)
	switch {
	case errors.Is(err, asynq.ErrTaskNotFound), errors.Is(err, asynq.ErrQueueNotFound):
		f.State = FollowUpUnsent
		if job.FollowUp != nil {
			f.State = FollowUpGone
		}
		return f, nil
	case err != nil:
		return nil, redisErr(err)
	}
	f.State = info.State.String()
	f.Retried = info.Retried
	f.NextProcessAt = timePtr(info.NextProcessAt)
	if info.LastErr != "" {
		msg := info.LastErr
		f.LastError = &msg
		f.LastFailedAt = timePtr(info.LastFailedAt)
	}
	f.CompletedAt = timePtr(info.CompletedAt)
	return f, nil
}
