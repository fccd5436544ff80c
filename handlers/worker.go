package handlers

import (
	"fmt"
	"log/slog"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/tasks"
)

// WorkerConfig configures a Worker: the step runner, the insights
// workload, the follow-up handler and the asynq server that runs them.
// Zero fields take the defaults their own Config types state.
type WorkerConfig struct {
	// Runner is the step runner (the store, the retry budget and delays,
	// sealing, metrics, the test hook). Runner.Logger nil: Logger.
	Runner RunnerConfig
	// Insights is the generate-insights workload (its engine, the
	// follow-up's budget and retention).
	Insights InsightsConfig
	// Completed is the insights-completed handler (lastInsights, the
	// webhook). Completed.Logger nil: Logger.
	Completed CompletedConfig
	// Server is the asynq server: concurrency, queue weights, shutdown.
	// Its retry policy follows Runner's Backoff and TransientDelay.
	Server ServerOptions
	// Logger receives the worker's logs, asynq's own included. Nil:
	// slog.Default().
	Logger *slog.Logger
	// AsynqLogLevel is the least level of asynq's own lines that are
	// logged. 0: asynq.WarnLevel.
	AsynqLogLevel asynq.LogLevel
}

// Worker runs the workloads: an asynq server with the runner's handlers,
// and the client that enqueues their follow-ups. It is the one way the
// service, the load test and the tests start a worker.
type Worker struct {
	server    *asynq.Server
	mux       *asynq.ServeMux
	followUps *asynq.Client
	runner    *Runner
	ownRedis  redis.UniversalClient // closed at Shutdown; nil when shared
}

// NewWorker returns a worker on its own connections to r.
func NewWorker(r asynq.RedisConnOpt, cfg WorkerConfig) (*Worker, error) {
	rc, ok := r.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("worker: %T makes no go-redis client", r)
	}
	w := NewWorkerFromRedisClient(rc, cfg)
	w.ownRedis = rc
	return w, nil
}

// NewWorkerFromRedisClient returns a worker sharing rc (its caller closes
// it after Shutdown), as asynq.NewServerFromRedisClient does.
func NewWorkerFromRedisClient(rc redis.UniversalClient, cfg WorkerConfig) *Worker {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Runner.Logger == nil {
		cfg.Runner.Logger = cfg.Logger
	}
	if cfg.Completed.Logger == nil {
		cfg.Completed.Logger = cfg.Logger
	}
	if cfg.AsynqLogLevel == 0 {
		cfg.AsynqLogLevel = asynq.WarnLevel
	}
	if cfg.Server.Backoff == nil {
		cfg.Server.Backoff = cfg.Runner.Backoff
	}
	if cfg.Server.TransientDelay == 0 {
		cfg.Server.TransientDelay = cfg.Runner.TransientDelay
	}
	w := &Worker{mux: asynq.NewServeMux(), followUps: asynq.NewClientFromRedisClient(rc), runner: NewRunner(cfg.Runner)}
	w.mux.Handle(tasks.EventGenerateInsights, w.runner.Handler(NewInsights(cfg.Insights, w.followUps).Workflow))
	w.mux.Handle(tasks.EventInsightsCompleted, NewCompleted(cfg.Completed))
	sc := ServerConfig(cfg.Server)
	sc.Logger, sc.LogLevel = asynqLogger{cfg.Logger}, cfg.AsynqLogLevel
	w.server = asynq.NewServerFromRedisClient(rc, sc)
	return w
}

// Handle adds a handler for another task type (tests register their own
// workflows on the runner with it).
func (w *Worker) Handle(taskType string, h asynq.Handler) { w.mux.Handle(taskType, h) }

// Runner is the worker's step runner, for workflows of its own (Handle).
func (w *Worker) Runner() *Runner { return w.runner }

// Start starts processing.
func (w *Worker) Start() error { return w.server.Start(w.mux) }

// Shutdown stops taking tasks, waits for running ones up to the shutdown
// timeout (those cut off go back to their queue and resume elsewhere) and
// closes the connections it owns.
func (w *Worker) Shutdown() {
	w.server.Shutdown()
	_ = w.followUps.Close()
	if w.ownRedis != nil {
		_ = w.ownRedis.Close()
	}
}

// asynqLogger routes asynq's own logs into slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Fatal(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }
