package handlers_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/hibiken/asynq"
)

// redisDB is this package's own Redis database index.
const redisDB = 1

// snapshotEngine is a small deterministic engine for workflow tests; the
// rules engine has tests of its own.
type snapshotEngine struct{}

func (snapshotEngine) Generate(_ context.Context, req insights.Request) (*insights.Result, error) {
	return &insights.Result{HealthScore: 100 - bms.V(req.Snapshot.CellVoltageDifference)*100, Status: "Normal",
		Provider: "rules", Markdown: "## KEY FINDINGS\n", Metrics: map[string]any{"soc": req.Snapshot.StateOfCharge}}, nil
}

// followUps counts insights-completed handled per jobId.
type followUps struct {
	mu sync.Mutex
	n  map[string]int
}

func (f *followUps) SetLastInsights(_ context.Context, _ string, v map[string]any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n[v["jobId"].(string)]++
	return nil
}

func (f *followUps) count(jobID string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n[jobID]
}

// hooks lets a test inject behaviour into steps per jobId.
type hooks struct {
	mu sync.Mutex
	fn map[string]func(ctx context.Context, r *handlers.Run, step string) error
}

func (h *hooks) set(jobID string, fn func(ctx context.Context, r *handlers.Run, step string) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fn[jobID] = fn
}

func (h *hooks) run(ctx context.Context, r *handlers.Run, step string) error {
	h.mu.Lock()
	fn := h.fn[r.Job.ID]
	h.mu.Unlock()
	if fn == nil {
		return nil
	}
	return fn(ctx, r, step)
}

type bundle struct {
	redis     asynq.RedisConnOpt
	store     *store.Store
	client    *tasks.Client
	inspector *asynq.Inspector
	hooks     *hooks
	followUps *followUps
	runner    *handlers.Runner
	mux       *asynq.ServeMux
}

type options struct {
	maxRetries  int
	backoff     []time.Duration
	concurrency int
	noServer    bool
	adjustStore func(*store.Config) // nil: testenv's store as it is
}

func quietLogger() *slog.Logger {
	if os.Getenv("TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func setup(t *testing.T, o options) *bundle {
	t.Helper()
	if o.backoff == nil {
		o.backoff = []time.Duration{time.Second}
	}
	if o.concurrency == 0 {
		o.concurrency = 10
	}
	b := &bundle{
		redis:     testenv.Redis(t, redisDB),
		store:     testenv.StoreWith(t, o.adjustStore),
		hooks:     &hooks{fn: map[string]func(context.Context, *handlers.Run, string) error{}},
		followUps: &followUps{n: map[string]int{}},
	}
	b.client = tasks.NewClient(b.redis, tasks.ClientConfig{Jobs: b.store})
	b.inspector = asynq.NewInspector(b.redis)
	t.Cleanup(func() { b.client.Close(); b.inspector.Close() })
	b.runner = handlers.NewRunner(handlers.RunnerConfig{Store: b.store, MaxRetries: o.maxRetries, Backoff: o.backoff,
		TransientDelay: time.Second, RateLimitDelay: time.Second, Hook: b.hooks.run, Logger: quietLogger()})
	fu := asynq.NewClient(b.redis)
	t.Cleanup(func() { fu.Close() })
	b.mux = asynq.NewServeMux()
	handlers.Register(b.mux, b.runner, handlers.NewInsights(handlers.InsightsConfig{Engine: snapshotEngine{}, FollowUps: fu}),
		handlers.NewCompleted(handlers.CompletedConfig{Systems: b.followUps, Logger: quietLogger()}))
	if !o.noServer {
		b.startServer(t, o.concurrency, o.backoff)
	}
	return b
}

func (b *bundle) startServer(t *testing.T, concurrency int, backoff []time.Duration) {
	cfg := handlers.ServerConfig(handlers.ServerOptions{Concurrency: concurrency,
		Queues: map[string]int{"critical": 6, "high": 4, "default": 2, "low": 1}, Backoff: backoff, ShutdownTimeout: 5 * time.Second})
	cfg.LogLevel = asynq.ErrorLevel
	srv := asynq.NewServer(b.redis, cfg)
	if err := srv.Start(b.mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}

func snapshot() *bms.Snapshot {
	return &bms.Snapshot{StateOfCharge: bms.F(80), OverallVoltage: bms.F(53.2), Current: bms.F(-12), RemainingCapacity: bms.F(160), FullCapacity: bms.F(200),
		CellVoltageDifference: bms.F(0.02), CellVoltages: []float64{3.32, 3.33, 3.34, 3.32}, Temperatures: []float64{25, 26}}
}

func event(jobID string) tasks.EventData {
	return tasks.EventData{JobID: jobID, SystemID: "sys-1", AnalysisData: snapshot()}
}

func (b *bundle) send(t *testing.T, data tasks.EventData, opts ...tasks.Option) *tasks.SendResult {
	t.Helper()
	res, err := b.client.TriggerInsights(context.Background(), data, opts...)
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return res
}

func (b *bundle) job(t *testing.T, jobID string) *store.Job {
	t.Helper()
	j, err := b.store.GetJob(context.Background(), jobID)
	if err != nil {
		t.Fatalf("get job %s: %v", jobID, err)
	}
	return j
}

func (b *bundle) waitStatus(t *testing.T, jobID, status string, within time.Duration) *store.Job {
	t.Helper()
	var j *store.Job
	testenv.WaitFor(t, within, fmt.Sprintf("job %s %s", jobID, status), func() (bool, error) {
		var err error
		j, err = b.store.GetJob(context.Background(), jobID)
		return err == nil && j.Status == status, err
	})
	return j
}

func (b *bundle) waitTask(t *testing.T, queue, id string, within time.Duration, cond func(*asynq.TaskInfo) bool) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	testenv.WaitFor(t, within, "task "+id, func() (bool, error) {
		var err error
		info, err = b.inspector.GetTaskInfo(queue, id)
		return err == nil && cond(info), nil
	})
	return info
}

func runs(j *store.Job) map[string]int {
	out := map[string]int{}
	for name, st := range j.Steps {
		out[name] = st.Runs
	}
	return out
}
