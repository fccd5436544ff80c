package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
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

// failOnce makes step fail on its first run only.
func failOnce(step string) func(context.Context, *handlers.Attempt, string) error {
	var failed atomic.Bool
	return func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == step && failed.CompareAndSwap(false, true) {
			return errors.New("injected failure at " + step)
		}
		return nil
	}
}

func TestFailureAtEachStepResumes(t *testing.T) {
	b := setup(t, options{maxRetries: 3})
	ids := map[string]string{}
	for i, step := range tasks.Steps {
		jobID := fmt.Sprintf("fail-%d-%s", i, step)
		b.hooks.set(jobID, failOnce(step))
		ids[step] = jobID
		b.send(t, event(jobID))
	}
	for i, step := range tasks.Steps {
		jobID := ids[step]
		t.Run(step, func(t *testing.T) {
			j := b.waitStatus(t, jobID, tasks.StatusCompleted, 30*time.Second)
			// The follow-up step is the last: wait until it is checkpointed.
			j = waitStep(t, b, jobID, tasks.StepSendCompletion)
			want := map[string]int{}
			for k, s := range tasks.Steps {
				want[s] = 1
				if k == i {
					want[s] = 2
				}
			}
			if got := testenv.Runs(j); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("runs = %v, want %v", got, want)
			}
			if j.Attempts != 2 {
				t.Errorf("attempts = %d, want 2", j.Attempts)
			}
			if j.Steps[step].Attempt != 2 {
				t.Errorf("%s completed in attempt %d, want 2", step, j.Steps[step].Attempt)
			}
			waitFollowUps(t, b, jobID, 1)
			assertOneFollowUpTask(t, b, j.EventID)
		})
	}
}

func waitStep(t *testing.T, b *bundle, jobID, step string) *store.Job {
	t.Helper()
	return testenv.WaitJob(t, b.store, jobID, 30*time.Second, step+" completed", func(j *store.Job) bool {
		return j.Steps[step].Status == store.StepCompleted
	})
}

func waitFollowUps(t *testing.T, b *bundle, jobID string, n int) {
	t.Helper()
	testenv.WaitFor(t, 30*time.Second, fmt.Sprintf("follow-up of %s handled %d times", jobID, n), func() (bool, error) {
		return b.followUps.Count(jobID) >= n, nil
	})
}

// assertOneFollowUpTask checks the low queue holds exactly one
// insights-completed task for eventID.
func assertOneFollowUpTask(t *testing.T, b *bundle, eventID string) {
	t.Helper()
	n := 0
	for _, list := range []func(string, ...asynq.ListOption) ([]*asynq.TaskInfo, error){
		b.inspector.ListPendingTasks, b.inspector.ListActiveTasks, b.inspector.ListRetryTasks,
		b.inspector.ListCompletedTasks, b.inspector.ListArchivedTasks, b.inspector.ListScheduledTasks,
	} {
		infos, err := list(tasks.QueueLow, asynq.PageSize(1000))
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range infos {
			if info.Type == tasks.EventInsightsCompleted && info.ID == tasks.FollowUpTaskIDPrefix+eventID {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("insights-completed tasks for %s: %d, want 1", eventID, n)
	}
}

func TestDoNotRetryArchivesAtOnce(t *testing.T) {
	b := setup(t, options{maxRetries: 5})
	b.hooks.set("bad-input", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights {
			return handlers.DoNotRetry(errors.New("analysisData is not from this system"))
		}
		return nil
	})
	res := b.send(t, event("bad-input"))
	info := b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	if info.Retried != 0 {
		t.Errorf("retried = %d, want 0", info.Retried)
	}
	j := b.waitStatus(t, "bad-input", tasks.StatusFailed, 10*time.Second)
	if j.Failure == nil || j.Error == nil || j.Failure.Kind != store.KindBusiness || j.Failure.Step != tasks.StepProcessInsights {
		t.Errorf("job error = %+v, want kind business at process-insights", j.Error)
	}
	if j.Steps[tasks.StepProcessInsights].Status != store.StepFailed || j.Steps[tasks.StepProcessInsights].Runs != 1 {
		t.Errorf("process-insights checkpoint = %+v", j.Steps[tasks.StepProcessInsights])
	}
}

func TestRetryAfterExactDelay(t *testing.T) {
	b := setup(t, options{maxRetries: 5})
	b.hooks.set("slow-down", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights {
			return handlers.RetryAfter(7*time.Minute, errors.New("upstream asked for 7 minutes"))
		}
		return nil
	})
	res := b.send(t, event("slow-down"))
	info := b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateRetry })
	got := info.NextProcessAt.Sub(info.LastFailedAt)
	if d := got - 7*time.Minute; d < -time.Second || d > time.Second {
		t.Errorf("next process at %v after the failure, want 7m", got)
	}
	j := b.waitStatus(t, "slow-down", tasks.StatusRetrying, 10*time.Second)
	if j.Failures != 1 {
		t.Errorf("failures = %d, want 1", j.Failures)
	}
}

