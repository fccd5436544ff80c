// Package flow holds the flow control of the model provider that every
// worker process shares through Redis: the circuit breaker (and, to come,
// the rate limit and per-system concurrency of DESIGN section 4). A run
// that has to wait for it is rescheduled, never failed: the engine returns
// a *WaitError, which the runner turns into a wait that uses no retry
// budget and holds no worker.
package flow

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/outage"
)

// Breaker states.
const (
	Closed   = "closed"
	Open     = "open"
	HalfOpen = "half-open"
)

// Defaults of BreakerConfig (BREAKER_FAILURES, BREAKER_COOLDOWN).
const (
	DefaultBreakerFailures = 5
	DefaultBreakerCooldown = 60 * time.Second
)

// BreakerConfig configures a Breaker.
type BreakerConfig struct {
	// Name keys the breaker in Redis: one per provider. Empty: "model".
	Name string
	// Failures is how many consecutive transient or rate-limit failures
	// open it; 0: the breaker is off (always closed, nothing written).
	Failures int
	// Cooldown is how long it stays open before one trial call. 0:
	// DefaultBreakerCooldown.
	Cooldown time.Duration
}

// Breaker is a circuit breaker shared by every process on the same Redis:
// after Failures consecutive model outages it opens and runs wait instead
// of calling; after Cooldown one run makes a trial call (half-open), whose
// success closes it and whose failure opens it again.
type Breaker struct {
	rdb redis.UniversalClient
	cfg BreakerConfig
	key string
}

// NewBreaker returns the breaker cfg.Name on rdb.
func NewBreaker(rdb redis.UniversalClient, cfg BreakerConfig) *Breaker {
	cfg.Name = cmp.Or(cfg.Name, defaultName)
	cfg.Cooldown = cmp.Or(cfg.Cooldown, DefaultBreakerCooldown)
	return &Breaker{rdb: rdb, cfg: cfg, key: "insights:breaker:" + cfg.Name}
}

// defaultName keys a breaker or a rate limit given no provider's name.
const defaultName = "model"

// BreakerState is what GET /api/breaker answers.
type BreakerState struct {
	State    string     `json:"state"`
	Failures int        `json:"failures"`
	OpenedAt *time.Time `json:"openedAt,omitempty"`
	// RetryAt is when an open breaker lets its trial call through.
	RetryAt *time.Time `json:"retryAt,omitempty"`
}

// The breaker's hash holds failures, openedAt (Unix ms) and trial (the
// Unix ms a half-open trial started). Each change is one script, so
// workers racing on it see one order.
var (
	// allowScript: KEYS[1] the hash; ARGV cooldown (ms). Returns
	// {allowed, state, wait ms}. Every script reads the time of Redis,
	// not of the worker that runs it: the workers' clocks need not agree.
	allowScript = redis.NewScript(`
local opened = tonumber(redis.call('HGET', KEYS[1], 'openedAt') or '0')
if opened == 0 then return {1, 'closed', 0} end
local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cool = tonumber(ARGV[1])
if now < opened + cool then return {0, 'open', opened + cool - now} end
local trial = tonumber(redis.call('HGET', KEYS[1], 'trial') or '0')
if trial > 0 and now < trial + cool then return {0, 'half-open', trial + cool - now} end
redis.call('HSET', KEYS[1], 'trial', now)
return {1, 'half-open', 0}`)
	// failureScript: ARGV threshold. Counts a failure; opens at the
	// threshold, or at once after a failed trial. Returns the failures.
	failureScript = redis.NewScript(`
local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local trial = tonumber(redis.call('HGET', KEYS[1], 'trial') or '0')
local opened = tonumber(redis.call('HGET', KEYS[1], 'openedAt') or '0')
-- A failed trial reopens it; calls already under way when it opened do
-- not stretch its cool-down.
if trial > 0 or (opened == 0 and n >= tonumber(ARGV[1])) then
  local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('HSET', KEYS[1], 'openedAt', now)
  redis.call('HDEL', KEYS[1], 'trial')
end
return n`)
)

// Allow reports whether a model call may go ahead now; when not, how long
// until the breaker lets one through.
func (b *Breaker) Allow(ctx context.Context) (bool, time.Duration, error) {
	if b.cfg.Failures <= 0 {
		return true, 0, nil
	}
	res, err := allowScript.Run(ctx, b.rdb, []string{b.key}, b.cfg.Cooldown.Milliseconds()).Slice()
	if err != nil {
		return false, 0, outage.Mark(ctx, outage.Redis, fmt.Errorf("breaker %s: %w", b.cfg.Name, err))
	}
	allowed, _ := res[0].(int64)
	wait, _ := res[2].(int64)
	return allowed == 1, time.Duration(wait) * time.Millisecond, nil
}

// Success closes the breaker: the provider answered.
func (b *Breaker) Success(ctx context.Context) error {
	if b.cfg.Failures <= 0 {
		return nil
	}
	return b.rdb.Del(ctx, b.key).Err()
}

