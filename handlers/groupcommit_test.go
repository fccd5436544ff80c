package handlers_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// The tests here hold or fail the group commit of the embedded store
// between a group's writes and their acknowledgement.

// stepLog records the steps whose bodies started.
type stepLog struct {
	mu    sync.Mutex
	steps []string
}

func (l *stepLog) hook(_ context.Context, _ *handlers.Attempt, step string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.steps = append(l.steps, step)
	return nil
}

func (l *stepLog) get() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.steps)
}

func gatedBundle(t *testing.T) (*bundle, *testenv.SyncGate) {
	t.Helper()
	if testenv.StoreConfig(t).Sync == nil {
		t.Skip("group commit runs on the embedded store only (MONGODB_URI is set)")
	}
	g := testenv.NewSyncGate()
	b := setup(t, options{maxRetries: 3, concurrency: 4, noServer: true, adjustStore: func(c *store.Config) { c.Sync = g.Wrap(c.Sync) }})
	return b, g
}

func waitSyncs(t *testing.T, g *testenv.SyncGate, n int64) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%d syncs", n), func() (bool, error) { return g.Entered() >= n, nil })
}

// While a step's checkpoint waits for its group to be durable, the next
// step has not started: each checkpoint in turn is held, and the steps
// started by then are exactly those up to it.
func TestStepWaitsForDurableCheckpoint(t *testing.T) {
	b, g := gatedBundle(t)
	log := &stepLog{}
	b.hooks.set("held", log.hook)
	b.send(t, event("held"))
	base := g.Entered()
	g.Close()
	b.startServer(t)
	// The attempt's start, then one checkpoint per step.
	for k := 0; k <= len(tasks.Steps); k++ {
		waitSyncs(t, g, base+int64(k)+1)
		if got, want := log.get(), tasks.Steps[:k]; !slices.Equal(got, want) {
			t.Fatalf("while write %d waits for its sync, steps started = %v, want %v", k+1, got, want)
		}
		if g.Entered() != base+int64(k)+1 {
			t.Fatalf("%d syncs while write %d is held, want no other write", g.Entered()-base, k+1)
		}
		g.Allow(1)
	}
	g.Open()
	j := b.waitStatus(t, "held", tasks.StatusCompleted, 10*time.Second)
	waitFollowUps(t, b, "held", 1)
	if j.Attempts != 1 {
		t.Errorf("attempts = %d, want 1", j.Attempts)
	}
}

// A group whose Sync fails fails its step's checkpoint: the task is retried
// as a transient store failure (no retry budget used) and resumes after the
// last checkpoint that is in the store, so no step runs twice.
func TestFailedGroupRetriesItsStep(t *testing.T) {
	b, g := gatedBundle(t)
	log := &stepLog{}
	b.hooks.set("failing-sync", log.hook)
	b.send(t, event("failing-sync"))
	base := g.Entered()
	g.Close()
	b.startServer(t)
	// Syncs: attempt start, initialize, fetch-job, then validate's.
	for k := int64(1); k <= 3; k++ {
		waitSyncs(t, g, base+k)
		g.Allow(1)
	}
	waitSyncs(t, g, base+4)
	g.FailNext(1)
	g.Open()
	b.waitStatus(t, "failing-sync", tasks.StatusCompleted, 20*time.Second)
	// The status reads completed at store-results: wait for the last step.
	j := waitStep(t, b, "failing-sync", tasks.StepSendCompletion)
	if j.Attempts != 2 || j.Failures != 0 {
		t.Errorf("attempts = %d, failures = %d; want 2 and 0 (a store failure uses no budget)", j.Attempts, j.Failures)
	}
	if got := log.get(); !slices.Equal(got, tasks.Steps) {
		t.Errorf("steps started = %v, want each once: %v", got, tasks.Steps)
	}
	for _, s := range tasks.Steps {
		if j.Steps[s].Runs != 1 {
			t.Errorf("%s runs = %d, want 1", s, j.Steps[s].Runs)
		}
	}
	if j.Steps[tasks.StepProcessInsights].Attempt != 2 {
		t.Errorf("process-insights ran in attempt %d, want 2 (after the failed group)", j.Steps[tasks.StepProcessInsights].Attempt)
	}
}

