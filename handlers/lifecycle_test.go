package handlers_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// A run started again from the archive that fails again at its first step
// gets the whole budget again: each failure is recorded (never refused as a
// conflicting write and taken for a store outage) and counted from 1, and
// only once the budget is spent a second time is it archived.
func TestRerunFailingAgainAtFirstStepGetsFullBudget(t *testing.T) {
	const maxRetries = 2
	b := setup(t, options{maxRetries: maxRetries})
	b.hooks.set("fails-first", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepInitialize {
			return errors.New("queue config unreadable")
		}
		return nil
	})
	res := b.send(t, event("fails-first"))
	archived := func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived }
	b.waitTask(t, res.Queue, res.EventID, 30*time.Second, archived)
	j := b.waitStatus(t, "fails-first", tasks.StatusFailed, 10*time.Second)
	if j.Failures != maxRetries+1 || j.Steps[tasks.StepInitialize].Runs != maxRetries+1 {
		t.Fatalf("first run: failures %d, initialize ran %d times; want %d and %d", j.Failures, j.Steps[tasks.StepInitialize].Runs, maxRetries+1, maxRetries+1)
	}
	// The operator runs it again (API retry, asynqmon Run).
	if err := b.store.ResetBudget(context.Background(), "fails-first", res.EventID); err != nil {
		t.Fatal(err)
	}
	if err := b.inspector.RunTask(res.Queue, res.EventID); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the re-run spends its budget", func() (bool, error) {
		j = b.job(t, "fails-first")
		return j.Steps[tasks.StepInitialize].Runs == 2*(maxRetries+1) && j.Status == tasks.StatusFailed, nil
	})
	b.waitTask(t, res.Queue, res.EventID, 30*time.Second, archived)
	j = b.job(t, "fails-first")
	if j.Failures != maxRetries+1 || j.Failure == nil || j.Failure.Kind != store.KindInternal || j.Failure.Step != tasks.StepInitialize {
		t.Fatalf("re-run: failures %d failure %+v; want %d internal failures of initialize", j.Failures, j.Failure, maxRetries+1)
	}
	if j.Attempts != 2*(maxRetries+1) {
		t.Errorf("attempts %d, want %d: one per failure, none lost to a store retry", j.Attempts, 2*(maxRetries+1))
	}
}

// A task whose payload is no readable event is archived at once and its
// job, created by the send, is failed: a new send of that jobId starts a
// new run instead of answering "duplicate" for ever.
func TestUnreadablePayloadFailsItsJob(t *testing.T) {
	b := setup(t, options{maxRetries: 5})
	ctx := context.Background()
	req := event("poisoned")
	// The send's claim records the job queued under eventId "e-poison";
	// the task that reaches Redis with that id is not an event.
	if ex, err := b.store.ClaimRun(ctx, tasks.Run{JobID: "poisoned", EventID: "e-poison", SystemID: "sys-1",
		Queue: tasks.QueueDefault, Request: req.Request()}); err != nil || ex != nil {
		t.Fatalf("claim: %+v %v", ex, err)
	}
	c := asynq.NewClient(b.redis)
	t.Cleanup(func() { c.Close() })
	if _, err := c.Enqueue(asynq.NewTask(tasks.EventGenerateInsights, []byte("{not json")), asynq.TaskID("e-poison"),
		asynq.Queue(tasks.QueueDefault), asynq.MaxRetry(25)); err != nil {
		t.Fatal(err)
	}
	info := b.waitTask(t, tasks.QueueDefault, "e-poison", 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	if info.Retried != 0 {
		t.Errorf("retried %d times, want archived at once", info.Retried)
	}
	j := b.waitStatus(t, "poisoned", tasks.StatusFailed, 10*time.Second)
	if j.Failure == nil || j.Failure.Kind != store.KindBusiness {
		t.Fatalf("failure %+v, want a business failure", j.Failure)
	}
	res := b.send(t, event("poisoned"))
	if res.SendStatus != "succeeded" || res.EventID == "e-poison" {
		t.Fatalf("a new send after the poisoned run: %+v, want a new run", res)
	}
	waitStep(t, b, "poisoned", tasks.StepSendCompletion)
}

// A store read that fails inside a step (the history of process-insights,
// MongoDB unreachable: store.ErrUnavailable) is the store's outage, not the
// job's failure: retried without using the budget, so even a run with no
// retries left completes once the store is back.
func TestStoreReadFailureInStepUsesNoBudget(t *testing.T) {
	b := setup(t, options{maxRetries: 0})
	var outages atomic.Int32
	b.hooks.set("outage", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights && outages.Add(1) <= 2 {
			return fmt.Errorf("store: read history of sys-1: %w: server selection timeout", store.ErrUnavailable)
		}
		return nil
	})
	b.send(t, event("outage"))
	j := waitStep(t, b, "outage", tasks.StepSendCompletion)
	if j.Status != tasks.StatusCompleted || j.Failures != 0 {
		t.Fatalf("status %s failures %d, want completed with no budget used", j.Status, j.Failures)
	}
	if got := outages.Load(); got != 3 {
		t.Errorf("process-insights tried %d times, want 3 (two outages, then done)", got)
	}
}

// A run that must wait for flow control (the provider's breaker open) is
// rescheduled, not failed: no budget used (even with none), no worker held,
// the job scheduled and saying why; the step runs when the wait is over.
func TestWaitReschedulesWithoutBudget(t *testing.T) {
	b := setup(t, options{maxRetries: 0})
	var waits atomic.Int32
	b.hooks.set("waits", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights && waits.Add(1) <= 2 {
			// Twice in a row, for the same reason.
			return &flow.WaitError{Reason: "the model provider's circuit breaker is open", Until: time.Now().Add(time.Second)}
		}
		return nil
	})
	res := b.send(t, event("waits"))
	j := b.waitStatus(t, "waits", tasks.StatusScheduled, 10*time.Second)
	if j.Waiting == nil || !strings.Contains(j.Waiting.Reason, "circuit breaker") || j.Failures != 0 || j.Failure != nil {
		t.Fatalf("while waiting: waiting %+v failures %d failure %+v; want the reason and no failure", j.Waiting, j.Failures, j.Failure)
	}
	if info := b.waitTask(t, res.Queue, res.EventID, 10*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateRetry }); info.Retried != 0 {
		t.Errorf("the waiting task has retried %d, want 0", info.Retried)
	}
	j = waitStep(t, b, "waits", tasks.StepSendCompletion)
	if j.Status != tasks.StatusCompleted || j.Failures != 0 || j.Waiting != nil {
		t.Fatalf("after the wait: status %s failures %d waiting %+v; want completed, 0, none", j.Status, j.Failures, j.Waiting)
	}
	if r := testenv.Runs(j); r[tasks.StepProcessInsights] != 1 || r[tasks.StepValidate] != 1 {
		t.Fatalf("runs %v: process-insights once (the waited body is not counted), validate once", r)
	}
	// Waiting again for the same reason adds nothing to the job's progress.
	n := 0
	for _, ev := range j.Progress {
		if msg, _ := ev.Data["message"].(string); strings.HasPrefix(msg, "Waiting:") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d waiting events in the progress, want 1", n)
	}
}
