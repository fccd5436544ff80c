package tasks

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

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
	// CurrentRun is the eventId of the job's current run ("" when the job
	// has none); an error wrapping ErrNotRecorded when there is no job.
	CurrentRun(ctx context.Context, jobID string) (string, error)
}

// ErrNotRecorded: Restore was given a run that is not its job's current
// run as the store records it.
var ErrNotRecorded = errors.New("run is not its job's current run")

// ClientConfig configures a producer Client. Zero fields take the stated
// default.
type ClientConfig struct {
	// Jobs records each run in MongoDB before it is enqueued. Nil: nothing
	// is recorded; the worker creates the job when the task arrives, and a
	// jobId sent twice may run twice.
	Jobs JobStore
	// Timeout is the per-attempt limit (TASK_TIMEOUT). 0:
	// DefaultTaskTimeout.
	Timeout time.Duration
	// Retention keeps completed tasks visible (TASK_RETENTION). 0:
	// DefaultTaskRetention.
	Retention time.Duration
}

// Client sends generate-insights events. It is safe for concurrent use.
type Client struct {
	rdb       redis.UniversalClient
	asynq     *asynq.Client
	inspector *asynq.Inspector
	cfg       ClientConfig
}

// NewClient returns a producer on the given Redis connection.
func NewClient(r asynq.RedisConnOpt, cfg ClientConfig) *Client {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTaskTimeout
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultTaskRetention
	}
	rdb, _ := r.MakeRedisClient().(redis.UniversalClient) // every asynq.RedisConnOpt makes one
	return &Client{rdb: rdb, asynq: asynq.NewClientFromRedisClient(rdb), inspector: asynq.NewInspectorFromRedisClient(rdb), cfg: cfg}
}

// Close closes the Redis connections.
func (c *Client) Close() error {
	return errors.Join(c.asynq.Close(), c.inspector.Close(), c.rdb.Close())
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

// Send validates and sends one event: the one gate every producer passes
// (the API, the CLI, Go callers). Validation errors wrap ErrInvalidEvent and
// name the field.
func (c *Client) Send(ctx context.Context, s *Send) (*SendResult, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	jobID := s.Data.JobID
	if jobID == "" {
		jobID = "job-" + uuid.NewString()
	}
	now := time.Now()
	run := Run{
		JobID:     jobID,
		EventID:   cmp.Or(s.EventID, uuid.NewString()),
		SystemID:  s.Data.SystemID,
		Priority:  s.Priority,
		Queue:     QueueFor(s.Priority),
		ProcessAt: now,
		FromStep:  s.FromStep,
	}
	if s.Data.HasRequest() || s.FromStep != "" {
		// A re-run carries the fields it edits, without the snapshot.
		run.Request = s.Data.Request()
	}
	if s.At.After(now) {
		run.ProcessAt = s.At
	}
	// The whole send is checked before anything is written: a task too
	// large for the queue must not reset the job it names.
	payload, err := encodeRun(run)
	if err != nil {
		return nil, err
	}
	if c.cfg.Jobs != nil {
		existing, err := c.cfg.Jobs.ClaimRun(ctx, run)
		if err != nil {
			return nil, fmt.Errorf("record job %s: %w", jobID, err)
		}
		if existing != nil {
			return &SendResult{SendStatus: "duplicate", EventID: existing.EventID, JobID: jobID,
				Queue: existing.Queue, State: c.state(existing.Queue, existing.EventID)}, nil
		}
	}
	info, err := c.enqueuePayload(ctx, run, payload)
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

// Restore puts a run back on its queue, with its eventId as task id, when
// Redis lost its task (the reconciler, an operator's retry of a failed
// run): only the run the store records as its job's current run, so no
// producer gets round Send's claim and checks with it (ErrNotRecorded; a
// Client without Jobs cannot restore). asynq refuses it with
// asynq.ErrTaskIDConflict while the task exists.
//
// It announces every queue first: asynq's long-lived clients do so once per
// process, so after Redis lost its data (the case Restore is for) a
// restored task, or a follow-up, would run unseen by the Inspector and the
// dashboard.
func (c *Client) Restore(ctx context.Context, run Run) (*asynq.TaskInfo, error) {
	if c.cfg.Jobs == nil {
		return nil, fmt.Errorf("restore %s: %w (the client has no store)", run.EventID, ErrNotRecorded)
	}
	cur, err := c.cfg.Jobs.CurrentRun(ctx, run.JobID)
	if err != nil {
		return nil, fmt.Errorf("restore %s: %w", run.EventID, err)
	}
	if cur != run.EventID {
		return nil, fmt.Errorf("restore %s: %w (job %s is on %q)", run.EventID, ErrNotRecorded, run.JobID, cur)
	}
	queues := make([]any, len(Queues))
	for i, q := range Queues {
		queues[i] = q
	}
	if err := c.rdb.SAdd(ctx, asynqQueuesKey, queues...).Err(); err != nil {
		return nil, fmt.Errorf("announce the queues: %w", err)
	}
	return c.enqueue(ctx, run)
}

// encodeRun is run's task payload, refused (naming the snapshot, which
// makes up nearly all of it) over MaxPayloadBytes.
func encodeRun(run Run) ([]byte, error) {
	b, err := json.Marshal(run)
	if err != nil {
		return nil, fmt.Errorf("encode payload: %w", err)
	}
	if len(b) > MaxPayloadBytes {
		return nil, fieldErr("eventData.analysisData", "event is %d bytes, over the %d byte limit", len(b), MaxPayloadBytes)
	}
	return b, nil
}

// enqueue puts run's task on its queue.
func (c *Client) enqueue(ctx context.Context, run Run) (*asynq.TaskInfo, error) {
	b, err := encodeRun(run)
	if err != nil {
		return nil, err
	}
	return c.enqueuePayload(ctx, run, b)
}

// enqueuePayload puts run's task, encoded as b, on its queue.
func (c *Client) enqueuePayload(ctx context.Context, run Run, b []byte) (*asynq.TaskInfo, error) {
	opts := []asynq.Option{
		asynq.Queue(run.Queue), asynq.TaskID(run.EventID), asynq.MaxRetry(AsynqMaxRetry),
		asynq.Timeout(c.cfg.Timeout), asynq.Retention(c.cfg.Retention),
	}
	if run.Scheduled(time.Now()) {
		// asynq keeps a due time in whole seconds, cut down: rounded up
		// here, so a run never starts before its delayUntil.
		opts = append(opts, asynq.ProcessAt(ceilSecond(run.ProcessAt)))
	}
	return c.asynq.EnqueueContext(ctx, asynq.NewTask(EventGenerateInsights, b), opts...)
}

// asynqQueuesKey is the set of queue names asynq's Inspector lists.
const asynqQueuesKey = "asynq:queues"

// state is the asynq state of a task, or "" when Redis does not have it.
func (c *Client) state(queue, eventID string) string {
	info, err := c.inspector.GetTaskInfo(queue, eventID)
	if err != nil {
		return ""
	}
	return info.State.String()
}

// ceilSecond is t rounded up to a whole second.
func ceilSecond(t time.Time) time.Time {
	if r := t.Truncate(time.Second); !r.Equal(t) {
		return r.Add(time.Second)
	}
	return t
}
