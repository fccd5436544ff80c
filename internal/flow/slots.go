package flow

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/outage"
)

// SlotsConfig configures Slots (SYSTEM_CONCURRENCY).
type SlotsConfig struct {
	// Limit is how many runs of one system may be in process-insights at
	// once across every process; 0: no limit.
	Limit int
	// Lease is how long a slot is held without a renewal: a worker killed
	// holding one blocks its system no longer than that. 0: DefaultLease.
	Lease time.Duration
	// Poll is how soon a run that found no slot looks again. 0:
	// DefaultPoll.
	Poll time.Duration
}

// Defaults of SlotsConfig.
const (
	DefaultLease = 30 * time.Second
	DefaultPoll  = 2 * time.Second
)

// Slots limits the live process-insights of each system, shared by every
// process on the same Redis. Slots are leases (renewed while the step
// runs), and the runs waiting for one get it in priority order, then in
// the order they first asked.
type Slots struct {
	rdb redis.UniversalClient
	cfg SlotsConfig
}

// NewSlots returns the system slots on rdb.
func NewSlots(rdb redis.UniversalClient, cfg SlotsConfig) *Slots {
	cfg.Lease = cmp.Or(cfg.Lease, DefaultLease)
	cfg.Poll = cmp.Or(cfg.Poll, DefaultPoll)
	return &Slots{rdb: rdb, cfg: cfg}
}

// acquireScript: KEYS holders zset (score: lease end), waiters zset (score:
// the order of service), seen hash (waiter → last ask); ARGV lease ms,
// limit, holder, order, stale after ms. Returns 1 when the holder has a
// slot. The time is Redis's.
var acquireScript = redis.NewScript(`
local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local leaseEnd = now + tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], leaseEnd, ARGV[3])
  return 1
end
-- Waiters that stopped asking (cancelled, crashed) lose their place.
local seen = redis.call('HGETALL', KEYS[3])
for i = 1, #seen, 2 do
  if tonumber(seen[i+1]) < now - tonumber(ARGV[5]) then
    redis.call('ZREM', KEYS[2], seen[i]); redis.call('HDEL', KEYS[3], seen[i])
  end
end
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], now)
local free = tonumber(ARGV[2]) - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[3])
if free > 0 and rank < free then
  redis.call('ZREM', KEYS[2], ARGV[3]); redis.call('HDEL', KEYS[3], ARGV[3])
  redis.call('ZADD', KEYS[1], leaseEnd, ARGV[3])
  return 1
end
return 0`)

// renewScript extends a held slot's lease from Redis's time: KEYS holders;
// ARGV lease ms, holder.
var renewScript = redis.NewScript(`
local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), ARGV[2])`)

func (s *Slots) keys(systemID string) []string {
	k := "insights:{system:" + systemID + "}" // one Redis Cluster slot for the script's keys
	return []string{k + ":holders", k + ":waiters", k + ":seen"}
}

// Acquire takes a slot of systemID for holder (the run's eventId), or puts
// it in line: false, with how soon to ask again. Higher priority is served
// first; among equals, the one that asked first.
func (s *Slots) Acquire(ctx context.Context, systemID, holder string, priority int) (bool, time.Duration, error) {
	if s.cfg.Limit <= 0 {
		return true, 0, nil
	}
	now := time.Now()
	// Order of service: priority (0–10, higher first), then first ask.
	order := float64(10-priority)*1e13 + float64(now.UnixMilli())
	staleAfter := 3*s.cfg.Poll + 10*time.Second
	got, err := acquireScript.Run(ctx, s.rdb, s.keys(systemID), s.cfg.Lease.Milliseconds(),
		s.cfg.Limit, holder, order, staleAfter.Milliseconds()).Int()
	if err != nil {
		// Redis down or loading its data: the service's outage, not the run's.
		return false, 0, outage.Mark(ctx, outage.Redis, fmt.Errorf("system slots of %s: %w", systemID, err))
	}
	return got == 1, s.cfg.Poll, nil
}

// Renew extends holder's lease while its step runs.
func (s *Slots) Renew(ctx context.Context, systemID, holder string) error {
	if s.cfg.Limit <= 0 {
		return nil
	}
	return renewScript.Run(ctx, s.rdb, s.keys(systemID)[:1], s.cfg.Lease.Milliseconds(), holder).Err()
}

// Release gives holder's slot back.
func (s *Slots) Release(ctx context.Context, systemID, holder string) error {
	if s.cfg.Limit <= 0 {
		return nil
	}
	return s.rdb.ZRem(ctx, s.keys(systemID)[0], holder).Err()
}

// hold keeps holder's lease renewed until the returned stop is called.
func (s *Slots) hold(ctx context.Context, systemID, holder string) (stop func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(s.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_ = s.Renew(ctx, systemID, holder)
			}
		}
	}()
	return func() { cancel(); <-done }
}
