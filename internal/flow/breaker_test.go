package flow_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/testenv"
)

func redisClient(t *testing.T) redis.UniversalClient {
	t.Helper()
	opt := testenv.Redis(t)
	rdb := redis.NewClient(&redis.Options{Addr: opt.Addr, Username: opt.Username, Password: opt.Password, DB: opt.DB})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// flaky is a model that fails with a 503 while down is set, else answers;
// it counts its calls.
type flaky struct {
	down  atomic.Bool
	calls atomic.Int32
}

func (f *flaky) Generate(context.Context, insights.Request) (*insights.Result, error) {
	f.calls.Add(1)
	if f.down.Load() {
		return nil, &insights.ProviderError{StatusCode: 503, Err: errors.New("backend unavailable")}
	}
	return &insights.Result{Provider: "fake"}, nil
}

func state(t *testing.T, b *flow.Breaker) *flow.BreakerState {
	t.Helper()
	st, err := b.State(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// The breaker opens after the failures, holds (runs wait instead of
// calling), lets one trial through after the cool-down, which reopens it
// while the model is down and closes it once it answers. Two engines on
// one Redis share it, as two worker processes do.
func TestBreakerOpensHoldsHalfOpensCloses(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	cfg := flow.BreakerConfig{Name: "gemini", Failures: 3, Cooldown: 300 * time.Millisecond}
	model := &flaky{}
	model.down.Store(true)
	one, two := flow.Guard(model, flow.Control{Breaker: flow.NewBreaker(rdb, cfg)}), flow.Guard(model, flow.Control{Breaker: flow.NewBreaker(rdb, cfg)})
	b := flow.NewBreaker(rdb, cfg)

	for i := range 3 {
		engine := []insights.Engine{one, two}[i%2]
		if _, err := engine.Generate(ctx, insights.Request{}); !errors.As(err, new(*insights.ProviderError)) {
			t.Fatalf("call %d: %v, want the provider's 503", i+1, err)
		}
	}
	if st := state(t, b); st.State != flow.Open || st.Failures != 3 || st.OpenedAt == nil {
		t.Fatalf("after 3 failures: %+v, want open", st)
	}
	// Open: no call reaches the model; the run is told to wait.
	_, err := two.Generate(ctx, insights.Request{})
	var wait *flow.WaitError
	if !errors.As(err, &wait) || time.Until(wait.Until) <= 0 || model.calls.Load() != 3 {
		t.Fatalf("while open: %v (calls %d), want a wait and no call", err, model.calls.Load())
	}
	// After the cool-down (Redis's clock: the embedded one ticks every
	// 250 ms) one trial goes through; it fails: open again.
	trial := func(e insights.Engine) error {
		t.Helper()
		var err error
		testenv.WaitFor(t, 5*time.Second, "the cool-down", func() (bool, error) {
			_, err = e.Generate(ctx, insights.Request{})
			return !errors.As(err, new(*flow.WaitError)), nil
		})
		return err
	}
	if err := trial(one); !errors.As(err, new(*insights.ProviderError)) || model.calls.Load() != 4 {
		t.Fatalf("trial: %v (calls %d), want the trial call's 503", err, model.calls.Load())
	}
	if st := state(t, b); st.State != flow.Open {
		t.Fatalf("after a failed trial: %+v, want open again", st)
	}
	// The model is back: the next trial closes it, and calls flow again.
	model.down.Store(false)
	if err := trial(two); err != nil {
		t.Fatalf("trial after recovery: %v", err)
	}
	if st := state(t, b); st.State != flow.Closed || st.Failures != 0 {
		t.Fatalf("after a good trial: %+v, want closed", st)
	}
	if _, err := one.Generate(ctx, insights.Request{}); err != nil {
		t.Fatalf("closed: %v", err)
	}
}

// While a trial call is under way, other runs wait for it.
func TestBreakerOneTrialAtATime(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	b := flow.NewBreaker(rdb, flow.BreakerConfig{Name: "trial", Failures: 1, Cooldown: 200 * time.Millisecond})
	if err := b.Failure(ctx); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 5*time.Second, "the cool-down: a trial let through", func() (bool, error) {
		first, _, err := b.Allow(ctx)
		return first, err
	})
	second, wait, err := b.Allow(ctx)
	if err != nil || second || wait <= 0 {
		t.Fatalf("second caller during the trial: allowed %v wait %v %v, want a wait", second, wait, err)
	}
}

// A refused request (400) is the request's fault, not the provider's: it
// does not count; an operator's reset closes an open breaker; 0 failures
// turns the breaker off.
func TestBreakerCountsOutagesOnlyResetAndOff(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	cfg := flow.BreakerConfig{Name: "refusals", Failures: 1, Cooldown: time.Hour}
	refused := flow.Guard(engineFunc(func() error { return &insights.ProviderError{StatusCode: 400} }), flow.Control{Breaker: flow.NewBreaker(rdb, cfg)})
	for range 3 {
		_, _ = refused.Generate(ctx, insights.Request{})
	}
	b := flow.NewBreaker(rdb, cfg)
	if st := state(t, b); st.State != flow.Closed {
		t.Fatalf("after three 400s: %+v, want closed", st)
	}
	if err := b.Failure(ctx); err != nil {
		t.Fatal(err)
	}
	if st := state(t, b); st.State != flow.Open {
		t.Fatalf("after a failure at threshold 1: %+v, want open", st)
	}
	if err := b.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := b.Allow(ctx); !ok || err != nil || state(t, b).State != flow.Closed {
		t.Fatalf("after reset: allowed %v %v, want closed", ok, err)
	}
	off := flow.NewBreaker(rdb, flow.BreakerConfig{Name: "off", Failures: 0})
	for range 5 {
		_ = off.Failure(ctx)
	}
	if ok, _, err := off.Allow(ctx); !ok || err != nil {
		t.Fatalf("an off breaker: allowed %v %v", ok, err)
	}
}

type engineFunc func() error

func (f engineFunc) Generate(context.Context, insights.Request) (*insights.Result, error) {
	return nil, f()
}
