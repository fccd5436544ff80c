package handlers_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// hooks lets a test inject behaviour into steps per jobId.
type hooks struct {
	mu sync.Mutex
	fn map[string]func(ctx context.Context, r *handlers.Attempt, step string) error
}

func (h *hooks) set(jobID string, fn func(ctx context.Context, r *handlers.Attempt, step string) error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fn[jobID] = fn
}

func (h *hooks) run(ctx context.Context, r *handlers.Attempt, step string) error {
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
	followUps *testenv.Systems // counts insights-completed handled per jobId
	worker    *handlers.Worker
	proxy     *testenv.RedisProxy // options.proxy; nil otherwise
}

type options struct {
	maxRetries  int
	backoff     []time.Duration
	concurrency int
	noServer    bool
	adjustStore func(*store.Config) // nil: testenv's store as it is
	// proxy puts a testenv.RedisProxy between Redis and the worker and
	// client (the inspector reads Redis directly), and slots guards the
	// engine with flow.Slots over it (SYSTEM_CONCURRENCY 1).
	proxy, slots bool
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
		redis:     testenv.Redis(t),
		store:     testenv.StoreWith(t, o.adjustStore),
		hooks:     &hooks{fn: map[string]func(context.Context, *handlers.Attempt, string) error{}},
		followUps: &testenv.Systems{},
	}
	b.inspector = asynq.NewInspector(b.redis)
	served := b.redis.(asynq.RedisClientOpt)
	if o.proxy {
		b.proxy = testenv.NewRedisProxy(t, served.Addr)
		served.Addr = b.proxy.Addr
	}
	b.client = tasks.NewClient(served, tasks.ClientConfig{Jobs: b.store})
	var engine insights.Engine = testenv.Engine{}
	if o.slots {
		rdb := redis.NewClient(&redis.Options{Addr: served.Addr, DB: served.DB})
		t.Cleanup(func() { _ = rdb.Close() })
		engine = flow.Guard(engine, flow.Control{Slots: flow.NewSlots(rdb, flow.SlotsConfig{Limit: 1})})
	}
	t.Cleanup(func() { b.client.Close(); b.inspector.Close() })
	var err error
	b.worker, err = handlers.NewWorker(served, handlers.WorkerConfig{
		Runner: handlers.RunnerConfig{Store: b.store, MaxRetries: o.maxRetries, Backoff: o.backoff,
			TransientDelay: time.Second, RateLimitDelay: time.Second, Hook: b.hooks.run},
		Insights:      handlers.InsightsConfig{Engine: engine},
		Completed:     handlers.CompletedConfig{Systems: b.followUps},
		Server:        handlers.ServerOptions{Concurrency: o.concurrency, ShutdownTimeout: 5 * time.Second},
		Logger:        testenv.Logger(),
		AsynqLogLevel: asynq.ErrorLevel,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !o.noServer {
		b.startServer(t)
	}
	return b
}

// startServer starts the bundle's worker (setup does, unless noServer:
// the test adds handlers or prepares state first).
func (b *bundle) startServer(t *testing.T) {
	if err := b.worker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.worker.Shutdown)
}

func event(jobID string) tasks.EventData {
	return tasks.EventData{JobID: jobID, SystemID: "sys-1", AnalysisData: testenv.Snapshot()}
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
	return testenv.Job(t, b.store, jobID)
}

func (b *bundle) waitStatus(t *testing.T, jobID, status string, within time.Duration) *store.Job {
	t.Helper()
	return testenv.WaitJob(t, b.store, jobID, within, status, func(j *store.Job) bool { return j.Status == status })
}

func (b *bundle) waitTask(t *testing.T, queue, id string, within time.Duration, cond func(*asynq.TaskInfo) bool) *asynq.TaskInfo {
	t.Helper()
	return testenv.WaitTask(t, b.inspector, queue, id, within, cond)
}
