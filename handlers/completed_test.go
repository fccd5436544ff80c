package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// webhook answers the completion webhook with the given codes in turn (the
// last repeats) and counts the calls.
type webhook struct {
	calls atomic.Int32
	codes []int
	hdr   http.Header
}

func newWebhook(t *testing.T, codes ...int) (*webhook, string) {
	w := &webhook{codes: codes, hdr: http.Header{}}
	ts := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
		n := int(w.calls.Add(1))
		for k, v := range w.hdr {
			rw.Header()[k] = v
		}
		rw.WriteHeader(w.codes[min(n, len(w.codes))-1])
	}))
	t.Cleanup(ts.Close)
	return w, ts.URL
}

// systemsDown fails SetLastInsights as an unreachable store would, fails
// times, then succeeds.
type systemsDown struct {
	mu    sync.Mutex
	fails int
	calls int
}

func (s *systemsDown) SetLastInsights(context.Context, string, map[string]any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.calls <= s.fails {
		return errors.New("store: set lastInsights of sys-1: server selection error: context deadline exceeded")
	}
	return nil
}

func (s *systemsDown) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func completedPayload(eventID string) tasks.CompletedPayload {
	return tasks.CompletedPayload{EventID: eventID, JobID: "job-" + eventID, SystemID: "sys-1",
		CompletedAt: time.Now().UTC(), HasInsights: true, HealthScore: 90, Status: "Normal"}
}

// completedWorker runs the follow-up handler alone on a real asynq server
// with the service's retry policy (1 s backoff) and a budget of maxRetry,
// and returns the id of follow-up eventID.
func completedWorker(t *testing.T, cfg handlers.CompletedConfig, eventID string, maxRetry int) (*asynq.Inspector, string) {
	t.Helper()
	redis := testenv.Redis(t)
	mux := asynq.NewServeMux()
	cfg.Logger, cfg.MaxRetries = testenv.Logger(), maxRetry
	mux.Handle(tasks.EventInsightsCompleted, handlers.NewCompleted(cfg))
	scfg := handlers.ServerConfig(handlers.ServerOptions{Concurrency: 2, Backoff: []time.Duration{time.Second}, ShutdownTimeout: 5 * time.Second})
	scfg.LogLevel = asynq.FatalLevel
	srv := asynq.NewServer(redis, scfg)
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	client := asynq.NewClient(redis)
	insp := asynq.NewInspector(redis)
	t.Cleanup(func() { client.Close(); insp.Close() })
	task, opts, err := handlers.NewCompletedTask(completedPayload(eventID), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	info, err := client.Enqueue(task, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return insp, info.ID
}

func waitFollowUp(t *testing.T, insp *asynq.Inspector, id string, state asynq.TaskState) *asynq.TaskInfo {
	t.Helper()
	return testenv.WaitTask(t, insp, tasks.QueueLow, id, 30*time.Second, func(info *asynq.TaskInfo) bool {
		if info.State == asynq.TaskStateArchived && state != asynq.TaskStateArchived {
			t.Fatalf("follow-up archived after %d retries (%s), want %s", info.Retried, info.LastErr, state)
		}
		return info.State == state
	})
}

// A webhook that keeps refusing is archived: a 4xx after one call (it
// would answer the same again), a 5xx once the budget (MAX_RETRIES, kept by
// the handler: asynq's own MaxRetry is only a backstop) is spent.
func TestCompletedWebhookArchived(t *testing.T) {
	for _, c := range []struct {
		name        string
		codes       []int
		maxRetry    int
		wantCalls   int32
		wantRetried int
		wantErr     string
	}{
		{"400 after one call", []int{http.StatusBadRequest}, 15, 1, 0, "HTTP 400"},
		{"503 once the budget is spent", []int{http.StatusServiceUnavailable}, 1, 2, 1, "HTTP 503"},
	} {
		t.Run(c.name, func(t *testing.T) {
			hook, url := newWebhook(t, c.codes...)
			insp, id := completedWorker(t, handlers.CompletedConfig{WebhookURL: url}, "ev-archived", c.maxRetry)
			info := waitFollowUp(t, insp, id, asynq.TaskStateArchived)
			if n := hook.calls.Load(); n != c.wantCalls {
				t.Errorf("webhook called %d times, want %d", n, c.wantCalls)
			}
			if info.Retried != c.wantRetried || !strings.Contains(info.LastErr, c.wantErr) {
				t.Errorf("archived with retried=%d lastErr=%q, want %d and the status named", info.Retried, info.LastErr, c.wantRetried)
			}
		})
	}
}

// A 503 is the receiver's passing trouble: retried, then delivered.
func TestCompletedWebhook503ThenSucceeds(t *testing.T) {
	hook, url := newWebhook(t, http.StatusServiceUnavailable, http.StatusOK)
	insp, id := completedWorker(t, handlers.CompletedConfig{WebhookURL: url}, "ev-503", 15)
	info := waitFollowUp(t, insp, id, asynq.TaskStateCompleted)
	if n := hook.calls.Load(); n != 2 {
		t.Errorf("webhook called %d times, want 2", n)
	}
	if info.Retried != 1 {
		t.Errorf("retried = %d, want 1", info.Retried)
	}
}

// Each webhook answer's classification, as asynq reads the returned error.
func TestCompletedWebhookStatusClasses(t *testing.T) {
	policy := handlers.RetryPolicy{Schedule: []time.Duration{5 * time.Second}}
	for _, c := range []struct {
		code       int
		retryAfter string
		permanent  bool
		delay      time.Duration // the delay RetryDelayFunc gives (retried only)
	}{
		{code: 400, permanent: true}, {code: 401, permanent: true}, {code: 403, permanent: true},
		{code: 404, permanent: true}, {code: 410, permanent: true}, {code: 422, permanent: true},
		{code: 408, delay: 5 * time.Second}, {code: 425, delay: 5 * time.Second},
		{code: 429, delay: 5 * time.Second}, {code: 429, retryAfter: "7", delay: 7 * time.Second},
		{code: 429, retryAfter: "Wed, 21 Oct 2015 07:28:00 GMT", delay: 5 * time.Second},
		{code: 500, delay: 5 * time.Second}, {code: 502, delay: 5 * time.Second}, {code: 503, delay: 5 * time.Second},
	} {
		name := fmt.Sprint(c.code)
		if c.retryAfter != "" {
			name += " Retry-After " + c.retryAfter
		}
		t.Run(name, func(t *testing.T) {
			hook, url := newWebhook(t, c.code)
			if c.retryAfter != "" {
				hook.hdr.Set("Retry-After", c.retryAfter)
			}
			h := handlers.NewCompleted(handlers.CompletedConfig{WebhookURL: url, MaxRetries: 15, Logger: testenv.Logger()})
			b, _ := json.Marshal(completedPayload("ev-class"))
			err := h.ProcessTask(context.Background(), asynq.NewTask(tasks.EventInsightsCompleted, b))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), fmt.Sprint(c.code)) {
				t.Errorf("error %q does not name the status", err)
			}
			if got := errors.Is(err, asynq.SkipRetry); got != c.permanent {
				t.Fatalf("SkipRetry = %v, want %v (%v)", got, c.permanent, err)
			}
			if c.permanent {
				return
			}
			if !handlers.IsFailure(err) {
				t.Errorf("a webhook failure must count: %v", err)
			}
			if got := policy.RetryDelayFunc(0, err, nil); got != c.delay {
				t.Errorf("retry in %v, want %v", got, c.delay)
			}
		})
	}
}

