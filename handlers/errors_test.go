package handlers

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestRetryWithoutBudget(t *testing.T) {
	cause := errors.New("mongodb unreachable")
	err := fmt.Errorf("update system: %w", RetryWithoutBudget(12*time.Second, cause))
	if IsFailure(err) {
		t.Error("IsFailure: a retry without budget is no failure")
	}
	if got := (RetryPolicy{}).RetryDelayFunc(3, err, nil); got != 12*time.Second {
		t.Errorf("RetryDelayFunc: %v, want 12s", got)
	}
	if !errors.Is(err, cause) || err.Error() != "update system: mongodb unreachable" {
		t.Errorf("cause lost: %v", err)
	}
	if d := RetryWithoutBudget(-time.Second, nil).(*RetryAfterError).Delay; d != 0 {
		t.Errorf("negative delay kept: %v", d)
	}
}

func TestBackoffAndDelays(t *testing.T) {
	p := RetryPolicy{Schedule: []time.Duration{5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second}}
	for n, want := range []time.Duration{5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second, 60 * time.Second, 60 * time.Second} {
		if got := p.RetryDelayFunc(n, errors.New("x"), nil); got != want {
			t.Errorf("n=%d: %v, want %v", n, got, want)
		}
	}
	if got := p.RetryDelayFunc(0, RetryAfter(42*time.Second, errors.New("x")), nil); got != 42*time.Second {
		t.Errorf("RetryAfter: %v", got)
	}
	if IsFailure(&SleepError{Until: time.Now()}) || !IsFailure(errors.New("x")) {
		t.Error("IsFailure: a sleep is no failure, an error is")
	}
	if !errors.Is(DoNotRetry(errors.New("bad")), ErrDoNotRetry) {
		t.Error("DoNotRetry does not wrap ErrDoNotRetry")
	}
}

func TestParseQueueWeights(t *testing.T) {
	w, err := ParseQueueWeights(DefaultQueueWeights)
	if err != nil || w["critical"] != 6 || w["low"] != 1 {
		t.Errorf("%v %v", w, err)
	}
	for _, bad := range []string{"critical=6", "critical=x,high=4,default=2,low=1", "urgent=1,critical=6,high=4,default=2,low=1", "critical=0,high=4,default=2,low=1"} {
		if _, err := ParseQueueWeights(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
