package handlers_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	mongoevent "go.mongodb.org/mongo-driver/v2/event"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// countHook counts Redis round trips (a pipeline is one).
type countHook struct{ n atomic.Int64 }

func (h *countHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *countHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.n.Add(1); return next(ctx, cmd) }
}
func (h *countHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.n.Add(1); return next(ctx, cmds) }
}

// counting stores lastInsights as the service does and counts the
// follow-ups handled.
type counting struct {
	*store.Store
	done atomic.Int64
}

func (c *counting) SetLastInsights(ctx context.Context, systemID string, v map[string]any) error {
	if err := c.Store.SetLastInsights(ctx, systemID, v); err != nil {
		return err
	}
	c.done.Add(1)
	return nil
}

// BenchmarkWorkflow sends b.N generate-insights events, then times the
// worker from start until every run's insights-completed follow-up has been
// handled: six durable checkpoints and the follow-up per workflow. The
// no-op sub-benchmark is raw asynq on the same Redis in the same run.
//
//	REDIS_URL=redis://127.0.0.1:6379/0 go test ./handlers -run '^$' -bench Workflow -benchtime 2000x
func BenchmarkWorkflow(b *testing.B) {
	const concurrency = 20
	b.Run("insights-6-steps", func(b *testing.B) {
		var mongoRT atomic.Int64
		opt := testenv.RedisFor(b, "bench-workflow")
		scfg := testenv.StoreConfig(b)
		scfg.Monitor = &mongoevent.CommandMonitor{Started: func(context.Context, *mongoevent.CommandStartedEvent) { mongoRT.Add(1) }}
		st, err := store.Open(context.Background(), scfg)
		if err != nil {
			b.Fatal(err)
		}
		defer func() { _ = st.Database().Drop(context.Background()); _ = st.Close(context.Background()) }()
		hook := &countHook{}
		rc := redis.NewClient(&redis.Options{Addr: opt.Addr, DB: opt.DB, PoolSize: 4 * concurrency})
		rc.AddHook(hook)
		defer rc.Close()
		// The system exists before its insights, as in use: the store
		// refuses lastInsights for one it does not know, which would never
		// be counted done.
		if err := st.UpsertSystem(context.Background(), bms.System{ID: event("").SystemID, Name: "bench"}); err != nil {
			b.Fatal(err)
		}
		producer := tasks.NewClient(opt, tasks.ClientConfig{Jobs: st})
		defer producer.Close()
		for i := range b.N {
			if _, err := producer.TriggerInsights(context.Background(), event(fmt.Sprintf("bench-%d", i))); err != nil {
				b.Fatal(err)
			}
		}
		done := &counting{Store: st}
		worker := handlers.NewWorkerFromRedisClient(rc, handlers.WorkerConfig{
			Runner:        handlers.RunnerConfig{Store: st, MaxRetries: 3},
			Insights:      handlers.InsightsConfig{Engine: testenv.Engine{}},
			Completed:     handlers.CompletedConfig{Systems: done},
			Server:        handlers.ServerOptions{Concurrency: concurrency},
			Logger:        testenv.Logger(),
			AsynqLogLevel: asynq.FatalLevel,
		})
		mongoRT.Store(0)
		hook.n.Store(0)
		b.ResetTimer()
		start := time.Now()
		if err := worker.Start(); err != nil {
			b.Fatal(err)
		}
		for done.done.Load() < int64(b.N) {
			time.Sleep(time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		worker.Shutdown()
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
		b.ReportMetric(float64(mongoRT.Load())/float64(b.N), "mongo-rt/job")
		b.ReportMetric(float64(hook.n.Load())/float64(b.N), "redis-rt/job")
	})
	b.Run("asynq-noop", func(b *testing.B) {
		opt := testenv.RedisFor(b, "bench-noop")
		c := asynq.NewClient(opt)
		defer c.Close()
		for range b.N {
			if _, err := c.Enqueue(asynq.NewTask("noop", nil)); err != nil {
				b.Fatal(err)
			}
		}
		var n atomic.Int64
		mux := asynq.NewServeMux()
		mux.HandleFunc("noop", func(context.Context, *asynq.Task) error { n.Add(1); return nil })
		srv := asynq.NewServer(opt, asynq.Config{Concurrency: concurrency, LogLevel: asynq.FatalLevel})
		insp := asynq.NewInspector(opt)
		defer insp.Close()
		b.ResetTimer()
		start := time.Now()
		if err := srv.Start(mux); err != nil {
			b.Fatal(err)
		}
		for {
			if n.Load() >= int64(b.N) {
				q, err := insp.GetQueueInfo("default")
				if err == nil && q.Pending == 0 && q.Active == 0 {
					break
				}
			}
			time.Sleep(time.Millisecond)
		}
		elapsed := time.Since(start)
		b.StopTimer()
		srv.Shutdown()
		b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
	})
}
