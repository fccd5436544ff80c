package handlers_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

type stepOut struct {
	At time.Time `bson:"at"`
}

func TestSleepFreesWorkerAndResumesWithoutRetry(t *testing.T) {
	// One worker: the other job can only run while the sleeper holds none.
	b := setup(t, options{maxRetries: 0, concurrency: 1, noServer: true})
	const nap = 3 * time.Second
	b.worker.Handle("test-sleep", b.worker.Runner().Handler(func(ctx context.Context, r *handlers.Attempt) error {
		if _, err := handlers.Step(ctx, r, "before", func(context.Context) (stepOut, error) { return stepOut{At: time.Now()}, nil }); err != nil {
			return err
		}
		if err := handlers.Sleep(ctx, r, "nap", nap); err != nil {
			return err
		}
		_, err := handlers.Step(ctx, r, "after", func(context.Context) (stepOut, error) { return stepOut{At: time.Now()}, nil })
		if err == nil {
			r.AlsoSet("status", tasks.StatusCompleted)
		}
		return err
	}))
	b.startServer(t)

	payload, _ := json.Marshal(tasks.Run{EventID: "sleep-ev", JobID: "sleeper", Queue: tasks.QueueDefault})
	c := asynq.NewClient(b.redis)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask("test-sleep", payload), asynq.TaskID("sleep-ev"), asynq.MaxRetry(25)); err != nil {
		t.Fatal(err)
	}
	started := time.Now()
	// While it sleeps the task waits in Redis, not in a worker.
	info := b.waitTask(t, tasks.QueueDefault, "sleep-ev", 10*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateRetry })
	if info.Retried != 0 {
		t.Errorf("sleeping task has retried %d, want 0", info.Retried)
	}
	j := b.job(t, "sleeper")
	if st := j.Steps["nap"]; st.Status != store.StepSleeping || st.SleepUntil == nil {
		t.Fatalf("nap checkpoint %+v, want sleeping", st)
	}
	if d := info.NextProcessAt.Sub(*j.Steps["nap"].SleepUntil); d < -time.Second || d > time.Second {
		t.Errorf("task due %v, sleep until %v", info.NextProcessAt, j.Steps["nap"].SleepUntil)
	}
	// The only worker is free: another job completes during the sleep.
	b.send(t, event("meanwhile"))
	other := waitStep(t, b, "meanwhile", tasks.StepSendCompletion)
	if other.Steps[tasks.StepSendCompletion].FinishedAt.After(j.Steps["nap"].SleepUntil.Add(-time.Second)) {
		t.Errorf("other job finished at %v, not during the sleep (until %v)", other.Steps[tasks.StepSendCompletion].FinishedAt, j.Steps["nap"].SleepUntil)
	}
	j = waitStep(t, b, "sleeper", "after")
	if time.Since(started) < nap {
		t.Errorf("resumed after %v, before the %v sleep ended", time.Since(started), nap)
	}
	if j.Steps["before"].Runs != 1 || j.Steps["nap"].Status != store.StepCompleted || j.Failures != 0 || j.Attempts != 2 {
		t.Errorf("after sleep: runs %v failures %d attempts %d", testenv.Runs(j), j.Failures, j.Attempts)
	}
	info, err := b.inspector.GetTaskInfo(tasks.QueueDefault, "sleep-ev")
	if err == nil && info.Retried != 0 {
		t.Errorf("a sleep used %d retries", info.Retried)
	}
}