func TestBackoffScheduleThenArchive(t *testing.T) {
	schedule := []time.Duration{5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second}
	const maxRetries = 5
	b := setup(t, options{maxRetries: maxRetries, backoff: schedule})
	b.hooks.set("always-fails", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepValidate {
			return errors.New("plain failure")
		}
		return nil
	})
	res := b.send(t, event("always-fails"))
	want := []time.Duration{5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second, 60 * time.Second}
	for n, d := range want {
		info := b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool {
			return i.State == asynq.TaskStateRetry && i.Retried == n+1
		})
		got := info.NextProcessAt.Sub(info.LastFailedAt)
		if diff := got - d; diff < -time.Second || diff > time.Second {
			t.Errorf("after failure %d: next attempt in %v, want %v", n+1, got, d)
		}
		if err := b.inspector.RunTask(res.Queue, res.EventID); err != nil {
			t.Fatalf("run task now: %v", err)
		}
	}
	info := b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	if info.Retried != maxRetries {
		t.Errorf("archived after %d retries, want %d", info.Retried, maxRetries)
	}
	j := b.waitStatus(t, "always-fails", tasks.StatusFailed, 10*time.Second)
	if j.Failures != maxRetries+1 || j.Failure == nil || j.Error == nil || j.Failure.Kind != store.KindInternal {
		t.Errorf("job failures=%d error=%+v, want %d internal", j.Failures, j.Error, maxRetries+1)
	}
	if got := j.Steps[tasks.StepInitialize].Runs; got != 1 {
		t.Errorf("initialize ran %d times, want 1", got)
	}
	if got := j.Steps[tasks.StepValidate].Runs; got != maxRetries+1 {
		t.Errorf("validate ran %d times, want %d", got, maxRetries+1)
	}
}

func TestRerunArchivedResumesAtFailedStep(t *testing.T) {
	b := setup(t, options{maxRetries: 0})
	var broken atomic.Bool
	broken.Store(true)
	b.hooks.set("fix-me", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights && broken.Load() {
			return errors.New("model endpoint misconfigured")
		}
		return nil
	})
	res := b.send(t, event("fix-me"))
	b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	b.waitStatus(t, "fix-me", tasks.StatusFailed, 10*time.Second)
	broken.Store(false) // the cause is fixed
	// Run without the operator's reset (a raw asynq RunTask, as a deadline
	// cut-off's retry is): the budget stays spent, archived again at once,
	// nothing re-run.
	if err := b.inspector.RunTask(res.Queue, res.EventID); err != nil {
		t.Fatal(err)
	}
	b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	testenv.WaitFor(t, 10*time.Second, "the job reads failed again", func() (bool, error) {
		j := b.job(t, "fix-me")
		return j.Status == tasks.StatusFailed && j.Attempts == 2, nil
	})
	if j := b.job(t, "fix-me"); j.Steps[tasks.StepProcessInsights].Runs != 1 || j.Failures != 1 {
		t.Fatalf("without a reset: process-insights ran %d times, failures %d; want 1 and 1", j.Steps[tasks.StepProcessInsights].Runs, j.Failures)
	}
	// The operator's Run (API retry, asynqmon Run) resets the budget first.
	if err := b.store.ResetBudget(context.Background(), "fix-me", res.EventID); err != nil {
		t.Fatal(err)
	}
	if err := b.inspector.RunTask(res.Queue, res.EventID); err != nil {
		t.Fatal(err)
	}
	j := waitStep(t, b, "fix-me", tasks.StepSendCompletion)
	want := map[string]int{tasks.StepInitialize: 1, tasks.StepFetchJob: 1, tasks.StepValidate: 1,
		tasks.StepProcessInsights: 2, tasks.StepStoreResults: 1, tasks.StepSendCompletion: 1}
	if got := testenv.Runs(j); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("runs = %v, want %v", got, want)
	}
	if j.Status != tasks.StatusCompleted || j.Failures != 0 {
		t.Errorf("status %s failures %d, want completed 0", j.Status, j.Failures)
	}
}

