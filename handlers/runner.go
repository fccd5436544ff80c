// Package handlers holds the asynq handlers: the durable step runner
// (checkpoint per step, skip on resume, sleep, retry budget) and the
// workflows built on it.
package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// JobStore is what the runner needs of the store.
type JobStore interface {
	StartAttempt(ctx context.Context, run tasks.Run) (*store.Job, string, error)
	SaveCheckpoint(ctx context.Context, c store.Checkpoint) error
	FailEvent(ctx context.Context, eventID, kind, msg string) error
}

// Sealer encrypts step outputs that hold insights. Nil stores them in clear.
type Sealer interface {
	Seal(v any) (any, error)
	// Open decodes stored (as read from MongoDB) into out; it reports false
	// when stored was not sealed.
	Open(stored any, out any) (bool, error)
}

// Observer is told about step and job outcomes (metrics). Nil is fine.
type Observer interface {
	StepDone(step, outcome string, d time.Duration)
	JobDone(status, kind string)
}

// StepHook runs inside every step body before the step's own work; an
// error it returns is the step's failure. Tests inject failures and crashes
// with it.
type StepHook func(ctx context.Context, r *Attempt, step string) error

// RunnerConfig configures the step runner. Zero fields take the stated
// default.
type RunnerConfig struct {
	Store JobStore
	// MaxRetries is the job's retry budget: failures of the current run
	// before it is archived. 0 means none: the first failure archives.
	MaxRetries int
	// Backoff is BACKOFF_SCHEDULE. Nil: DefaultBackoff.
	Backoff []time.Duration
	// TransientDelay follows a timeout, connection error, 5xx or store
	// failure. 0: DefaultTransientDelay.
	TransientDelay time.Duration
	// RateLimitDelay follows a rate limit without its own delay. 0:
	// DefaultRateLimitDelay.
	RateLimitDelay time.Duration
	// Sealer encrypts insights-bearing outputs. Nil: stored in clear.
	Sealer Sealer
	// Observer receives outcomes. Nil: none.
	Observer Observer
	// Hook runs in every step body. Nil: none.
	Hook StepHook
	// Logger. Nil: slog.Default().
	Logger *slog.Logger
}

// Runner runs workflows durably.
type Runner struct {
	cfg    RunnerConfig
	policy RetryPolicy
	log    *slog.Logger
}

// NewRunner returns a runner.
func NewRunner(cfg RunnerConfig) *Runner {
	if cfg.TransientDelay == 0 {
		cfg.TransientDelay = DefaultTransientDelay
	}
	if cfg.RateLimitDelay == 0 {
		cfg.RateLimitDelay = DefaultRateLimitDelay
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Runner{cfg: cfg, policy: RetryPolicy{Schedule: cfg.Backoff}, log: cfg.Logger}
}

// Attempt is one attempt of a job's run (one handler invocation), handed
// to the workflow's steps.
type Attempt struct {
	Job *store.Job
	// Task is the run as its task carries it (the payload).
	Task tasks.Run
	// N counts the job's attempts, this one included (its `attempts`).
	N   int
	Log *slog.Logger

	r *Runner
	// set is merged into the next checkpoint write: fields that change with
	// a step's outcome, written in the same update; push holds the progress
	// events that go with it.
	set  bson.D
	push []store.ProgressEvent
	// step is the step running now and stepStart when its body began (for
	// failure records).
	step      string
	stepStart time.Time
}

// AlsoSet adds a top-level job field to the next checkpoint write; a field
// set twice keeps the last value (an update naming a field twice is refused
// as a conflict).
func (r *Attempt) AlsoSet(key string, v any) {
	for i := range r.set {
		if r.set[i].Key == key {
			r.set[i].Value = v
			return
		}
	}
	r.set = append(r.set, bson.E{Key: key, Value: v})
}

// Report adds a progress event (the BMS app's shape) to the next write.
func (r *Attempt) Report(typ string, data map[string]any) {
	r.push = append(r.push, store.ProgressEvent{Timestamp: time.Now().UTC(), Type: typ, Data: data})
}

// Flush writes the pending progress events now (a long step shows them
// while it runs).
func (r *Attempt) Flush(ctx context.Context) error {
	if len(r.push) == 0 {
		return nil
	}
	return r.save(ctx, store.Checkpoint{})
}

// save writes cp to this run's job with the pending progress events: the
// one write path of a run. A store failure comes back as a *storeErr, a
// job that left this run as the store's sentinel.
func (r *Attempt) save(ctx context.Context, cp store.Checkpoint) error {
	cp.Job, cp.Push = r.Job, r.push
	if err := r.r.cfg.Store.SaveCheckpoint(ctx, cp); err != nil {
		if isRevoke(err) {
			return err
		}
		return &storeErr{err: err}
	}
	r.Job.Progress = append(r.Job.Progress, r.push...)
	r.push = nil
	return nil
}

// Seal encrypts v with the runner's Sealer (DATA_ENCRYPTION_KEY), for
// fields that hold insights; without one v is stored as it is.
func (r *Attempt) Seal(v any) (any, error) {
	if s := r.r.cfg.Sealer; s != nil {
		return s.Seal(v)
	}
	return v, nil
}

// jobDone tells the observer (metrics) the job ended with status.
func (r *Attempt) jobDone(status, kind string) {
	if o := r.r.cfg.Observer; o != nil {
		o.JobDone(status, kind)
	}
}

// Workflow is the body of a durable task: a sequence of Step and Sleep
// calls.
type Workflow func(ctx context.Context, r *Attempt) error

// Handler returns the asynq handler that runs wf durably for tasks whose
// payload is a tasks.Run.
func (rn *Runner) Handler(wf Workflow) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		return rn.process(ctx, t, wf)
	})
}

