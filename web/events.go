package web

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"time"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
	"github.com/hibiken/asynq"
)

// httpError is an error with the answer it calls for.
type httpError struct {
	code  int
	msg   string
	field string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) *httpError {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// writeErr answers err: its own code for an httpError, 503 for anything
// else (a store or Redis failure).
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	if errors.As(err, &he) {
		writeError(w, he.code, he.msg, he.field)
		return
	}
	s.log.Warn("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	writeError(w, http.StatusServiceUnavailable, "service unavailable: "+err.Error(), "")
}

var (
	errNoStore     = errorf(http.StatusServiceUnavailable, "MongoDB is not configured")
	errNoInspector = errorf(http.StatusServiceUnavailable, "Redis is not configured")
	errNoClient    = errorf(http.StatusServiceUnavailable, "the event producer is not configured")
)

// event is what Redis and MongoDB know of one eventId.
type event struct {
	ID   string
	Job  *store.Job      // the job whose current run is this event; nil when none
	Task *asynq.TaskInfo // nil when Redis does not have the task
	// JobID is the job's, or the jobId in the task's payload.
	JobID string
}

// storeErr wraps a MongoDB failure so it is told apart in messages.
func storeErr(err error) error { return fmt.Errorf("MongoDB: %w", err) }

// redisErr wraps a Redis failure.
func redisErr(err error) error { return fmt.Errorf("Redis: %w", err) }

// lookupEvent finds an event's job (by eventId) and its task: first in
// the job's queue, then in every queue, since asynq task ids are unique per
// queue only.
func (s *Server) lookupEvent(ctx context.Context, id string) (*event, error) {
	if s.cfg.Store == nil {
		return nil, errNoStore
	}
	if s.cfg.Inspector == nil {
		return nil, errNoInspector
	}
	ev := &event{ID: id}
	job, err := s.cfg.Store.GetJobByEvent(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return nil, storeErr(err)
	default:
		ev.Job = job
	}
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
		info, err := s.cfg.Inspector.GetTaskInfo(q, id)
		if err == nil {
			ev.Task = info
			break
		}
		if !errors.Is(err, asynq.ErrTaskNotFound) && !errors.Is(err, asynq.ErrQueueNotFound) {
			return nil, redisErr(err)
		}
	}
	if ev.Task == nil {
		// Queues other than ours (a task put there by hand).
		all, err := s.cfg.Inspector.Queues()
		if err != nil {
			return nil, redisErr(err)
		}
		for _, q := range all {
			if slices.Contains(queues, q) {
				continue
			}
			if info, err := s.cfg.Inspector.GetTaskInfo(q, id); err == nil {
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
	if ev.Job == nil && ev.Task == nil {
		return nil, errorf(http.StatusNotFound, "event %s not found", id)
	}
	return ev, nil
}

// retryResult is the answer to a retry.
type retryResult struct {
	EventID       string `json:"eventId"`
	JobID         string `json:"jobId,omitempty"`
	Queue         string `json:"queue"`
	PreviousState string `json:"previousState"`
	State         string `json:"state"`
	Action        string `json:"action"` // run | re-enqueued
}

// retry runs an archived, retry or scheduled task now; a failed job whose
// task Redis no longer has is enqueued again with its eventId.
func (s *Server) retry(ctx context.Context, id string) (*retryResult, error) {
	ev, err := s.lookupEvent(ctx, id)
	if err != nil {
		return nil, err
	}
	res := &retryResult{EventID: id}
	if ev.Job != nil {
		res.JobID = ev.Job.ID
		if ev.Job.Status == tasks.StatusCancelled {
			return nil, errorf(http.StatusConflict, "job %s was cancelled; send the event again to start a new run", ev.Job.ID)
		}
	}
	if ev.Task != nil {
		res.Queue, res.PreviousState = ev.Task.Queue, ev.Task.State.String()
		switch ev.Task.State {
		case asynq.TaskStateArchived, asynq.TaskStateRetry, asynq.TaskStateScheduled:
		default:
			return nil, errorf(http.StatusConflict, "event %s is %s: only an archived, retry or scheduled task can be run now", id, ev.Task.State)
		}
		if ev.Task.State == asynq.TaskStateArchived || (ev.Job != nil && ev.Job.Status == tasks.StatusFailed) {
			if err := s.resetBudget(ctx, ev.Job); err != nil {
				return nil, err
			}
		}
		if err := s.cfg.Inspector.RunTask(ev.Task.Queue, id); err != nil {
			if errors.Is(err, asynq.ErrTaskNotFound) {
				return nil, errorf(http.StatusConflict, "event %s changed state meanwhile; look again", id)
			}
			return nil, redisErr(err)
		}
		res.State, res.Action = asynq.TaskStatePending.String(), "run"
		s.log.Info("event run now", "eventId", id, "queue", ev.Task.Queue, "previous", res.PreviousState)
		return res, nil
	}
	// Redis has lost the task (retention, a flush): Mongo is the source of
	// truth, so a failed run is enqueued again from the job's fields.
	job := ev.Job
	if job.Status != tasks.StatusFailed {
		return nil, errorf(http.StatusConflict, "event %s has no task in Redis and its job is %s: nothing to retry", id, job.Status)
	}
	if s.cfg.Client == nil {
		return nil, errNoClient
	}
	queue := job.Queue
	if queue == "" {
		queue = tasks.QueueFor(job.Priority)
	}
	if err := s.resetBudget(ctx, job); err != nil {
		return nil, err
	}
	info, err := s.cfg.Client.Enqueue(ctx, tasks.Run{JobID: job.ID, EventID: job.EventID, SystemID: job.SystemID,
		Request: job.StoredRequest(), Priority: job.Priority, Queue: queue, ProcessAt: time.Now()})
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return nil, errorf(http.StatusConflict, "event %s was enqueued again meanwhile", id)
	}
	if err != nil {
		return nil, redisErr(err)
	}
	res.Queue, res.PreviousState, res.State, res.Action = queue, "", info.State.String(), "re-enqueued"
	s.log.Info("failed job re-enqueued", "eventId", id, "jobId", job.ID, "queue", queue)
	return res, nil
}

// resetBudget gives a run the operator starts again its full retry budget
// (the worker never infers a re-run from a status). job nil: nothing to do.
func (s *Server) resetBudget(ctx context.Context, job *store.Job) error {
	if job == nil {
		return nil
	}
	if err := s.cfg.Store.ResetBudget(ctx, job.ID, job.EventID); err != nil && !errors.Is(err, store.ErrNotFound) {
		return storeErr(err)
	}
	return nil
}

// cancelResult is the answer to a cancel.
type cancelResult struct {
	EventID       string `json:"eventId"`
	JobID         string `json:"jobId,omitempty"`
	Status        string `json:"status"` // the job's: cancelled
	Queue         string `json:"queue,omitempty"`
	PreviousState string `json:"previousState,omitempty"`
	TaskDeleted   bool   `json:"taskDeleted"`
}

// cancel marks the job cancelled first (so a handler that still runs
// revokes its task), then deletes a waiting task or cancels a running one
// and deletes it once it stops.
func (s *Server) cancel(ctx context.Context, id string) (*cancelResult, error) {
	ev, err := s.lookupEvent(ctx, id)
	if err != nil {
		return nil, err
	}
	res := &cancelResult{EventID: id, Status: tasks.StatusCancelled}
	if ev.Task != nil {
		res.Queue, res.PreviousState = ev.Task.Queue, ev.Task.State.String()
		if ev.Task.State == asynq.TaskStateCompleted {
			return nil, errorf(http.StatusConflict, "event %s is completed: nothing to cancel", id)
		}
	}
	if ev.Job != nil {
		res.JobID = ev.Job.ID
		if ev.Job.Status == tasks.StatusCompleted {
			return nil, errorf(http.StatusConflict, "job %s is completed: nothing to cancel", ev.Job.ID)
		}
		if ev.Job.Status != tasks.StatusCancelled {
			if err := s.cfg.Store.MarkCancelled(ctx, ev.Job.ID, id); err != nil {
				if errors.Is(err, store.ErrNotFound) {
					return nil, errorf(http.StatusConflict, "job %s moved on to another run meanwhile", ev.Job.ID)
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
		if err := s.cfg.Inspector.CancelProcessing(id); err != nil {
			return nil, redisErr(err)
		}
	}
	// A cancelled handler revokes its task (deleted by asynq) or leaves it
	// to retry; delete whatever is left once it is no longer active.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.cfg.Inspector.DeleteTask(q, id)
		switch {
		case err == nil, errors.Is(err, asynq.ErrTaskNotFound):
			res.TaskDeleted = true
			s.log.Info("event cancelled", "eventId", id, "queue", q, "previous", res.PreviousState)
			return res, nil
		case errors.Is(err, asynq.ErrQueueNotFound):
			res.TaskDeleted = true
			return res, nil
		}
		// FailedPrecondition: still active.
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.log.Warn("cancelled task still running; its handler will revoke it", "eventId", id, "err", err)
			return res, nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}
