package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
)

// Run is one run of a job as the producer records it before enqueueing.
type Run struct {
	JobID    string
	EventID  string
	SystemID string
	// Request is nil for a jobId-only event: the stored request is kept.
	Request   *Request
	Priority  int
	Queue     string
	ProcessAt time.Time
	Scheduled bool
}

// Existing is the live run found for a jobId that was sent again.
type Existing struct {
	EventID string
	Queue   string
}

// JobStore records runs so that status is visible at once and a jobId in
// flight never starts a second run. The Mongo store implements it.
type JobStore interface {
	// ClaimRun records run as the job's current run. When the job already
	// has a live run it records nothing and returns that run.
	ClaimRun(ctx context.Context, run Run) (*Existing, error)
	// AbandonRun undoes ClaimRun when the task could not be enqueued.
	AbandonRun(ctx context.Context, jobID, eventID string) error
}

// ClientConfig configures a producer Client. Zero fields take the stated
// default.
type ClientConfig struct {
	// Jobs records each run in MongoDB before it is enqueued. Nil: nothing
	// is recorded; the worker creates the job when the task arrives, and a
	// jobId sent twice may run twice.
	Jobs JobStore
	// Timeout is the per-attempt limit. 0: 24h.
	Timeout time.Duration
	// Retention keeps completed tasks visible. 0: 168h.
	Retention time.Duration
}

// Client sends generate-insights events. It is safe for concurrent use.
type Client struct {
	asynq     *asynq.Client
	inspector *asynq.Inspector
	cfg       ClientConfig
}

// NewClient returns a producer on the given Redis connection.
func NewClient(r asynq.RedisConnOpt, cfg ClientConfig) *Client {
	if cfg.Timeout == 0 {
		cfg.Timeout = 24 * time.Hour
	}
	if cfg.Retention == 0 {
		cfg.Retention = 168 * time.Hour
	}
	return &Client{asynq: asynq.NewClient(r), inspector: asynq.NewInspector(r), cfg: cfg}
}

// Close closes the Redis connections.
func (c *Client) Close() error {
	return errors.Join(c.asynq.Close(), c.inspector.Close())
}

// SendResult is the answer to a send (contract: the JSON of POST /api/events).
type SendResult struct {
	SendStatus string `json:"sendStatus"` // succeeded | duplicate
	EventID    string `json:"eventId"`
	JobID      string `json:"jobId"`
	Queue      string `json:"queue"`
	State      string `json:"state"`
}

// Option changes one send.
type Option func(*Send)

// WithPriority sets the priority (0–10, default 5).
func WithPriority(p int) Option { return func(s *Send) { s.Priority = p } }

// At schedules the run; a time in the past runs now.
func At(t time.Time) Option { return func(s *Send) { s.At = t } }

// TriggerInsights sends generate-insights at the default priority (change it
// with WithPriority, schedule it with At).
func (c *Client) TriggerInsights(ctx context.Context, data EventData, opts ...Option) (*SendResult, error) {
	s := &Send{Data: data, Priority: DefaultPriority}
	for _, o := range opts {
		o(s)
	}
	return c.Send(ctx, s)
}

// TriggerUrgentInsights sends generate-insights at priority 10 (critical).
func (c *Client) TriggerUrgentInsights(ctx context.Context, data EventData, opts ...Option) (*SendResult, error) {
	return c.TriggerInsights(ctx, data, append(opts, WithPriority(UrgentPriority))...)
}

// ScheduleInsights sends generate-insights to run at t.
func (c *Client) ScheduleInsights(ctx context.Context, data EventData, t time.Time, opts ...Option) (*SendResult, error) {
	return c.TriggerInsights(ctx, data, append(opts, At(t))...)
}

