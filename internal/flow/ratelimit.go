package flow

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/outage"
)

// RateLimitConfig configures a RateLimiter (GEMINI_RPM, GEMINI_TPM).
type RateLimitConfig struct {
	// Name keys the limit in Redis: one per provider. Empty: "model".
	Name string
	// RPM is model calls per minute across every process; 0: no limit.
	RPM int
	// TPM is model tokens per minute, counted from the usage the provider
	// reports; 0: no limit.
	TPM int
	// MaxHold is the longest a call waits in its worker for its turn;
	// a longer wait reschedules the run (a *WaitError). 0: DefaultMaxHold.
	MaxHold time.Duration
}

// DefaultMaxHold is how long a model call may wait in its worker for the
// rate limit before its run is rescheduled instead.
const DefaultMaxHold = 2 * time.Second

// window is the rate limit's sliding window: a minute, and a little more so
// that calls admitted at its two ends never land within one minute of each
// other at the provider.
const window = time.Minute + 250*time.Millisecond

// RateLimiter is the model calls' rate limit shared by every process on the
// same Redis: over any sliding minute at most RPM calls start and at most
// TPM tokens are used, and a 429 pauses every caller for the delay it
// names. It implements insights.CallGate.
type RateLimiter struct {
	rdb redis.UniversalClient
	cfg RateLimitConfig
	key string
}

// NewRateLimiter returns the limit cfg.Name on rdb.
func NewRateLimiter(rdb redis.UniversalClient, cfg RateLimitConfig) *RateLimiter {
	cfg.Name = cmp.Or(cfg.Name, defaultName)
	cfg.MaxHold = cmp.Or(cfg.MaxHold, DefaultMaxHold)
	// One hash tag: the script's keys share a Redis Cluster slot.
	return &RateLimiter{rdb: rdb, cfg: cfg, key: "insights:{ratelimit:" + cfg.Name + "}"}
}

var _ insights.CallGate = (*RateLimiter)(nil)

// reserveScript: KEYS calls zset, tokens zset, pause key; ARGV window ms,
// rpm, tpm, member (the time is Redis's). Admits the call (recording it) or answers
// how long to wait, in ms.
var reserveScript = redis.NewScript(`
local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1])
local pause = redis.call('PTTL', KEYS[3])
if pause > 0 then return pause end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - win)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - win)
local rpm, tpm = tonumber(ARGV[2]), tonumber(ARGV[3])
if rpm > 0 and redis.call('ZCARD', KEYS[1]) >= rpm then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(tonumber(oldest[2]) + win - now, 1)
end
if tpm > 0 then
  local used = 0
  local all = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do used = used + tonumber(string.match(all[i], '^(%d+):')) end
  if used >= tpm and #all > 0 then return math.max(tonumber(all[2]) + win - now, 1) end
end
if rpm > 0 then redis.call('ZADD', KEYS[1], now, ARGV[4]) end
redis.call('PEXPIRE', KEYS[1], win)
return 0`)

// usedScript records a call's tokens at Redis's time: KEYS tokens zset;
// ARGV member ("tokens:id"), window ms.
var usedScript = redis.NewScript(`
local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)

// Before admits one model call: at once when the limit allows (and no 429
// has paused the callers), after a short wait in the worker (MaxHold),
// else, for a run's first call, with a *WaitError that reschedules the run.
// A later turn waits in its worker for as long as it takes: rescheduling
// would throw away the turns its conversation has made.
func (l *RateLimiter) Before(ctx context.Context, turn int) error {
	hold := l.cfg.MaxHold
	if turn > 1 {
		hold = window
	}
	for {
		wait, err := reserveScript.Run(ctx, l.rdb, []string{l.key + ":calls", l.key + ":tokens", l.key + ":pause"},
			window.Milliseconds(), l.cfg.RPM, l.cfg.TPM, uuid.NewString()).Int64()
		if err != nil {
			return outage.Mark(ctx, outage.Redis, fmt.Errorf("rate limit %s: %w", l.cfg.Name, err))
		}
		if wait == 0 {
			return nil
		}
		d := time.Duration(wait) * time.Millisecond
		if d > hold {
			return &WaitError{Reason: "the model provider's rate limit", Until: time.Now().Add(d)}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
	}
}

// After records the tokens a call used and, for a 429, pauses every
// caller for the delay the provider named.
func (l *RateLimiter) After(ctx context.Context, tokens int, callErr error) {
	if tokens > 0 && l.cfg.TPM > 0 {
		member := fmt.Sprintf("%d:%s", tokens, uuid.NewString())
		_ = usedScript.Run(ctx, l.rdb, []string{l.key + ":tokens"}, member, window.Milliseconds()).Err()
	}
	var pe *insights.ProviderError
	if errors.As(callErr, &pe) {
		if d, limited := pe.RateLimited(); limited && d > 0 {
			_ = l.rdb.Set(ctx, l.key+":pause", "1", d).Err()
		}
	}
}
