package app

import (
	"context"
	"time"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/insights"
	"github.com/hibiken/asynq"
)

// WorkerOptions are the parts of a worker that vary.
type WorkerOptions struct {
	Engine   insights.Engine
	Observer handlers.Observer // nil: no metrics
	Hook     handlers.StepHook // nil: none (tests inject failures with it)
}

// Worker is an asynq server running the workloads.
type Worker struct {
	Server *asynq.Server
	Mux    *asynq.ServeMux
	fu     *asynq.Client
}

// NewWorker builds the worker: the step runner with the job's retry budget,
// the insights workload and the follow-up handler.
func (a *App) NewWorker(o WorkerOptions) *Worker {
	c := a.Cfg
	runner := handlers.NewRunner(handlers.RunnerConfig{
		Store: a.Store, MaxRetries: c.MaxRetries, Backoff: c.BackoffSchedule,
		TransientDelay: c.RetryTransientDelay, RateLimitDelay: c.RetryRateLimitDelay,
		Sealer: a.HandlerSealer(), Observer: o.Observer, Hook: o.Hook, Logger: a.Log,
	})
	fu := asynq.NewClient(a.Redis)
	mux := asynq.NewServeMux()
	handlers.Register(mux, runner,
		handlers.NewInsights(handlers.InsightsConfig{Engine: o.Engine, FollowUps: fu, FollowUpMaxRetry: max(c.MaxRetries, 1), Retention: c.TaskRetention}),
		handlers.NewCompleted(handlers.CompletedConfig{Systems: a.Store, WebhookURL: c.WebhookURL, WebhookSecret: c.WebhookSecret,
			TransientDelay: c.RetryTransientDelay, Logger: a.Log}))
	cfg := handlers.ServerConfig(handlers.ServerOptions{Concurrency: c.WorkerConcurrency, Queues: c.QueueWeights,
		Backoff: c.BackoffSchedule, TransientDelay: c.RetryTransientDelay, ShutdownTimeout: c.ShutdownTimeout})
	cfg.Logger = asynqLogger{a.Log}
	cfg.LogLevel = asynq.WarnLevel
	return &Worker{Server: asynq.NewServer(a.Redis, cfg), Mux: mux, fu: fu}
}

// Start starts processing.
func (w *Worker) Start() error { return w.Server.Start(w.Mux) }

// Shutdown stops taking tasks, waits for running ones up to the shutdown
// timeout (those cut off go back to their queue and resume elsewhere) and
// closes the connections.
func (w *Worker) Shutdown() {
	w.Server.Shutdown()
	_ = w.fu.Close()
}

// NewEngine returns the configured insights engine.
func (a *App) NewEngine() (insights.Engine, error) {
	rules := insights.NewRules(a.Store)
	if a.Cfg.InsightsProvider != "gemini" {
		return rules, nil
	}
	return insights.NewGemini(insights.GeminiConfig{APIKey: a.Cfg.GeminiAPIKey, Model: a.Cfg.GeminiModel, BaseURL: a.Cfg.GeminiBaseURL}, rules, a.Store), nil
}

// RunReconciler runs Reconcile at once and then every interval until ctx
// ends. Across processes one reconciler works per interval (a Redis lock).
func (a *App) RunReconciler(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if ok, _ := a.rdb.SetNX(ctx, "insights:reconciler:lock", "1", interval-time.Second).Result(); ok {
			if n, err := a.Reconcile(ctx, time.Minute); err != nil {
				a.Log.Warn("reconciler", "err", err)
			} else if n > 0 {
				a.Log.Info("reconciler re-enqueued jobs whose task Redis had lost", "count", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
