package flow_test

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/testenv"
)

// Every Redis call of the flow control that fails because Redis is down
// (connection refused) or still loading its data after a restart
// (LOADING) says it was Redis's outage (outage.Of), so the runner retries
// it without using the job's budget; before, LOADING came out as an error
// of no kind (internal) and used the budget.
func TestFlowControlMarksRedisOutages(t *testing.T) {
	ctx := context.Background()
	proxy := testenv.NewRedisProxy(t, testenv.FreeAddr(t))
	proxy.SetLoading(true)
	for name, addr := range map[string]string{"loading": proxy.Addr, "connection refused": testenv.FreeAddr(t)} {
		t.Run(name, func(t *testing.T) {
			rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: 1})
			t.Cleanup(func() { _ = rdb.Close() })
			slots := flow.NewSlots(rdb, flow.SlotsConfig{Limit: 1})
			limit := flow.NewRateLimiter(rdb, flow.RateLimitConfig{RPM: 10})
			breaker := flow.NewBreaker(rdb, flow.BreakerConfig{Failures: 3})
			_, _, slotErr := slots.Acquire(ctx, "sys-1", "run-1", 5)
			_, _, allowErr := breaker.Allow(ctx)
			_, stateErr := breaker.State(ctx)
			for call, err := range map[string]error{
				"slots": slotErr, "rate limit": limit.Before(ctx, 1), "breaker": allowErr, "breaker state": stateErr,
			} {
				if store, ok := outage.Of(err); !ok || store != outage.Redis {
					t.Errorf("%s: %v: outage.Of = %q %v, want Redis", call, err, store, ok)
				}
			}
		})
	}
	// A caller's own cancel is no outage of Redis.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	rdb := redis.NewClient(&redis.Options{Addr: proxy.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	if _, _, err := flow.NewSlots(rdb, flow.SlotsConfig{Limit: 1}).Acquire(cctx, "sys-1", "run-1", 5); err == nil {
		t.Fatal("acquire with a cancelled context succeeded")
	} else if _, ok := outage.Of(err); ok {
		t.Errorf("a cancelled call is marked as Redis's outage: %v", err)
	}
}
