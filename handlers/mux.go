package handlers

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/tasks"
)

// ServerOptions are the settings of ServerConfig.
type ServerOptions struct {
	// Concurrency is WORKER_CONCURRENCY. 0: DefaultConcurrency.
	Concurrency int
	// Queues are QUEUE_WEIGHTS. Nil: DefaultQueueWeights.
	Queues map[string]int
	// Backoff is BACKOFF_SCHEDULE. Nil: DefaultBackoff.
	Backoff []time.Duration
	// TransientDelay is RETRY_TRANSIENT_DELAY, used when an attempt hits
	// TASK_TIMEOUT. 0: DefaultTransientDelay.
	TransientDelay time.Duration
	// ShutdownTimeout is SHUTDOWN_TIMEOUT. 0: DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
}

// TaskCheckInterval is how long an idle worker waits before it looks at
// the queues again. asynq's default, 1 s, is added to the latency of every
// task that arrives at an idle worker, the follow-up included (measured at
// half load: send → completed p50 1.19 s with 1 s); 20 ms costs an idle
// worker 50 cheap Redis calls a second.
const TaskCheckInterval = 20 * time.Millisecond

// ServerConfig returns the asynq server settings the workload needs: the
// retry policy (the job's backoff, exact RetryAfter delays, sleeps that are
// no failures), a 1 s delayed-task check so that delays hold to the
// second, and TaskCheckInterval.
func ServerConfig(o ServerOptions) asynq.Config {
	if o.Concurrency == 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.Queues == nil {
		o.Queues, _ = ParseQueueWeights(DefaultQueueWeights)
	}
	if o.ShutdownTimeout == 0 {
		o.ShutdownTimeout = DefaultShutdownTimeout
	}
	p := RetryPolicy{Schedule: o.Backoff, TransientDelay: o.TransientDelay}
	return asynq.Config{
		Concurrency:              o.Concurrency,
		Queues:                   o.Queues,
		RetryDelayFunc:           p.RetryDelayFunc,
		IsFailure:                IsFailure,
		DelayedTaskCheckInterval: time.Second,
		TaskCheckInterval:        TaskCheckInterval,
		ShutdownTimeout:          o.ShutdownTimeout,
	}
}

// ParseQueueWeights reads "name=weight,..." as asynq.Config.Queues wants it.
// Every queue of Queues must be present with a weight ≥ 1.
func ParseQueueWeights(s string) (map[string]int, error) {
	out := map[string]int{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, w, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not name=weight", part)
		}
		name = strings.TrimSpace(name)
		n, err := strconv.Atoi(strings.TrimSpace(w))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("weight of %q must be an integer ≥ 1, got %q", name, w)
		}
		if !slices.Contains(tasks.Queues, name) {
			return nil, fmt.Errorf("unknown queue %q (want %s)", name, strings.Join(tasks.Queues, ", "))
		}
		out[name] = n
	}
	for _, q := range tasks.Queues {
		if _, ok := out[q]; !ok {
			return nil, fmt.Errorf("queue %q has no weight", q)
		}
	}
	return out, nil
}