// Failure counts one model outage (transient or rate limit).
func (b *Breaker) Failure(ctx context.Context) error {
	if b.cfg.Failures <= 0 {
		return nil
	}
	return failureScript.Run(ctx, b.rdb, []string{b.key}, b.cfg.Failures).Err()
}

// endTrial lets another run make the half-open trial call.
func (b *Breaker) endTrial(ctx context.Context) error {
	if b.cfg.Failures <= 0 {
		return nil
	}
	return b.rdb.HDel(ctx, b.key, "trial").Err()
}

// Reset closes the breaker by hand (POST /api/breaker/reset).
func (b *Breaker) Reset(ctx context.Context) error { return b.rdb.Del(ctx, b.key).Err() }

// State reads the breaker.
func (b *Breaker) State(ctx context.Context) (*BreakerState, error) {
	h, err := b.rdb.HGetAll(ctx, b.key).Result()
	if err != nil {
		return nil, outage.Mark(ctx, outage.Redis, fmt.Errorf("breaker %s: %w", b.cfg.Name, err))
	}
	st := &BreakerState{State: Closed}
	st.Failures, _ = strconv.Atoi(h["failures"])
	if ms, _ := strconv.ParseInt(h["openedAt"], 10, 64); ms > 0 {
		opened := time.UnixMilli(ms).UTC()
		retry := opened.Add(b.cfg.Cooldown)
		st.State, st.OpenedAt, st.RetryAt = Open, &opened, &retry
		if trial, _ := strconv.ParseInt(h["trial"], 10, 64); trial > 0 || time.Now().After(retry) {
			st.State = HalfOpen
		}
	}
	return st, nil
}

// WaitError asks the run to wait until Until, for Reason, without using
// its retry budget (the runner reads WaitUntil).
type WaitError struct {
	Reason string
	Until  time.Time
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("waiting until %s: %s", e.Until.UTC().Format(time.RFC3339), e.Reason)
}

// WaitUntil is what the runner reads of a wait.
func (e *WaitError) WaitUntil() (time.Time, string) { return e.Until, e.Reason }

// Control is the flow control a guarded engine applies; nil parts are off.
type Control struct {
	Breaker *Breaker
	Slots   *Slots
}

// Guard wraps an engine with flow control: a run waits for its system's
// slot (Slots), and while the breaker is open it waits instead of calling
// the model; a model outage counts towards opening the breaker and an
// answer closes it.
func Guard(e insights.Engine, c Control) insights.Engine { return &guarded{e: e, c: c} }

type guarded struct {
	e insights.Engine
	c Control
}

// minWait keeps a wait for a trial call already under way from spinning.
const minWait = time.Second

type runKey struct{}

type runInfo struct {
	eventID  string
	priority int
}

// WithRun tells the flow control which run a call belongs to (its eventId
// holds a system's slot and keeps its place in line) and its priority.
func WithRun(ctx context.Context, eventID string, priority int) context.Context {
	return context.WithValue(ctx, runKey{}, runInfo{eventID: eventID, priority: priority})
}

func (g *guarded) Generate(ctx context.Context, req insights.Request) (*insights.Result, error) {
	if run, ok := ctx.Value(runKey{}).(runInfo); ok && g.c.Slots != nil && g.c.Slots.cfg.Limit > 0 && req.SystemID != "" {
		got, poll, err := g.c.Slots.Acquire(ctx, req.SystemID, run.eventID, run.priority)
		if err != nil {
			return nil, err // Redis down: an outage (outage.Of), retried without budget
		}
		if !got {
			return nil, &WaitError{Reason: "another run of system " + req.SystemID + " is being analysed (SYSTEM_CONCURRENCY)",
				Until: time.Now().Add(poll)}
		}
		stop := g.c.Slots.hold(ctx, req.SystemID, run.eventID)
		defer func() {
			stop()
			_ = g.c.Slots.Release(context.WithoutCancel(ctx), req.SystemID, run.eventID)
		}()
	}
	b := g.c.Breaker
	if b == nil {
		return g.e.Generate(ctx, req)
	}
	ok, wait, err := b.Allow(ctx)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &WaitError{Reason: "the model provider's circuit breaker is open", Until: time.Now().Add(max(wait, minWait))}
	}
	res, err := g.e.Generate(ctx, req)
	var waits *WaitError
	switch {
	case err == nil:
		// The answer stands even if Redis fails to record it.
		_ = b.Success(context.WithoutCancel(ctx))
		return res, nil
	case errors.As(err, &waits):
		// A trial that had to wait (the rate limit) proved nothing: let
		// the next run try.
		_ = b.endTrial(context.WithoutCancel(ctx))
	case providerOutage(err):
		// The model's failure stands even if Redis fails to count it: a
		// Redis error joined to it would make it look like Redis's outage.
		_ = b.Failure(context.WithoutCancel(ctx))
	}
	return res, err
}

// providerOutage reports a failure of the provider itself (rate limit, 5xx,
// timeout, lost connection), as its errors say of themselves; a refused
// request or a store outage does not count.
func providerOutage(err error) bool {
	var pe *insights.ProviderError
	if errors.As(err, &pe) {
		_, limited := pe.RateLimited()
		return limited || pe.Temporary()
	}
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