func TestPrioritiesAndSchedule(t *testing.T) {
	b := setup(t, options{noServer: true})
	for _, tc := range []struct {
		priority int
		queue    string
	}{{10, "critical"}, {7, "high"}, {5, "default"}, {2, "low"}, {9, "critical"}, {8, "high"}, {4, "default"}, {3, "low"}, {0, "low"}, {6, "default"}} {
		jobID := fmt.Sprintf("prio-%d", tc.priority)
		res := b.send(t, event(jobID), tasks.WithPriority(tc.priority))
		info, err := b.inspector.GetTaskInfo(tc.queue, res.EventID)
		if err != nil || res.Queue != tc.queue || info.Queue != tc.queue {
			t.Errorf("priority %d: queue %q (task %v), want %q", tc.priority, res.Queue, err, tc.queue)
		}
	}
	res, err := b.client.TriggerUrgentInsights(context.Background(), event("urgent"))
	if err != nil || res.Queue != tasks.QueueCritical {
		t.Errorf("urgent: %v %v", res, err)
	}
	at := time.Now().Add(90 * time.Minute).Truncate(time.Second)
	res, err = b.client.ScheduleInsights(context.Background(), event("later"), at)
	if err != nil {
		t.Fatal(err)
	}
	info, err := b.inspector.GetTaskInfo(res.Queue, res.EventID)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStateScheduled || !info.NextProcessAt.Equal(at) || res.State != "scheduled" {
		t.Errorf("scheduled task: state %v at %v (answer %q), want scheduled at %v", info.State, info.NextProcessAt, res.State, at)
	}
	j := b.job(t, "later")
	if j.Status != tasks.StatusScheduled || j.ProcessAt == nil || !j.ProcessAt.Equal(at) {
		t.Errorf("job status %s processAt %v, want scheduled %v", j.Status, j.ProcessAt, at)
	}
	// A time in the past runs now.
	res, err = b.client.ScheduleInsights(context.Background(), event("past"), time.Now().Add(-time.Hour))
	if err != nil || res.State != "pending" {
		t.Errorf("past schedule: %+v %v, want pending", res, err)
	}
}

func TestSameJobIDTwiceAtOnceRunsOnce(t *testing.T) {
	b := setup(t, options{noServer: true})
	const n = 8
	var wg sync.WaitGroup
	results := make([]*tasks.SendResult, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = b.client.TriggerInsights(context.Background(), event("twice"))
		}()
	}
	wg.Wait()
	succeeded, eventIDs := 0, map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("send %d: %v", i, errs[i])
		}
		if results[i].SendStatus == "succeeded" {
			succeeded++
		}
		eventIDs[results[i].EventID] = true
	}
	if succeeded != 1 || len(eventIDs) != 1 {
		t.Errorf("%d sends succeeded with %d eventIds, want 1 and 1", succeeded, len(eventIDs))
	}
	pending, _ := b.inspector.ListPendingTasks(tasks.QueueDefault)
	if len(pending) != 1 {
		t.Errorf("%d tasks enqueued, want 1", len(pending))
	}
}

func TestSendAgainAfterCompletionStartsNewRun(t *testing.T) {
	b := setup(t, options{})
	first := b.send(t, event("again"))
	waitStep(t, b, "again", tasks.StepSendCompletion)
	second := b.send(t, tasks.EventData{JobID: "again"}) // jobId only: the stored request is reused
	if second.SendStatus != "succeeded" || second.EventID == first.EventID {
		t.Fatalf("second send %+v, want a new run", second)
	}
	j := b.waitStatus(t, "again", tasks.StatusCompleted, 30*time.Second)
	j = waitStep(t, b, "again", tasks.StepSendCompletion)
	if j.EventID != second.EventID || j.Steps[tasks.StepInitialize].Runs != 1 || j.Attempts != 1 {
		t.Errorf("second run: eventId %s attempts %d runs %v", j.EventID, j.Attempts, testenv.Runs(j))
	}
	waitFollowUps(t, b, "again", 2)
}

func TestJobWithoutRequestFailsWithoutRetry(t *testing.T) {
	b := setup(t, options{maxRetries: 5})
	res := b.send(t, tasks.EventData{JobID: "never-seen"})
	b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	j := b.waitStatus(t, "never-seen", tasks.StatusFailed, 10*time.Second)
	if j.Failure.Kind != store.KindBusiness || j.Failure.Step != tasks.StepFetchJob {
		t.Errorf("error %+v, want business at fetch-job", j.Error)
	}
}

