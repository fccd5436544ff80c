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
	"time"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
	"github.com/hibiken/asynq"
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
	Logger     *slog.Logger
}

// Completed handles insights-completed: it updates the system's
// lastInsights and calls the completion webhook. A failure is retried by
// asynq on the backoff schedule; both actions are idempotent.
type Completed struct{ cfg CompletedConfig }

// NewCompleted returns the follow-up handler.
func NewCompleted(cfg CompletedConfig) *Completed {
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 15 * time.Second}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Completed{cfg: cfg}
}

// ProcessTask implements asynq.Handler.
func (c *Completed) ProcessTask(ctx context.Context, t *asynq.Task) error {
	var p tasks.CompletedPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return fmt.Errorf("decode %s payload: %v: %w", tasks.EventInsightsCompleted, err, asynq.SkipRetry)
	}
	attempt, _ := asynq.GetRetryCount(ctx)
	log := c.cfg.Logger.With("eventId", p.EventID, "jobId", p.JobID, "attempt", attempt+1, "step", tasks.EventInsightsCompleted)
	if c.cfg.Systems != nil && p.SystemID != "" {
		if err := c.cfg.Systems.SetLastInsights(ctx, p.SystemID, map[string]any{
			"eventId": p.EventID, "jobId": p.JobID, "healthScore": p.HealthScore, "status": p.Status, "completedAt": p.CompletedAt,
			"hasInsights": p.HasInsights,
		}); errors.Is(err, store.ErrNotFound) {
			// The follow-up never creates a system: one the app has not
			// registered keeps no lastInsights.
			log.Info("no such system: lastInsights not set", "systemId", p.SystemID)
		} else if err != nil {
			log.Warn("lastInsights not updated: retry", "err", err)
			return fmt.Errorf("update system %s: %w", p.SystemID, err)
		}
	}
	if c.cfg.WebhookURL != "" {
		if err := c.post(ctx, t.Payload()); err != nil {
			log.Warn("completion webhook failed: retry", "err", err)
			return err
		}
	}
	log.Info("completion handled")
	return nil
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
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook: HTTP %d", resp.StatusCode)
	}
	return nil
}
