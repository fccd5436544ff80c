package app

import (
	"context"
	"time"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/insights"
)

// WorkerOptions are the parts of a worker that vary.
type WorkerOptions struct {
	Engine   insights.Engine
	Observer handlers.Observer // nil: no metrics
	Hook     handlers.StepHook // nil: none (tests inject failures with it)
}

// NewWorker builds the service's worker from its configuration: the step
// runner with the job's retry budget, the insights workload and the
// follow-up handler.
func (a *App) NewWorker(o WorkerOptions) (*handlers.Worker, error) {
	c := a.Cfg
	return handlers.NewWorker(a.Redis, handlers.WorkerConfig{
		Runner: handlers.RunnerConfig{
			Store: a.Store, MaxRetries: c.MaxRetries, Backoff: c.BackoffSchedule,
			TransientDelay: c.RetryTransientDelay, RateLimitDelay: c.RetryRateLimitDelay,
			Sealer: a.HandlerSealer(), Observer: o.Observer, Hook: o.Hook,
		},
		Insights: handlers.InsightsConfig{Engine: o.Engine, Retention: c.TaskRetention},
		Completed: handlers.CompletedConfig{Systems: a.Store, MaxRetries: c.MaxRetries, WebhookURL: c.WebhookURL, WebhookSecret: c.WebhookSecret,
			TransientDelay: c.RetryTransientDelay},
		Server: handlers.ServerOptions{Concurrency: c.WorkerConcurrency, Queues: c.QueueWeights, ShutdownTimeout: c.ShutdownTimeout},
		Logger: a.Log,
	})
}

// NewEngine returns the configured insights engine.
// The flow control guards it: a system's runs wait for its slot
// (SYSTEM_CONCURRENCY); with the gemini provider, each model call waits for
// the shared rate limit and runs wait while the breaker is open.
func (a *App) NewEngine() (insights.Engine, error) {
	rules := insights.NewRules(a.Store)
	if a.Cfg.InsightsProvider != "gemini" {
		return flow.Guard(rules, flow.Control{Slots: a.Slots}), nil
	}
	gemini := insights.NewGemini(insights.GeminiConfig{APIKey: a.Cfg.GeminiAPIKey, Model: a.Cfg.GeminiModel,
		BaseURL: a.Cfg.GeminiBaseURL, Gate: a.RateLimit}, rules, a.Store)
	return flow.Guard(gemini, flow.Control{Breaker: a.Breaker, Slots: a.Slots}), nil
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
