package handlers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
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

// A step failure's kind, delay and finality come from what the error says
// of itself (ErrDoNotRetry, RetryAfter, the provider's methods) or, for
// errors made by the network, from their type: never from their text.
func TestClassify(t *testing.T) {
	rn := NewRunner(RunnerConfig{TransientDelay: 30 * time.Second, RateLimitDelay: 5 * time.Minute})
	for _, c := range []struct {
		name  string
		err   error
		kind  string
		delay time.Duration
		final bool
	}{
		{"do not retry", DoNotRetry(errors.New("bad snapshot")), store.KindBusiness, 0, true},
		{"invalid event", fmt.Errorf("validate: %w", tasks.ErrInvalidEvent), store.KindBusiness, 0, true},
		{"retry after", RetryAfter(42*time.Second, errors.New("x")), store.KindInternal, 42 * time.Second, false},
		{"provider 429 with delay", &insights.ProviderError{StatusCode: 429, RetryAfter: 17 * time.Second}, store.KindRateLimit, 17 * time.Second, false},
		{"provider 429", fmt.Errorf("gemini: %w", &insights.ProviderError{StatusCode: 429}), store.KindRateLimit, 5 * time.Minute, false},
		{"provider quota, no code", &insights.ProviderError{Err: errors.New("quota exceeded")}, store.KindRateLimit, 5 * time.Minute, false},
		{"provider 503", &insights.ProviderError{StatusCode: 503}, store.KindTransient, 30 * time.Second, false},
		{"provider 401", &insights.ProviderError{StatusCode: 401}, store.KindBusiness, 0, true},
		{"deadline", fmt.Errorf("call: %w", context.DeadlineExceeded), store.KindTransient, 30 * time.Second, false},
		{"connection refused", &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, store.KindTransient, 30 * time.Second, false},
		{"text that says quota is not a rate limit", errors.New("quota of cells exceeded"), store.KindInternal, 0, false},
		{"anything else", errors.New("nil map"), store.KindInternal, 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			kind, delay, final := rn.classify(c.err)
			if kind != c.kind || delay != c.delay || final != c.final {
				t.Errorf("classify = %s %v %v, want %s %v %v", kind, delay, final, c.kind, c.delay, c.final)
			}
		})
	}
}
