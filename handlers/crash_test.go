package handlers_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

func TestMain(m *testing.M) {
	if os.Getenv("INSIGHTS_CRASH_WORKER") == "1" {
		crashWorker()
		return
	}
	if dir := os.Getenv("INSIGHTS_GROUP_CRASH_DIR"); dir != "" {
		groupCrashWorker(dir)
		return
	}
	os.Exit(m.Run())
}

// crashWorker is the child process of TestWorkerKilledMidStep: a worker
// whose process-insights step never ends, so the parent can kill it there.
func crashWorker() {
	ctx := context.Background()
	db, _ := strconv.Atoi(os.Getenv("CRASH_REDIS_DB"))
	redis := asynq.RedisClientOpt{Addr: os.Getenv("CRASH_REDIS_ADDR"), DB: db}
	st, err := store.Open(ctx, store.Config{URI: os.Getenv("CRASH_MONGO_URI"), Database: os.Getenv("CRASH_MONGO_DB")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	groupWorker(st, redis, func(ctx context.Context, _ *handlers.Attempt, step string) error {
		if step == tasks.StepProcessInsights {
			<-ctx.Done() // hangs until killed
		}
		return nil
	})
	select {}
}

func TestWorkerKilledMidStep(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for asynq's 30 s lease to expire")
	}
	b := setup(t, options{maxRetries: 3, concurrency: 2, noServer: true})
	opt := b.redis.(asynq.RedisClientOpt)
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "INSIGHTS_CRASH_WORKER=1", "CRASH_REDIS_ADDR="+opt.Addr, "CRASH_REDIS_DB="+strconv.Itoa(opt.DB),
		"CRASH_MONGO_URI="+testenv.MongoURI(t), "CRASH_MONGO_DB="+b.store.Database().Name())
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })

	res := b.send(t, event("crashing"))
	// Wait until the child is inside process-insights: validate is durable.
	waitStep(t, b, "crashing", tasks.StepValidate)
	b.waitTask(t, res.Queue, res.EventID, 10*time.Second, func(i *asynq.TaskInfo) bool { return i.State == asynq.TaskStateActive })
	if err := child.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = child.Wait()
	killed := time.Now()

	// Another worker takes over once the lease expires.
	b.startServer(t)
	j := b.waitStatus(t, "crashing", tasks.StatusCompleted, 150*time.Second)
	j = waitStep(t, b, "crashing", tasks.StepSendCompletion)
	t.Logf("recovered %v after the kill", time.Since(killed).Round(time.Second))
	want := map[string]int{tasks.StepInitialize: 1, tasks.StepFetchJob: 1, tasks.StepValidate: 1,
		tasks.StepProcessInsights: 1, tasks.StepStoreResults: 1, tasks.StepSendCompletion: 1}
	if got := testenv.Runs(j); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("runs = %v, want %v (the killed body is not counted, nothing re-ran)", got, want)
	}
	if j.Steps[tasks.StepInitialize].Attempt != 1 || j.Steps[tasks.StepProcessInsights].Attempt != 2 {
		t.Errorf("initialize in attempt %d, process-insights in %d; want 1 and 2",
			j.Steps[tasks.StepInitialize].Attempt, j.Steps[tasks.StepProcessInsights].Attempt)
	}
	waitFollowUps(t, b, "crashing", 1)
}
