// Package insights is the battery insights engine: the built-in rules
// analytics and the LLM providers that build on it.
package insights

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// Request is what the process-insights step asks of an engine.
type Request struct {
	SystemID          string
	Snapshot          bms.Snapshot
	CustomPrompt      string
	ContextWindowDays int
	MaxIterations     int
	FullContextMode   bool
	// ModelOverride is the model for this request instead of the
	// provider's default (Gemini only); empty: the default.
	ModelOverride string
	// Now is the end of the context window; zero means time.Now().
	Now time.Time
	// Progress, when set, is told of each model turn and tool call as it
	// happens (the job's progress events). An error it returns stops the
	// run: the store that records progress failed. Nil: not reported.
	Progress func(ctx context.Context, ev Progress) error
}

// Progress is one progress event in the BMS app's shape: Type is
// status | tool_call | tool_response | ai_response | iteration | error.
type Progress struct {
	Type string         `json:"type" bson:"type"`
	Data map[string]any `json:"data" bson:"data"`
}

// Progress event types (the BMS app's).
const (
	ProgressStatus       = "status"
	ProgressToolCall     = "tool_call"
	ProgressToolResponse = "tool_response"
	ProgressAIResponse   = "ai_response"
	ProgressIteration    = "iteration"
	ProgressError        = "error"
)

// report sends ev to req.Progress when there is one.
func (req Request) report(ctx context.Context, typ string, data map[string]any) error {
	if req.Progress == nil {
		return nil
	}
	return req.Progress(ctx, Progress{Type: typ, Data: data})
}

// Finding is one observation with its severity.
type Finding struct {
	Severity  string  `json:"severity" bson:"severity"` // critical | warning | info
	Code      string  `json:"code" bson:"code"`
	Message   string  `json:"message" bson:"message"`
	Value     float64 `json:"value" bson:"value"`
	Threshold float64 `json:"threshold" bson:"threshold"`
}

// ContextSummary says what history was analysed.
type ContextSummary struct {
	Records    int       `json:"records" bson:"records"`
	WindowDays int       `json:"windowDays" bson:"windowDays"`
	From       time.Time `json:"from" bson:"from"`
	To         time.Time `json:"to" bson:"to"`
}

// Result is the output of an engine, stored as the job's result.
type Result struct {
	HealthScore    float64        `json:"healthScore" bson:"healthScore"`
	Status         string         `json:"status" bson:"status"` // Normal | Warning | Critical
	Findings       []Finding      `json:"findings" bson:"findings"`
	Metrics        map[string]any `json:"metrics" bson:"metrics"`
	ContextSummary ContextSummary `json:"contextSummary" bson:"contextSummary"`
	Provider       string         `json:"provider" bson:"provider"` // rules | gemini
	Markdown       string         `json:"markdown" bson:"markdown"`
	// Turns and ToolCalls count the model's turns and tool calls (0 for
	// rules); Model is the model that answered.
	Turns     int    `json:"turns" bson:"turns"`
	ToolCalls int    `json:"toolCalls" bson:"toolCalls"`
	Model     string `json:"model,omitempty" bson:"model,omitempty"`
}

// Engine produces insights for one request.
type Engine interface {
	Generate(ctx context.Context, req Request) (*Result, error)
}

// ProviderError is a failure of an LLM provider's API. StatusCode is the
// HTTP status (0 when none was received); RetryAfter is the delay the
// provider asked for (Retry-After header or google.rpc.RetryInfo), 0 when
// none. The workload classifies it: 429 rate limit, 5xx transient,
// 400/401/403/404 no retry.
type ProviderError struct {
	StatusCode int
	RetryAfter time.Duration
	Err        error
}

func (e *ProviderError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("provider: HTTP %d", e.StatusCode)
	}
	return fmt.Sprintf("provider: HTTP %d: %v", e.StatusCode, e.Err)
}

func (e *ProviderError) Unwrap() error { return e.Err }

// What the provider's failure means for a retry, said where it is made
// (the runner reads these methods, never the message).

// RateLimited reports a rate limit or an exhausted quota (HTTP 429, or a
// message that says so under a code that is neither Permanent nor
// Temporary) with the delay the provider named (Retry-After, RetryInfo; 0:
// none).
func (e *ProviderError) RateLimited() (time.Duration, bool) {
	if e.StatusCode == 429 {
		return e.RetryAfter, true
	}
	if e.Permanent() || e.Temporary() {
		return 0, false
	}
	if e.rateLimitText() {
		return e.RetryAfter, true
	}
	return 0, false
}

// rateLimitText reports a message that says rate limit or quota (the
// provider's words for it, whatever the code).
func (e *ProviderError) rateLimitText() bool {
	msg := strings.ToLower(e.Error())
	return strings.Contains(msg, "rate limit") || strings.Contains(msg, "quota") || strings.Contains(msg, "resource_exhausted")
}

// Temporary reports a server-side failure (HTTP 5xx) that a later call
// may not meet.
func (e *ProviderError) Temporary() bool { return e.StatusCode >= 500 }

// Permanent reports a request the provider refuses as such (HTTP 400,
// 401, 403, 404): the same call would be refused again.
func (e *ProviderError) Permanent() bool {
	switch e.StatusCode {
	case 400, 401, 403, 404:
		return true
	}
	return false
}