// Send validates and sends one event. Validation errors wrap
// ErrInvalidEvent and name the field.
func (c *Client) Send(ctx context.Context, s *Send) (*SendResult, error) {
	if err := s.Data.Validate("eventData."); err != nil {
		return nil, err
	}
	if s.Priority < minPriority || s.Priority > maxPriorty {
		return nil, fieldErr("priority", "must be an integer 0–10, got %d", s.Priority)
	}
	jobID := s.Data.JobID
	if jobID == "" {
		jobID = "job-" + uuid.NewString()
	}
	run := Run{
		JobID:    jobID,
		EventID:  uuid.NewString(),
		SystemID: s.Data.SystemID,
		Priority: s.Priority,
		Queue:    QueueFor(s.Priority),
	}
	if s.Data.HasRequest() {
		run.Request = s.Data.Request()
	}
	now := time.Now()
	run.ProcessAt = now
	if !s.At.IsZero() && s.At.After(now) {
		run.ProcessAt, run.Scheduled = s.At, true
	}
	if c.cfg.Jobs != nil {
		existing, err := c.cfg.Jobs.ClaimRun(ctx, run)
		if err != nil {
			return nil, fmt.Errorf("record job %s: %w", jobID, err)
		}
		if existing != nil {
			return &SendResult{SendStatus: "duplicate", EventID: existing.EventID, JobID: jobID,
				Queue: existing.Queue, State: c.State(existing.Queue, existing.EventID)}, nil
		}
	}
	info, err := c.Enqueue(ctx, run)
	if err != nil {
		if c.cfg.Jobs != nil {
			// Undo the record: the caller is told the send failed, so the
			// reconciler must not start the run later.
			err = errors.Join(err, c.cfg.Jobs.AbandonRun(context.WithoutCancel(ctx), jobID, run.EventID))
		}
		return nil, fmt.Errorf("enqueue %s: %w", EventGenerateInsights, err)
	}
	return &SendResult{SendStatus: "succeeded", EventID: run.EventID, JobID: jobID, Queue: run.Queue, State: info.State.String()}, nil
}

// Enqueue puts run's task on its queue with the run's eventId as task id.
// The reconciler uses it to restore a task Redis lost.
func (c *Client) Enqueue(ctx context.Context, run Run) (*asynq.TaskInfo, error) {
	task, err := NewInsightsTask(Payload{EventID: run.EventID, JobID: run.JobID, SystemID: run.SystemID,
		Request: run.Request, Priority: run.Priority, Queue: run.Queue})
	if err != nil {
		return nil, err
	}
	opts := []asynq.Option{
		asynq.Queue(run.Queue), asynq.TaskID(run.EventID), asynq.MaxRetry(AsynqMaxRetry),
		asynq.Timeout(c.cfg.Timeout), asynq.Retention(c.cfg.Retention),
	}
	if run.Scheduled {
		opts = append(opts, asynq.ProcessAt(run.ProcessAt))
	}
	return c.asynq.EnqueueContext(ctx, task, opts...)
}

// State is the asynq state of a task, or "" when Redis does not have it.
func (c *Client) State(queue, eventID string) string {
	info, err := c.inspector.GetTaskInfo(queue, eventID)
	if err != nil {
		return ""
	}
	return info.State.String()
}

// AsynqMaxRetry is the MaxRetry given to asynq. The retry budget is the
// job's (MAX_RETRIES failures of the current run, enforced by the handler
// with SkipRetry), because asynq keeps its retried count when an archived
// task is run again and because store outages must not use the budget.
// asynq's own limit is only a backstop.
const AsynqMaxRetry = 100000

// NewInsightsTask builds a generate-insights task from its payload.
func NewInsightsTask(p Payload) (*asynq.Task, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	if len(b) > MaxPayloadBytes {
		return nil, fieldErr("eventData.analysisData", "event is %d bytes, over the %d byte limit", len(b), MaxPayloadBytes)
	}
	return asynq.NewTask(EventGenerateInsights, b), nil
}

// NewCompletedTask builds the insights-completed follow-up; its task id
// makes a second send of the same follow-up a conflict, not a duplicate.
func NewCompletedTask(p CompletedPayload, retention time.Duration) (*asynq.Task, []asynq.Option, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, nil, fmt.Errorf("encode payload: %w", err)
	}
	return asynq.NewTask(EventInsightsCompleted, b), []asynq.Option{
		asynq.Queue(followUpQueue), asynq.TaskID(FollowUpTaskIDPrefix + p.EventID),
		asynq.MaxRetry(15), asynq.Retention(retention),
	}, nil
}
