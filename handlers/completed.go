package handlers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// SystemUpdater records a system's latest insights.
type SystemUpdater interface {
	SetLastInsights(ctx context.Context, systemID string, v map[string]any) error
}

// CompletedConfig configures the insights-completed handler.
type CompletedConfig struct {
	Systems SystemUpdater
	// WebhookURL receives the completion as a signed POST. Empty: none.
	WebhookURL string
	// WebhookSecret signs the body (X-Signature-256: sha256=<hex HMAC>).
	WebhookSecret string
	// HTTPClient posts the webhook. Nil: a client with a 15 s timeout.
	HTTPClient *http.Client
	// MaxRetries is the follow-up's retry budget (MAX_RETRIES): failures
	// of the webhook before the task is archived; 0: none. The handler
	// keeps it, not asynq, so that a store outage (RetryWithoutBudget)
	// never uses it.
	MaxRetries int
	// TransientDelay is the wait before the next attempt after the store
	// failed to set lastInsights; such a retry does not use the follow-up's
	// retry budget (RetryWithoutBudget), so a store outage never
	// dead-letters it. 0: DefaultTransientDelay.
	TransientDelay time.Duration
	Logger         *slog.Logger
}

// Completed handles insights-completed: it updates the system's
// lastInsights and calls the completion webhook. Both actions are
// idempotent, so a failure is retried: a store failure after
// TransientDelay without using the retry budget, a webhook failure on the
// backoff schedule (a 429 after its Retry-After), except a webhook 4xx
// that retrying cannot fix, which archives the task.
type Completed struct{ cfg CompletedConfig }

// NewCompleted returns the follow-up handler.
func NewCompleted(cfg CompletedConfig) *Completed {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 15 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TransientDelay <= 0 {
		cfg.TransientDelay = DefaultTransientDelay
	}
	return &Completed{cfg: cfg}
}

// ProcessTask implements asynq.Handler.
func (c *Completed) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p tasks.CompletedPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("decode %s payload: %v: %w", tasks.EventInsightsCompleted, err, asynq.SkipRetry)
	}
	// asynq's retried counts this follow-up's failures alone (a store
	// outage's retry is no failure).
	retried, _ := asynq.GetRetryCount(ctx)
	log := c.cfg.Logger.With("eventId", p.EventID, "jobId", p.JobID, "attempt", retried+1, "step", tasks.EventInsightsCompleted)
	if c.cfg.Systems != nil && p.SystemID != "" {
		if err := c.cfg.Systems.SetLastInsights(ctx, p.SystemID, map[string]any{
			"eventId": p.EventID, "jobId": p.JobID, "healthScore": p.HealthScore, "status": p.Status, "completedAt": p.CompletedAt,
			"hasInsights": p.HasInsights,
		}); errors.Is(err, store.ErrNotFound) {
			// The follow-up never creates a system: one the app has not
			// registered keeps no lastInsights.
			log.Info("no such system: lastInsights not set", "systemId", p.SystemID)
		} else if err != nil {
			log.Warn("lastInsights not updated, store unavailable: retry", "err", err, "in", c.cfg.TransientDelay)
			return RetryWithoutBudget(c.cfg.TransientDelay, fmt.Errorf("update system %s: %w", p.SystemID, err))
		}
	}
	if c.cfg.WebhookURL != "" {
		if err := c.post(ctx, t.Payload()); errors.Is(err, asynq.SkipRetry) {
			log.Warn("completion webhook refused: archived", "err", err)
			return err
		} else if err != nil {
			if retried >= c.cfg.MaxRetries {
				log.Error("completion webhook failed, retry budget spent: archived", "err", err, "maxRetries", c.cfg.MaxRetries)
				return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
			}
			log.Warn("completion webhook failed: retry", "err", err)
			return err
		}
	}
	log.Info("completion handled")
	return nil
}

// NewCompletedTask builds the insights-completed follow-up of a run: on
// tasks.FollowUpQueue (low), with task id insights-completed:<eventId>,
// so that a second send of the same follow-up is a conflict
// (asynq.ErrTaskIDConflict), not a duplicate.
func NewCompletedTask(p tasks.CompletedPayload, retention time.Duration) (*asynq.Task, []asynq.Option, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %s: %w", tasks.EventInsightsCompleted, err)
	}
	return asynq.NewTask(tasks.EventInsightsCompleted, b), []asynq.Option{asynq.Queue(tasks.FollowUpQueue),
		asynq.TaskID(tasks.FollowUpTaskIDPrefix + p.EventID), asynq.MaxRetry(tasks.AsynqMaxRetry), asynq.Retention(retention)}, nil
}

// Sign returns the X-Signature-256 value of body for secret.
func Sign(secret string, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

func (c *Completed) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.WebhookURL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook request: %v: %w", err, asynq.SkipRetry)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Event-Name", tasks.EventInsightsCompleted)
	req.Header.Set("X-Signature-256", Sign(c.cfg.WebhookSecret, body))
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	switch {
	case code/100 == 2:
		return nil
	case code == http.StatusTooManyRequests:
		err := fmt.Errorf("webhook: HTTP %d", code)
		if d, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
			return RetryAfter(d, err)
		}
		return err
	case code/100 == 4 && code != http.StatusRequestTimeout && code != http.StatusTooEarly:
		// The receiver refused this completion (bad URL, auth, payload):
		// the same request would be refused again.
		return fmt.Errorf("webhook: HTTP %d, not retried: %w", code, asynq.SkipRetry)
	default:
		return fmt.Errorf("webhook: HTTP %d", code)
	}
}

// retryAfter reads a Retry-After header given in seconds (the HTTP-date
// form is left to the backoff schedule).
func retryAfter(v string) (time.Duration, bool) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}
