package handlers

import (
	"context"
	"errors"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

func isRevoke(err error) bool {
	return errors.Is(err, store.ErrCancelled) || errors.Is(err, store.ErrStaleEvent)
}

// classify decides what a step failure means: its kind, the delay before
// the next attempt (0: the backoff schedule) and whether it is final (no
// retry).
func (rn *Runner) classify(err error) (kind string, delay time.Duration, final bool) {
	var ra *tasks.RetryAfterError
	var pe *insights.ProviderError
	var ne net.Error
	msg := strings.ToLower(err.Error())
	switch {
	case errors.Is(err, tasks.ErrDoNotRetry), errors.Is(err, tasks.ErrInvalidEvent):
		return tasks.KindBusiness, 0, true
	case errors.As(err, &ra):
		return tasks.KindInternal, ra.Delay, false
	case errors.As(err, &pe) && pe.StatusCode == 429:
		return tasks.KindRateLimit, rn.rateLimitDelay(pe.RetryAfter), false
	case errors.As(err, &pe) && pe.StatusCode >= 500:
		return tasks.KindTransient, rn.cfg.TransientDelay, false
	case errors.As(err, &pe) && (pe.StatusCode == 400 || pe.StatusCode == 401 || pe.StatusCode == 403 || pe.StatusCode == 404):
		return tasks.KindBusiness, 0, true
	case strings.Contains(msg, "rate limit") || strings.Contains(msg, "quota") || strings.Contains(msg, "resource_exhausted"):
		var d time.Duration
		if pe != nil {
			d = pe.RetryAfter
		}
		return tasks.KindRateLimit, rn.rateLimitDelay(d), false
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout(),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed),
		errors.As(err, new(*net.OpError)):
		return tasks.KindTransient, rn.cfg.TransientDelay, false
	}
	return tasks.KindInternal, 0, false
}

func (rn *Runner) rateLimitDelay(d time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return rn.cfg.RateLimitDelay
}