func (rn *Runner) process(ctx context.Context, t *asynq.Task, wf Workflow) error {
	taskID, _ := asynq.GetTaskID(ctx)
	log := rn.log.With("eventId", taskID, "type", t.Type())
	if len(t.Payload()) > tasks.MaxPayloadBytes {
		return rn.unreadable(ctx, log, taskID, fmt.Errorf("payload of %d bytes is over the %d byte limit", len(t.Payload()), tasks.MaxPayloadBytes))
	}
	var p tasks.Run
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return rn.unreadable(ctx, log, taskID, fmt.Errorf("payload is not a valid event: %v", err))
	}
	if p.EventID == "" {
		p.EventID = taskID
	}
	if !tasks.ValidID(p.JobID) {
		return rn.unreadable(ctx, log, taskID, fmt.Errorf("payload jobId %q invalid", p.JobID))
	}
	if p.Queue == "" {
		p.Queue, _ = asynq.GetQueueName(ctx)
	}
	job, previous, err := rn.cfg.Store.StartAttempt(ctx, p)
	switch {
	case errors.Is(err, store.ErrCancelled) || errors.Is(err, store.ErrStaleEvent):
		log.Info("task revoked", "jobId", p.JobID, "reason", err)
		return fmt.Errorf("%w: %w", asynq.RevokeTask, err)
	case errors.Is(err, tasks.ErrInvalidEvent):
		// A request the store cannot hold (a producer without the store
		// sent it): no retry can store it.
		return rn.unreadable(ctx, log, taskID, err)
	case err != nil:
		// Nothing read, nothing to record on: MongoDB's outage, retried
		// without budget for as long as it lasts.
		log.Warn("MongoDB unavailable at attempt start: retry without budget", "jobId", p.JobID, "err", err)
		return RetryWithoutBudget(rn.cfg.TransientDelay, fmt.Errorf("store: %w", err))
	}
	run := &Attempt{Job: job, Task: p, N: job.Attempts, r: rn}
	run.Log = log.With("jobId", p.JobID, "attempt", job.Attempts)
	run.Log.Debug("attempt started", "previous", previous)
	if job.Status != tasks.StatusCompleted && job.Failures > rn.cfg.MaxRetries {
		// The run's budget is spent and no operator started it again (a
		// re-run resets `failures` first, store.ResetBudget): archive now.
		// asynq retries a task cut off by its deadline whatever the handler
		// returned, so without this a TASK_TIMEOUT would loop.
		msg := "retry budget spent"
		if job.Error != nil {
			msg = *job.Error
		}
		if err := run.save(context.WithoutCancel(ctx), store.Checkpoint{Set: bson.D{{Key: "status", Value: tasks.StatusFailed}}}); isRevoke(err) {
			return fmt.Errorf("%w: %w", asynq.RevokeTask, err)
		} else if err != nil {
			return RetryWithoutBudget(rn.cfg.TransientDelay, err)
		}
		run.Log.Warn("retry budget already spent: archived", "failures", job.Failures)
		return fmt.Errorf("%s: %w", msg, asynq.SkipRetry)
	}
	err = wf(ctx, run)
	if err == nil {
		return nil
	}
	return rn.fail(ctx, run, err)
}

