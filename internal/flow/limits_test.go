package flow_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/testenv"
)

// One slot per system: the others wait in line, the higher priority first,
// then in the order they asked; other systems do not wait.
func TestSlotsOnePerSystemInPriorityOrder(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	s := flow.NewSlots(rdb, flow.SlotsConfig{Limit: 1, Poll: 100 * time.Millisecond})
	acquire := func(sys, holder string, prio int) bool {
		t.Helper()
		ok, poll, err := s.Acquire(ctx, sys, holder, prio)
		if err != nil || (!ok && poll <= 0) {
			t.Fatalf("acquire %s/%s: %v %v %v", sys, holder, ok, poll, err)
		}
		return ok
	}
	if !acquire("sys-a", "run-1", 5) {
		t.Fatal("the first run of sys-a waits")
	}
	if !acquire("sys-b", "run-other", 5) {
		t.Fatal("a run of another system waits for sys-a")
	}
	if acquire("sys-a", "run-2", 5) || acquire("sys-a", "run-urgent", 10) {
		t.Fatal("a second run of sys-a got a slot while run-1 holds it")
	}
	if !acquire("sys-a", "run-1", 5) {
		t.Fatal("the holder asking again lost its slot")
	}
	if err := s.Release(ctx, "sys-a", "run-1"); err != nil {
		t.Fatal(err)
	}
	// run-2 asked first, run-urgent has the higher priority: it goes next.
	if acquire("sys-a", "run-2", 5) {
		t.Fatal("run-2 went before the urgent run")
	}
	if !acquire("sys-a", "run-urgent", 10) {
		t.Fatal("the urgent run did not get the free slot")
	}
	_ = s.Release(ctx, "sys-a", "run-urgent")
	if !acquire("sys-a", "run-2", 5) {
		t.Fatal("run-2 did not get the slot after the urgent run")
	}
}

// A worker killed holding a slot blocks its system no longer than the
// lease; one that keeps renewing keeps it.
func TestSlotLeaseEndsWithItsHolder(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	s := flow.NewSlots(rdb, flow.SlotsConfig{Limit: 1, Lease: 400 * time.Millisecond, Poll: 50 * time.Millisecond})
	if ok, _, _ := s.Acquire(ctx, "sys-c", "crashed", 5); !ok {
		t.Fatal("first acquire")
	}
	start := time.Now()
	testenv.WaitFor(t, 5*time.Second, "the dead holder's lease to end", func() (bool, error) {
		ok, _, err := s.Acquire(ctx, "sys-c", "next", 5)
		return ok, err
	})
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the system was blocked %v, the lease is 400ms", d)
	}
	// A live holder renews: nobody else gets in meanwhile.
	for range 4 {
		time.Sleep(150 * time.Millisecond) // renewals at a third of the lease
		if err := s.Renew(ctx, "sys-c", "next"); err != nil {
			t.Fatal(err)
		}
		if ok, _, _ := s.Acquire(ctx, "sys-c", "third", 5); ok {
			t.Fatal("a renewed slot was taken")
		}
	}
}

// The rate limit admits RPM calls over a sliding minute and then asks the
// run to wait; a 429 with a delay pauses every caller; used tokens count
// against TPM.
func TestRateLimiter(t *testing.T) {
	rdb := redisClient(t)
	ctx := context.Background()
	l := flow.NewRateLimiter(rdb, flow.RateLimitConfig{Name: "rpm", RPM: 3})
	for i := range 3 {
		if err := l.Before(ctx, 1); err != nil {
			t.Fatalf("call %d: %v", i+1, err)
		}
	}
	var wait *flow.WaitError
	if err := l.Before(ctx, 1); !errors.As(err, &wait) || time.Until(wait.Until) < 55*time.Second {
		t.Fatalf("a 4th call within the minute: %v, want a wait of about a minute", err)
	}

	// A later turn of a conversation waits in its worker instead: a
	// reschedule would throw the turns away.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := l.Before(short, 3); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a third turn over the limit: %v, want it to wait in the worker until its ctx ends", err)
	}

	paused := flow.NewRateLimiter(rdb, flow.RateLimitConfig{Name: "pause", RPM: 100})
	paused.After(ctx, 0, &insights.ProviderError{StatusCode: 429, RetryAfter: 30 * time.Second})
	if err := paused.Before(ctx, 1); !errors.As(err, &wait) || time.Until(wait.Until) < 25*time.Second {
		t.Fatalf("after a 429 naming 30s: %v, want a wait of about 30s", err)
	}

	tokens := flow.NewRateLimiter(rdb, flow.RateLimitConfig{Name: "tpm", TPM: 100})
	if err := tokens.Before(ctx, 1); err != nil {
		t.Fatal(err)
	}
	tokens.After(ctx, 120, nil)
	if err := tokens.Before(ctx, 1); !errors.As(err, &wait) {
		t.Fatalf("past the TPM: %v, want a wait", err)
	}
}