// A store failure is not the follow-up's fault: no failure for asynq, retried
// after TransientDelay; a missing system is no error at all.
func TestCompletedStoreFailureIsNoFailure(t *testing.T) {
	b, _ := json.Marshal(completedPayload("ev-store"))
	task := asynq.NewTask(tasks.EventInsightsCompleted, b)
	policy := handlers.RetryPolicy{Schedule: []time.Duration{5 * time.Second}}
	for _, d := range []time.Duration{0, 3 * time.Second} {
		h := handlers.NewCompleted(handlers.CompletedConfig{Systems: &systemsDown{fails: 1}, TransientDelay: d, Logger: testenv.Logger()})
		err := h.ProcessTask(context.Background(), task)
		if err == nil || handlers.IsFailure(err) || errors.Is(err, asynq.SkipRetry) {
			t.Fatalf("TransientDelay %v: err %v, IsFailure %v: want a retried error that is no failure", d, err, handlers.IsFailure(err))
		}
		want := d
		if d == 0 {
			want = 30 * time.Second
		}
		if got := policy.RetryDelayFunc(0, err, nil); got != want {
			t.Errorf("TransientDelay %v: retry in %v, want %v", d, got, want)
		}
	}
	missing := handlers.NewCompleted(handlers.CompletedConfig{Systems: systemFunc(func() error {
		return fmt.Errorf("store: system sys-1: %w", store.ErrNotFound)
	}), Logger: testenv.Logger()})
	if err := missing.ProcessTask(context.Background(), task); err != nil {
		t.Errorf("missing system: %v, want no error", err)
	}
}

type systemFunc func() error

func (f systemFunc) SetLastInsights(context.Context, string, map[string]any) error { return f() }

// Through asynq: a store that fails more often than the follow-up's
// budget (MaxRetries) does not dead-letter it, and its retried count stays 0.
func TestCompletedStoreOutageUsesNoBudget(t *testing.T) {
	sys := &systemsDown{fails: 3}
	insp, id := completedWorker(t, handlers.CompletedConfig{Systems: sys, TransientDelay: time.Second}, "ev-outage", 1)
	info := waitFollowUp(t, insp, id, asynq.TaskStateCompleted)
	if n := sys.count(); n != 4 {
		t.Errorf("lastInsights tried %d times, want 4", n)
	}
	if info.Retried != 0 {
		t.Errorf("retried = %d, want 0: the store's outage used the budget", info.Retried)
	}
}
