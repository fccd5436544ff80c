package handlers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// ErrDoNotRetry marks an error that retrying cannot fix (bad input, a
// missing job, HTTP 400/401/403/404): the task is archived at once and the
// job is failed. Wrap the cause: fmt.Errorf("...: %w", ErrDoNotRetry)
// or DoNotRetry(cause).
var ErrDoNotRetry = errors.New("do not retry")

// DoNotRetry wraps cause so that errors.Is(err, ErrDoNotRetry) holds and the
// cause stays reachable with errors.Is/As.
func DoNotRetry(cause error) error {
	if cause == nil {
		return ErrDoNotRetry
	}
	return &doNotRetry{cause}
}

type doNotRetry struct{ err error }

func (e *doNotRetry) Error() string   { return e.err.Error() }
func (e *doNotRetry) Unwrap() []error { return []error{ErrDoNotRetry, e.err} }

// RetryAfterError asks for the next attempt after exactly Delay.
type RetryAfterError struct {
	Delay time.Duration
	Err   error
	// NotAFailure: the attempt is no failure of the task and uses none of
	// its retry budget (RetryWithoutBudget).
	NotAFailure bool
}

func (e *RetryAfterError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("retry after %v", e.Delay)
	}
	return e.Err.Error()
}
func (e *RetryAfterError) Unwrap() error { return e.Err }

// RetryAfter returns an error that makes the task run again after d.
func RetryAfter(d time.Duration, cause error) error {
	if d < 0 {
		d = 0
	}
	return &RetryAfterError{Delay: d, Err: cause}
}

// SleepError is returned by a sleeping step: the task is rescheduled for
// Until, which is not a failure and uses no retry.
type SleepError struct {
	Step  string
	Until time.Time
}

func (e *SleepError) Error() string {
	return fmt.Sprintf("step %s sleeping until %s", e.Step, e.Until.UTC().Format(time.RFC3339))
}

// RetryWithoutBudget returns an error that makes the task run again after
// d without counting as a failure: for an outage of a dependency (the
// store) that is not the task's fault, so a long outage never dead-letters
// it. IsFailure reports false, and asynq (v0.26, rdb.Retry) then leaves the
// task's retried count as it is; it still archives a task whose count has
// already reached its MaxRetry, so a task with MaxRetry 0 cannot use it.
func RetryWithoutBudget(d time.Duration, cause error) error {
	return &RetryAfterError{Delay: max(d, 0), Err: cause, NotAFailure: true}
}

// IsFailure is asynq.Config.IsFailure: a sleep, a RetryWithoutBudget or a
// revoke is no failure.
func IsFailure(err error) bool {
	var s *SleepError
	if errors.As(err, &s) {
		return false
	}
	var ra *RetryAfterError
	if errors.As(err, &ra) && ra.NotAFailure {
		return false
	}
	return err != nil && !errors.Is(err, asynq.RevokeTask)
}

// RetryPolicy is the delay before the next attempt.
type RetryPolicy struct {
	// Schedule is BACKOFF_SCHEDULE: Schedule[n] is the delay after the
	// (n+1)th failure; the last one repeats. Empty: DefaultBackoff.
	Schedule []time.Duration
	// TransientDelay follows an attempt cut off by its own deadline
	// (TASK_TIMEOUT): asynq retries those before the handler's answer
	// arrives. 0: DefaultTransientDelay.
	TransientDelay time.Duration
}

// Backoff returns the delay after failure number n+1 (n counts from 0).
func (p RetryPolicy) Backoff(n int) time.Duration {
	s := p.Schedule
	if len(s) == 0 {
		s = DefaultBackoff
	}
	if n < 0 {
		n = 0
	}
	if n >= len(s) {
		n = len(s) - 1
	}
	return s[n]
}

// RetryDelayFunc is asynq.Config.RetryDelayFunc: a sleep until its time, a
// RetryWithoutBudget or a RetryAfter after exactly its delay, anything else
// after the schedule's delay for asynq's retry count n.
func (p RetryPolicy) RetryDelayFunc(n int, err error, _ *asynq.Task) time.Duration {
	var s *SleepError
	if errors.As(err, &s) {
		return max(time.Until(s.Until), 0)
	}
	var ra *RetryAfterError
	if errors.As(err, &ra) {
		return ra.Delay
	}
	if errors.Is(err, context.DeadlineExceeded) {
		if p.TransientDelay == 0 {
			return DefaultTransientDelay
		}
		return p.TransientDelay
	}
	return p.Backoff(n)
}
