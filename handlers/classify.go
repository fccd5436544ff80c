package handlers

import (
	"context"
	"errors"
	"net"
	"syscall"
	"time"

	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// outageOf reports the store whose outage err is: one marked by the code
// that called it (outage.Of: Redis in the flow control and the follow-up's
// enqueue), or MongoDB's (a checkpoint not written, a read inside a step
// refused). Such a failure is the service's, never the job's.
func outageOf(err error) (string, bool) {
	if name, ok := outage.Of(err); ok {
		return name, true
	}
	var se *storeErr
	if errors.As(err, &se) || errors.Is(err, store.ErrUnavailable) {
		return outage.MongoDB, true
	}
	return "", false
}

func isRevoke(err error) bool {
	return errors.Is(err, store.ErrCancelled) || errors.Is(err, store.ErrStaleEvent)
}

// What an error says of itself, implemented where it is made (the model
// provider's errors, insights.ProviderError): the runner reads these, never
// an error's text.
type (
	// permanentError is refused as such: retrying cannot help.
	permanentError interface{ Permanent() bool }
	// rateLimitError is a rate limit or an exhausted quota, with the delay
	// the server named (0: none).
	rateLimitError interface {
		RateLimited() (time.Duration, bool)
	}
	// temporaryError is a failure a later call may not meet (a 5xx).
	temporaryError interface{ Temporary() bool }
)

// classify decides what a step failure means: its kind, the delay before
// the next attempt (0: the backoff schedule) and whether it is final (no
// retry).
func (rn *Runner) classify(err error) (kind string, delay time.Duration, final bool) {
	var (
		ra   *RetryAfterError
		perm permanentError
		rl   rateLimitError
		tmp  temporaryError
		ne   net.Error
	)
	switch {
	case errors.Is(err, ErrDoNotRetry), errors.Is(err, tasks.ErrInvalidEvent):
		return store.KindBusiness, 0, true
	case errors.As(err, &ra):
		return store.KindInternal, ra.Delay, false
	case errors.As(err, &perm) && perm.Permanent():
		return store.KindBusiness, 0, true
	case errors.As(err, &rl):
		if d, ok := rl.RateLimited(); ok {
			return store.KindRateLimit, rn.rateLimitDelay(d), false
		}
	}
	switch {
	case errors.As(err, &tmp) && tmp.Temporary(),
		errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout(),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed),
		errors.As(err, new(*net.OpError)):
		return store.KindTransient, rn.cfg.TransientDelay, false
	}
	return store.KindInternal, 0, false
}

func (rn *Runner) rateLimitDelay(d time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return rn.cfg.RateLimitDelay
}