// unreadable archives a task whose payload is no event it can run, and
// fails the job whose run it is, if any: left queued, every new send of it
// would answer "duplicate". Only a store outage delays the archive.
func (rn *Runner) unreadable(ctx context.Context, log *slog.Logger, eventID string, cause error) error {
	err := rn.cfg.Store.FailEvent(ctx, eventID, store.KindBusiness, cause.Error())
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		log.Warn("unreadable task's job not failed, store unavailable: retry", "err", err, "cause", cause)
		return RetryWithoutBudget(rn.cfg.TransientDelay, errors.Join(cause, err))
	}
	log.Error("task archived: "+cause.Error(), "jobFailed", err == nil)
	return fmt.Errorf("%w: %w", cause, asynq.SkipRetry)
}

// stepErr is a failure inside a step body.
type stepErr struct {
	step string
	err  error
}

func (e *stepErr) Error() string { return e.err.Error() }
func (e *stepErr) Unwrap() error { return e.err }

// storeErr is a checkpoint that could not be written.
type storeErr struct{ err error }

func (e *storeErr) Error() string { return "checkpoint not saved: " + e.err.Error() }
func (e *storeErr) Unwrap() error { return e.err }

// waiter is an error that asks the run to wait for flow control (the
// provider's breaker) until a time, for a reason: not a failure.
type waiter interface {
	WaitUntil() (time.Time, string)
}

// wait reschedules the run for w's time without using its budget or
// holding a worker, the job scheduled and saying why (`waiting`); the step
// that asked runs again then, its body not counted in `runs`.
func (rn *Runner) wait(ctx context.Context, run *Attempt, w waiter, err error) error {
	until, reason := w.WaitUntil()
	until = until.UTC()
	if prev := run.Job.Waiting; prev != nil && prev.Reason == reason {
		// Still waiting for the same thing: the job already says so, and a
		// step that only asked again has not started.
		run.push = nil
	} else {
		run.Report(insights.ProgressStatus, map[string]any{"message": "Waiting: " + reason, "step": run.step, "until": until})
	}
	cp := store.Checkpoint{Set: append(run.set,
		bson.E{Key: "status", Value: tasks.StatusScheduled}, bson.E{Key: "processAt", Value: until},
		bson.E{Key: "waiting", Value: store.Waiting{Reason: reason, Until: until}})}
	run.set = nil
	if werr := run.save(context.WithoutCancel(ctx), cp); isRevoke(werr) {
		return fmt.Errorf("%w: %w", asynq.RevokeTask, werr)
	} else if werr != nil {
		return RetryWithoutBudget(rn.cfg.TransientDelay, errors.Join(err, werr))
	}
	run.Log.Info("waiting", "step", run.step, "until", until, "reason", reason)
	return RetryWithoutBudget(time.Until(until), err)
}