// groupWorker starts a worker running the workload on st (no follow-up
// store): the crash tests' children.
func groupWorker(st *store.Store, redis asynq.RedisClientOpt, hook handlers.StepHook) *handlers.Worker {
	w, err := handlers.NewWorker(redis, handlers.WorkerConfig{
		Runner:        handlers.RunnerConfig{Store: st, MaxRetries: 3, Backoff: []time.Duration{time.Second}, TransientDelay: time.Second, Hook: hook},
		Insights:      handlers.InsightsConfig{Engine: testenv.Engine{}},
		Server:        handlers.ServerOptions{Concurrency: 2},
		Logger:        testenv.Logger(),
		AsynqLogLevel: asynq.FatalLevel,
	})
	if err != nil {
		panic(err)
	}
	if err := w.Start(); err != nil {
		panic(err)
	}
	return w
}

// groupCrashWorker is the child of TestCrashBetweenGroupAndAck: a worker
// with its own embedded FerretDB under dir whose process-insights checkpoint
// is written and then never made durable nor acknowledged: its Sync hangs
// after printing HELD, until the parent kills the process.
func groupCrashWorker(dir string) {
	ctx := context.Background()
	m, err := devstack.StartMongo(ctx, dir, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	var armed atomic.Bool
	st, err := store.Open(ctx, store.Config{URI: m.URI, Database: "crash", Prepare: m.Prepare,
		Sync: func(ctx context.Context, db string) error {
			if armed.Load() {
				fmt.Println("HELD")
				select {} // killed here
			}
			return m.Sync(ctx, db)
		}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	db, _ := strconv.Atoi(os.Getenv("CRASH_REDIS_DB"))
	groupWorker(st, asynq.RedisClientOpt{Addr: os.Getenv("CRASH_REDIS_ADDR"), DB: db}, func(_ context.Context, _ *handlers.Attempt, step string) error {
		if step == tasks.StepProcessInsights {
			armed.Store(true) // the next group holds this step's checkpoint
		}
		return nil
	})
	select {}
}

// A worker killed after its group's writes reached the store, before they
// were made durable and acknowledged, resumes from what the store holds:
// the step whose acknowledgement was cut off is found completed and not run
// again, and no earlier step reruns. (SIGKILL keeps the page cache, so this
// shows resume after the cut, not the fsync itself: the tests that hold
// Sync show a step waits for it.)
func TestCrashBetweenGroupAndAck(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for asynq's 30 s lease to expire")
	}
	if os.Getenv("MONGODB_URI") != "" {
		t.Skip("group commit runs on the embedded store only")
	}
	opt := testenv.Redis(t)
	dir := t.TempDir()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "INSIGHTS_GROUP_CRASH_DIR="+dir, "CRASH_REDIS_ADDR="+opt.Addr, "CRASH_REDIS_DB="+strconv.Itoa(opt.DB))
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	producer := tasks.NewClient(opt, tasks.ClientConfig{}) // the worker creates the job
	defer producer.Close()
	if _, err := producer.TriggerInsights(context.Background(), event("cut-off")); err != nil {
		t.Fatal(err)
	}
	held := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == "HELD" {
				held <- true
				return
			}
		}
		held <- false
	}()
	select {
	case ok := <-held:
		if !ok {
			t.Fatal("the child ended before holding a group")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the child did not reach process-insights' checkpoint")
	}
	if err := child.Process.Kill(); err != nil { // SIGKILL
		t.Fatal(err)
	}
	_ = child.Wait()

	// The same files, reopened by a new process's store.
	m, err := devstack.StartMongo(context.Background(), dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	st, err := store.Open(context.Background(), store.Config{URI: m.URI, Database: "crash", Prepare: m.Prepare, Sync: m.Sync})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	j, err := st.GetJob(context.Background(), "cut-off")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range tasks.Steps[:4] { // acknowledged before the kill, and the cut-off one
		if j.Steps[s].Status != store.StepCompleted {
			t.Fatalf("after the kill, %s is %q, want completed: %+v", s, j.Steps[s].Status, j.Steps)
		}
	}
	log := &stepLog{}
	srv := groupWorker(st, opt, log.hook)
	t.Cleanup(srv.Shutdown)
	testenv.WaitFor(t, 150*time.Second, "job completed after the kill", func() (bool, error) {
		j, err = st.GetJob(context.Background(), "cut-off")
		return err == nil && j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted, err
	})
	if got, want := log.get(), tasks.Steps[4:]; !slices.Equal(got, want) {
		t.Errorf("steps run after the kill = %v, want only %v", got, want)
	}
	for _, s := range tasks.Steps {
		if j.Steps[s].Runs != 1 {
			t.Errorf("%s runs = %d, want 1", s, j.Steps[s].Runs)
		}
	}
}
