package handlers_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// A Redis outage during a run (Redis restarted and still loading its data:
// every command answers LOADING), met by the flow control in
// process-insights (the system's slot) and by the follow-up's enqueue in
// send-completion, is the service's fault, not the job's: with no retry
// budget at all (MAX_RETRIES=0) the run still completes, with failures 0;
// the job recorded each outage as such (failure kind transient, naming
// Redis); asynq counted no failure; the follow-up was sent once.
func TestRedisOutageUsesNoBudget(t *testing.T) {
	b := setup(t, options{maxRetries: 0, proxy: true, slots: true})
	var mu sync.Mutex
	outageAt := map[string]bool{tasks.StepProcessInsights: true, tasks.StepSendCompletion: true}
	b.hooks.set("redis-down", func(_ context.Context, _ *handlers.Attempt, step string) error {
		mu.Lock()
		defer mu.Unlock()
		if outageAt[step] {
			// Redis goes down as the step starts: its Redis call meets it.
			delete(outageAt, step)
			b.proxy.SetLoading(true)
		}
		return nil
	})
	res := b.send(t, event("redis-down"))
	for _, step := range []string{tasks.StepProcessInsights, tasks.StepSendCompletion} {
		j := testenv.WaitJob(t, b.store, "redis-down", 30*time.Second, "the outage at "+step+" recorded", func(j *store.Job) bool {
			return j.Failure != nil && j.Failure.Step == step
		})
		if j.Failure.Kind != store.KindTransient || j.Failure.Outage != outage.Redis || !strings.Contains(j.Failure.Message, "Redis outage") ||
			!strings.Contains(j.Failure.Message, "without using the retry budget") || j.Failures != 0 {
			t.Errorf("at %s: failure %+v, failures %d; want kind transient saying it was a Redis outage, no budget used", step, j.Failure, j.Failures)
		}
		b.proxy.SetLoading(false) // Redis has loaded its data
	}
	j := testenv.WaitJob(t, b.store, "redis-down", 30*time.Second, "follow-up recorded", func(j *store.Job) bool {
		return j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})
	if j.Status != tasks.StatusCompleted || j.Failures != 0 {
		t.Fatalf("status %s failures %d, want completed with no budget used", j.Status, j.Failures)
	}
	outages := 0
	for _, ev := range j.Progress {
		if ev.Data["outage"] == outage.Redis {
			outages++
		}
	}
	if outages != 2 {
		t.Errorf("%d Redis outages in the job's progress, want 2", outages)
	}
	info := b.waitTask(t, res.Queue, res.EventID, 10*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateCompleted })
	if info.Retried != 0 {
		t.Errorf("asynq counted %d failures of the task, want 0", info.Retried)
	}
	waitFollowUps(t, b, "redis-down", 1)
	assertOneFollowUpTask(t, b, res.EventID)
}