// A panic in a step is a failure of that step: recovered, recorded with
// its kind, counted in the budget, archived once the budget is spent; the
// steps before it never run again.
func TestPanicInStepIsACountedFailure(t *testing.T) {
	const maxRetries = 1
	b := setup(t, options{maxRetries: maxRetries})
	b.hooks.set("panics", func(_ context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights {
			panic("nil map in the engine")
		}
		return nil
	})
	res := b.send(t, event("panics"))
	b.waitTask(t, res.Queue, res.EventID, 30*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	j := b.waitStatus(t, "panics", tasks.StatusFailed, 10*time.Second)
	if j.Failures != maxRetries+1 || j.Failure == nil || j.Failure.Kind != store.KindInternal || j.Failure.Step != tasks.StepProcessInsights ||
		j.Error == nil || !strings.Contains(*j.Error, "nil map in the engine") {
		t.Fatalf("failures %d failure %+v error %v, want %d internal failures of process-insights", j.Failures, j.Failure, j.Error, maxRetries+1)
	}
	if r := testenv.Runs(j); r[tasks.StepValidate] != 1 || r[tasks.StepProcessInsights] != maxRetries+1 {
		t.Fatalf("runs %v: validate once, process-insights %d times (each panic counted)", r, maxRetries+1)
	}
}

// A TASK_TIMEOUT cut-off is a counted failure: asynq retries a task cut
// off by its deadline whatever the handler returned, and once the budget is
// spent the next attempt archives it, never a loop.
func TestTimeoutIsACountedFailureThenArchived(t *testing.T) {
	const maxRetries = 1
	b := setup(t, options{maxRetries: maxRetries})
	b.hooks.set("too-slow", func(ctx context.Context, _ *handlers.Attempt, s string) error {
		if s == tasks.StepProcessInsights {
			<-ctx.Done() // a step that outlives its attempt
			return ctx.Err()
		}
		return nil
	})
	c := tasks.NewClient(b.redis, tasks.ClientConfig{Jobs: b.store, Timeout: time.Second})
	t.Cleanup(func() { c.Close() })
	res, err := c.TriggerInsights(context.Background(), event("too-slow"))
	if err != nil {
		t.Fatal(err)
	}
	b.waitTask(t, res.Queue, res.EventID, 90*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateArchived })
	j := b.waitStatus(t, "too-slow", tasks.StatusFailed, 10*time.Second)
	if j.Failures != maxRetries+1 || j.Failure == nil || j.Failure.Step != tasks.StepProcessInsights {
		t.Fatalf("failures %d failure %+v, want %d failures of process-insights", j.Failures, j.Failure, maxRetries+1)
	}
	if r := testenv.Runs(j); r[tasks.StepProcessInsights] != maxRetries+1 || r[tasks.StepValidate] != 1 {
		t.Fatalf("runs %v: each cut-off counted once, earlier steps once", r)
	}
}

// A producer without the store (insights trigger with only REDIS_URL, a Go
// client without Jobs) cannot claim a run; re-sending an ended jobId still
// starts a new run, which the worker records (steps afresh), while a task
// of the earlier run stays stale.
func TestStorelessResendStartsNewRun(t *testing.T) {
	b := setup(t, options{})
	first := b.send(t, event("storeless"))
	waitStep(t, b, "storeless", tasks.StepSendCompletion)
	bare := tasks.NewClient(b.redis, tasks.ClientConfig{})
	t.Cleanup(func() { bare.Close() })
	second, err := bare.TriggerInsights(context.Background(), event("storeless"))
	if err != nil || second.SendStatus != "succeeded" || second.EventID == first.EventID {
		t.Fatalf("store-less re-send: %+v %v", second, err)
	}
	var j *store.Job
	testenv.WaitFor(t, 30*time.Second, "the new run completes", func() (bool, error) {
		j = b.job(t, "storeless")
		return j.EventID == second.EventID && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted, nil
	})
	if r := testenv.Runs(j); r[tasks.StepInitialize] != 1 || r[tasks.StepProcessInsights] != 1 || !slices.Contains(j.PreviousEventIDs, first.EventID) {
		t.Fatalf("runs %v previous %v: want a fresh run, the first one recorded", r, j.PreviousEventIDs)
	}
	// A task of the first run arriving now is stale: revoked, nothing runs.
	req := event("storeless")
	payload, _ := json.Marshal(tasks.Run{JobID: "storeless", EventID: first.EventID, SystemID: "sys-1", Queue: "critical", Request: req.Request()})
	raw := asynq.NewClient(b.redis)
	t.Cleanup(func() { raw.Close() })
	if _, err := raw.Enqueue(asynq.NewTask(tasks.EventGenerateInsights, payload), asynq.TaskID(first.EventID), asynq.Queue("critical")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 30*time.Second, "the stale task is done", func() (bool, error) {
		info, err := b.inspector.GetTaskInfo("critical", first.EventID)
		return err != nil || info.State == asynq.TaskStateCompleted, nil
	})
	if j2 := b.job(t, "storeless"); j2.EventID != second.EventID || j2.Steps[tasks.StepInitialize].Runs != 1 {
		t.Fatalf("the first run's stale task changed the job: eventId %s runs %v", j2.EventID, testenv.Runs(j2))
	}
}
