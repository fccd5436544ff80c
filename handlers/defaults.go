package handlers

import "time"

// The worker's defaults: what a zero field of RunnerConfig, CompletedConfig
// and ServerOptions means, and what internal/config uses when the variable
// is unset. The zero-value rule is the same everywhere: a zero duration or
// size is its default; a retry budget's zero is a value (no retries), as
// asynq's MaxRetry(0) is, so budgets have a default only in the
// configuration (MAX_RETRIES).
const (
	DefaultMaxRetries      = 15               // MAX_RETRIES
	DefaultTransientDelay  = 30 * time.Second // RETRY_TRANSIENT_DELAY
	DefaultRateLimitDelay  = 5 * time.Minute  // RETRY_RATE_LIMIT_DELAY
	DefaultConcurrency     = 10               // WORKER_CONCURRENCY
	DefaultShutdownTimeout = 25 * time.Second // SHUTDOWN_TIMEOUT
	DefaultQueueWeights    = "critical=6,high=4,default=2,low=1"
)

// DefaultBackoff is the retry schedule when none is set (BACKOFF_SCHEDULE).
var DefaultBackoff = []time.Duration{5 * time.Second, 10 * time.Second, 30 * time.Second, 60 * time.Second}