// fail turns a workflow error into what asynq should do, recording it on
// the job first.
func (rn *Runner) fail(ctx context.Context, run *Attempt, err error) error {
	var sleep *SleepError
	if errors.As(err, &sleep) {
		return err
	}
	if errors.Is(err, store.ErrCancelled) || errors.Is(err, store.ErrStaleEvent) {
		run.Log.Info("task revoked", "reason", err)
		return fmt.Errorf("%w: %w", asynq.RevokeTask, err)
	}
	var w waiter
	if errors.As(err, &w) {
		return rn.wait(ctx, run, w, err)
	}
	if name, ok := outageOf(err); ok {
		return rn.outage(ctx, run, name, err)
	}
	if errors.Is(ctx.Err(), context.Canceled) {
		// Cut off by a shutdown or a cancel, not by its own fault: asynq
		// puts the task back (shutdown) or the cancel deletes it. Like a
		// crash, the cut-off body is not counted and uses no budget.
		run.Log.Warn("attempt cut off", "step", run.step, "err", err)
		return RetryWithoutBudget(rn.cfg.TransientDelay, err)
	}
	kind, delay, final := rn.classify(err)
	job := run.Job
	failures := job.Failures + 1
	if !final && failures > rn.cfg.MaxRetries {
		final = true
	}
	now := time.Now().UTC()
	step := run.step
	var stepState store.StepState
	if es := (*stepErr)(nil); errors.As(err, &es) {
		step = es.step
	}
	cp := store.Checkpoint{Step: step, Set: run.set}
	run.set = nil
	if step != "" {
		prev := job.Steps[step]
		stepState = store.StepState{Status: store.StepFailed, Runs: prev.Runs + 1, Attempt: run.N,
			StartedAt: run.stepStart, FinishedAt: now, DurationMs: now.Sub(run.stepStart).Milliseconds(), Error: err.Error()}
		cp.State = stepState
	}
	cp.Set = append(slices.DeleteFunc(cp.Set, func(e bson.E) bool { return e.Key == "failures" }),
		bson.E{Key: "error", Value: err.Error()},
		bson.E{Key: "failure", Value: store.Failure{Kind: kind, Message: err.Error(), Step: step, At: now}},
		bson.E{Key: "failures", Value: failures})
	run.Report(insights.ProgressError, map[string]any{"message": err.Error(), "error": err.Error(), "step": step, "kind": kind, "final": final})
	status := tasks.StatusRetrying
	if final {
		status = tasks.StatusFailed
	}
	if job.Status == tasks.StatusCompleted {
		// Only the follow-up is left: the job's own status stays completed.
		status = tasks.StatusCompleted
	} else {
		cp.Set = append(cp.Set, bson.E{Key: "status", Value: status})
	}
	if werr := run.save(context.WithoutCancel(ctx), cp); werr != nil {
		if isRevoke(werr) {
			run.Log.Info("task revoked", "step", step, "reason", werr)
			return fmt.Errorf("%w: %w", asynq.RevokeTask, werr)
		}
		// Not recorded, so not counted: the attempt is retried whole.
		run.Log.Warn("failure not recorded, store unavailable: retry", "step", step, "err", werr, "cause", err)
		return RetryWithoutBudget(rn.cfg.TransientDelay, errors.Join(err, werr))
	}
	if step != "" {
		job.Steps[step] = stepState
	}
	job.Failures = failures
	if rn.cfg.Observer != nil && step != "" {
		rn.cfg.Observer.StepDone(step, "failed", now.Sub(run.stepStart))
	}
	if final {
		if status == tasks.StatusFailed {
			run.jobDone(tasks.StatusFailed, kind)
		}
		run.Log.Error("job failed for good: archived", "step", step, "kind", kind, "failures", failures, "err", err)
		return fmt.Errorf("%w: %w", asynq.SkipRetry, err)
	}
	if delay == 0 {
		delay = rn.policy.Backoff(failures - 1)
	}
	run.Log.Warn("step failed: retry", "step", step, "kind", kind, "failures", failures, "retryIn", delay, "err", err)
	return RetryAfter(delay, err)
}

// outageRecordTimeout bounds the write that records an outage on its job:
// in a MongoDB outage it fails, and the retry must not wait long for that.
const outageRecordTimeout = 5 * time.Second

// outage retries a run cut short by an outage of a store (Redis or
// MongoDB): the service's fault, never the job's, so it uses none of the
// job's budget (failures unchanged) and is no failure for asynq (its
// retried count unchanged), however long the outage lasts. The job says
// so (failure kind transient, the message naming the store and the
// outage) when MongoDB takes the write; the step is not counted in runs,
// as a body cut off by a crash is not.
func (rn *Runner) outage(ctx context.Context, run *Attempt, storeName string, err error) error {
	delay := rn.cfg.TransientDelay
	retry := RetryWithoutBudget(delay, err)
	step := run.step
	if es := (*stepErr)(nil); errors.As(err, &es) {
		step = es.step
	}
	// The pending fields belong to a step that did not complete: it runs
	// again and sets them again.
	run.set = nil
	now := time.Now().UTC()
	msg := fmt.Sprintf("%s outage (the service's, not the job's): retried in %v without using the retry budget: %v", storeName, delay, err)
	run.Report(insights.ProgressError, map[string]any{"message": msg, "error": err.Error(), "step": step,
		"kind": store.KindTransient, "outage": storeName, "final": false})
	set := bson.D{{Key: "error", Value: msg},
		{Key: "failure", Value: store.Failure{Kind: store.KindTransient, Message: msg, Step: step, At: now, Outage: storeName}}}
	if run.Job.Status != tasks.StatusCompleted {
		// Completed: only the follow-up is left, the status stays.
		set = append(set, bson.E{Key: "status", Value: tasks.StatusRetrying})
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), outageRecordTimeout)
	defer cancel()
	if werr := run.save(wctx, store.Checkpoint{Set: set}); isRevoke(werr) {
		run.Log.Info("task revoked", "step", step, "reason", werr)
		return fmt.Errorf("%w: %w", asynq.RevokeTask, werr)
	} else if werr != nil {
		run.push = nil
		run.Log.Warn(storeName+" unavailable: retry without budget (not recorded on the job)", "step", step, "err", err, "recordErr", werr)
		return retry
	}
	run.Log.Warn(storeName+" unavailable: retry without budget", "step", step, "retryIn", delay, "err", err)
	return retry
}
