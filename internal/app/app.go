// Package app wires the service together: the stores (real or embedded),
// the producer client, the worker and the reconciler. cmd/insights and the
// end-to-end tests use it.
package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/crypt"
	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// App holds the shared parts of a running service.
type App struct {
	Cfg       *config.Config
	Log       *slog.Logger
	Redis     asynq.RedisConnOpt
	Store     *store.Store
	Client    *tasks.Client
	Inspector *asynq.Inspector
	// Sealer is nil unless DATA_ENCRYPTION_KEY is set.
	Sealer *crypt.Sealer

	// Breaker is the model provider's circuit breaker, shared through
	// Redis by every process (BREAKER_FAILURES, BREAKER_COOLDOWN).
	Breaker *flow.Breaker
	// RateLimit (GEMINI_RPM, GEMINI_TPM) and Slots (SYSTEM_CONCURRENCY)
	// are the rest of that flow control.
	RateLimit *flow.RateLimiter
	Slots     *flow.Slots

	rdb     redis.UniversalClient
	closers []func()
}

// Open connects to the configured stores, starting the embedded ones where
// none is configured.
func Open(ctx context.Context, cfg *config.Config, log *slog.Logger) (*App, error) {
	a := &App{Cfg: cfg, Log: log}
	ok := false
	defer func() {
		if !ok {
			a.Close()
		}
	}()
	if cfg.EmbeddedRedis() {
		r, err := devstack.StartRedis()
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, r.Close)
		a.Redis = asynq.RedisClientOpt{Addr: r.Addr(), Password: r.Password}
		log.Warn("REDIS_URL is not set: using an embedded in-memory Redis. Queued and scheduled work is LOST when this process exits " +
			"(the reconciler re-enqueues live jobs from MongoDB at the next start). Set REDIS_URL for production.")
	} else {
		opt, err := cfg.RedisConnOpt()
		if err != nil {
			return nil, err
		}
		a.Redis = opt
	}
	scfg := store.Config{URI: cfg.MongoURI, Database: cfg.MongoDB}
	if cfg.EmbeddedMongo() {
		dir := filepath.Join(cfg.DataDir, "ferretdb")
		// A socket only this user can reach: FerretDB has no password.
		m, err := devstack.StartMongoPrivate(ctx, dir, nil)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, m.Close)
		scfg.URI, scfg.Prepare, scfg.Sync, scfg.Checkpoint, scfg.HistoryWindow, scfg.SQLite = m.URI, m.Prepare, m.Sync, m.Checkpoint, m.HistoryWindow, m.SQLite
		log.Warn("MONGODB_URI is not set: using the embedded FerretDB (SQLite) under " + dir + ". Set MONGODB_URI for production.")
	}
	st, err := store.Open(ctx, scfg)
	if err != nil {
		return nil, fmt.Errorf("MONGODB_URI: %w", err)
	}
	a.Store = st
	a.closers = append(a.closers, func() { _ = st.Close(context.Background()) })
	if cfg.EncryptionKey != "" {
		s, err := crypt.New(cfg.EncryptionKey)
		if err != nil {
			return nil, err
		}
		a.Sealer = s
	}
	a.Client = tasks.NewClient(a.Redis, tasks.ClientConfig{Jobs: st, Timeout: cfg.TaskTimeout, Retention: cfg.TaskRetention})
	a.closers = append(a.closers, func() { _ = a.Client.Close() })
	a.Inspector = asynq.NewInspector(a.Redis)
	a.closers = append(a.closers, func() { _ = a.Inspector.Close() })
	rdb, ok2 := a.Redis.MakeRedisClient().(redis.UniversalClient)
	if !ok2 {
		return nil, errors.New("redis: unexpected client type")
	}
	a.rdb = rdb
	// One breaker and one limit for the deployment's model, whatever the
	// role: an API process reads the breaker the workers write.
	a.Breaker = flow.NewBreaker(rdb, flow.BreakerConfig{Failures: cfg.BreakerFailures, Cooldown: cfg.BreakerCooldown})
	a.RateLimit = flow.NewRateLimiter(rdb, flow.RateLimitConfig{RPM: cfg.GeminiRPM, TPM: cfg.GeminiTPM})
	a.Slots = flow.NewSlots(rdb, flow.SlotsConfig{Limit: cfg.SystemConcurrency})
	a.closers = append(a.closers, func() { _ = rdb.Close() })
	if err := rdb.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("REDIS_URL: ping: %w", err)
	}
	ok = true
	return a, nil
}

// Close releases everything in reverse order.
func (a *App) Close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}

// Ready checks Redis and MongoDB answer.
func (a *App) Ready(ctx context.Context) error {
	if err := a.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	if err := a.Store.Ping(ctx); err != nil {
		return fmt.Errorf("mongodb: %w", err)
	}
	return nil
}

// NewOperator is the operator of the event operations on the app's stores:
// MAX_RETRIES is the budget it reports and Decrypt opens stored values. The
// API (web.Config.Operator) and `insights status` use it; the caller closes
// it.
func (a *App) NewOperator(log *slog.Logger) *ops.Operator {
	return ops.New(ops.Config{Store: a.Store, Inspector: a.Inspector, Client: a.Client,
		MaxRetries: a.Cfg.MaxRetries, Decrypt: a.Decrypt, Logger: log})
}

// HandlerSealer adapts the Sealer for the step runner (nil when off).
func (a *App) HandlerSealer() handlers.Sealer {
	if a.Sealer == nil {
		return nil
	}
	return sealer{a.Sealer}
}

// Decrypt opens a stored value that may be encrypted (result, outputs) for
// the API and pages. Values that are not sealed come back unchanged.
func (a *App) Decrypt(stored any) (any, error) {
	env, ok := crypt.EnvelopeOf(stored)
	if !ok {
		return stored, nil
	}
	if a.Sealer == nil {
		return nil, errors.New("the value is encrypted and DATA_ENCRYPTION_KEY is not set")
	}
	b, err := a.Sealer.OpenBytes(env)
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("decrypt: %w", err)
	}
	return v, nil
}

type sealer struct{ s *crypt.Sealer }

func (s sealer) Seal(v any) (any, error) { return s.s.Seal(v) }

func (s sealer) Open(stored any, out any) (bool, error) {
	env, ok := crypt.EnvelopeOf(stored)
	if !ok {
		return false, nil
	}
	return true, s.s.Open(env, out)
}
