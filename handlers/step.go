package handlers

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// Step runs fn as the step name of r's run, or, when the step's checkpoint
// is completed, returns its stored output without running fn: completed
// steps never run again. fn's output is written to the job before Step
// returns, in one update together with any fields set with r.AlsoSet, so
// the next step starts only once this one is durable.
//
// T must encode to a BSON document (a struct or a map).
func Step[T any](ctx context.Context, r *Attempt, name string, fn func(ctx context.Context) (T, error)) (T, error) {
	return step(ctx, r, name, false, fn)
}

// SealedStep is Step for outputs that hold insights: with a Sealer
// configured they are stored encrypted.
func SealedStep[T any](ctx context.Context, r *Attempt, name string, fn func(ctx context.Context) (T, error)) (T, error) {
	return step(ctx, r, name, true, fn)
}

func step[T any](ctx context.Context, r *Attempt, name string, sealed bool, fn func(ctx context.Context) (T, error)) (T, error) {
	var out T
	if st, ok := r.Job.Steps[name]; ok && st.Status == store.StepCompleted {
		if err := r.decodeOutput(st.Output, &out); err != nil {
			// A checkpoint we cannot read will not read better later.
			return out, DoNotRetry(fmt.Errorf("step %s: read checkpoint: %w", name, err))
		}
		return out, nil
	}
	log := r.Log.With("step", name)
	r.step, r.stepStart = name, time.Now().UTC()
	r.Report(insights.ProgressStatus, map[string]any{"message": "Step " + name + " started", "step": name, "attempt": r.N})
	out, err := runBody(ctx, r, name, fn)
	if err != nil {
		return out, &stepErr{step: name, err: err}
	}
	stored := any(out)
	if sealed {
		if stored, err = r.Seal(out); err != nil {
			return out, &stepErr{step: name, err: fmt.Errorf("seal output: %w", err)}
		}
	}
	now := time.Now().UTC()
	st := store.StepState{Status: store.StepCompleted, Runs: r.Job.Steps[name].Runs + 1, Attempt: r.N,
		StartedAt: r.stepStart, FinishedAt: now, DurationMs: now.Sub(r.stepStart).Milliseconds(), Output: stored}
	if err := r.checkpoint(ctx, name, st); err != nil {
		return out, err
	}
	if o := r.r.cfg.Observer; o != nil {
		o.StepDone(name, "completed", now.Sub(r.stepStart))
	}
	log.Debug("step completed", "durationMs", st.DurationMs)
	r.step = ""
	return out, nil
}

// checkpoint writes a step state with the pending fields in one update.
func (r *Attempt) checkpoint(ctx context.Context, name string, st store.StepState) error {
	if err := r.save(ctx, store.Checkpoint{Step: name, State: st, Set: r.set}); err != nil {
		return err
	}
	r.set = nil
	r.Job.Steps[name] = st
	return nil
}

// Sleep pauses the run for d at the named point: the checkpoint records
// `sleeping` until then and the task is rescheduled for that time without
// counting as a failure and without holding a worker. When the task runs
// again after the time, the sleep is marked completed and the run goes on.
func Sleep(ctx context.Context, r *Attempt, name string, d time.Duration) error {
	st, ok := r.Job.Steps[name]
	now := time.Now().UTC()
	switch {
	case ok && st.Status == store.StepCompleted:
		return nil
	case ok && st.Status == store.StepSleeping && st.SleepUntil != nil:
		if now.Before(*st.SleepUntil) {
			return &SleepError{Step: name, Until: *st.SleepUntil}
		}
		done := st
		done.Status, done.Runs, done.FinishedAt = store.StepCompleted, st.Runs+1, now
		done.DurationMs = now.Sub(st.StartedAt).Milliseconds()
		done.Attempt = r.N
		return r.checkpoint(ctx, name, done)
	}
	// asynq keeps due times in whole seconds (it may run a task up to a
	// second before a fractional due time), so wake on a whole second.
	until := now.Add(d).Truncate(time.Second).Add(time.Second)
	sleeping := store.StepState{Status: store.StepSleeping, Runs: st.Runs, Attempt: r.N, StartedAt: now, SleepUntil: &until}
	r.step, r.stepStart = name, now
	r.AlsoSet("status", tasks.StatusScheduled)
	r.AlsoSet("processAt", until)
	if err := r.checkpoint(ctx, name, sleeping); err != nil {
		return err
	}
	r.step = ""
	r.Log.Info("sleeping", "step", name, "until", until)
	return &SleepError{Step: name, Until: until}
}

func (r *Attempt) decodeOutput(stored any, out any) error {
	if stored == nil {
		return nil
	}
	if s := r.r.cfg.Sealer; s != nil {
		if ok, err := s.Open(stored, out); ok || err != nil {
			return err
		}
	}
	b, err := bson.Marshal(stored)
	if err != nil {
		return err
	}
	return bson.Unmarshal(b, out)
}

// ErrPanic is wrapped by the failure of a step whose body panicked: a
// failure like any other, recorded and counted in the retry budget, so a
// step that always panics ends in the archive, never in a loop.
var ErrPanic = errors.New("step panicked")

// runBody runs the hook and the step's body, a panic in either turned into
// its failure (the stack goes to the log, not to the job).
func runBody[T any](ctx context.Context, r *Attempt, name string, fn func(ctx context.Context) (T, error)) (out T, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.Log.Error("step panicked", "step", name, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrPanic, p)
		}
	}()
	if h := r.r.cfg.Hook; h != nil {
		if err := h(ctx, r, name); err != nil {
			return out, err
		}
	}
	return fn(ctx)
}
