package insights

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/genai"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/tasks"
)

// DefaultGeminiModel is the model when GeminiConfig.Model is empty.
const DefaultGeminiModel = "gemini-2.5-flash"

// GeminiConfig configures the Gemini provider.
type GeminiConfig struct {
	APIKey string
	Model  string // default gemini-2.5-flash
	// BaseURL (GEMINI_BASE_URL): a proxy or a test server; empty = Google's.
	BaseURL    string
	HTTPClient *http.Client
	// Gate is told of each model call (the shared rate limit). Nil: none.
	Gate CallGate
}

// CallGate admits each model call and is told what it cost: Before may hold
// a call back, or refuse it with an error the runner reads (a wait); turn
// is the call's place in its run's conversation (1: the first, before which
// a run loses nothing by waiting elsewhere). After gets the tokens the
// provider reported (0: none) and the call's error.
type CallGate interface {
	Before(ctx context.Context, turn int) error
	After(ctx context.Context, tokens int, err error)
}

// Gemini is the LLM provider: a tool-calling loop over the rules engine's
// analyses, with the rules result as its base and fallback.
type Gemini struct {
	cfg   GeminiConfig
	rules *Rules
	src   HistorySource
	http  *http.Client
}

// NewGemini returns the provider. rules nil: NewRules(src).
func NewGemini(cfg GeminiConfig, rules *Rules, src HistorySource) *Gemini {
	if cfg.Model == "" {
		cfg.Model = DefaultGeminiModel
	}
	if rules == nil {
		rules = NewRules(src)
	}
	base := cfg.HTTPClient
	if base == nil {
		base = &http.Client{Timeout: 2 * time.Minute}
	}
	hc := *base
	rt := hc.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	hc.Transport = headerCapture{base: rt}
	return &Gemini{cfg: cfg, rules: rules, src: src, http: &hc}
}

// headerCapture records the Retry-After header of error responses into the
// request's context slot: the genai SDK hands back only the error body.
type headerCapture struct{ base http.RoundTripper }

type retryAfterSlotKey struct{}

type retryAfterSlot struct {
	mu sync.Mutex
	v  string
}

func (h headerCapture) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.base.RoundTrip(r)
	if resp != nil && resp.StatusCode >= 400 {
		if slot, ok := r.Context().Value(retryAfterSlotKey{}).(*retryAfterSlot); ok {
			slot.mu.Lock()
			slot.v = resp.Header.Get("Retry-After")
			slot.mu.Unlock()
		}
	}
	return resp, err
}

const geminiSystemInstruction = `You are a battery management system (BMS) analyst for off-grid solar systems.
You receive a battery's current snapshot, its anonymised profile and a rule-based analysis of its history.
Use the tools to fetch more data when it helps. Answer in Markdown with exactly these sections:
## KEY FINDINGS, ## TREND ANALYSIS, ## RECOMMENDATIONS.
Prefix each recommendation with 🔴 (urgent), 🟡 (soon) or 🟢 (maintenance), give numeric targets,
and state energy in kWh. Never invent measurements: use the numbers given or returned by the tools.`

// Generate implements Engine.
func (g *Gemini) Generate(ctx context.Context, req Request) (*Result, error) {
	a, err := g.rules.Analyze(ctx, req)
	if err != nil {
		return nil, err
	}
	res := a.Result()
	res.Provider = "gemini"

	slot := &retryAfterSlot{}
	ctx = context.WithValue(ctx, retryAfterSlotKey{}, slot)
	client, err := genai.NewClient(ctx, &genai.ClientConfig{
		APIKey:      g.cfg.APIKey,
		Backend:     genai.BackendGeminiAPI,
		HTTPClient:  g.http,
		HTTPOptions: genai.HTTPOptions{BaseURL: g.cfg.BaseURL},
	})
	if err != nil {
		return nil, fmt.Errorf("gemini: client: %w", err)
	}

	maxIter := req.MaxIterations
	if maxIter <= 0 {
		maxIter = tasks.DefaultMaxIterations
	}
	tools := &geminiTools{g: g, a: a, req: req}
	prompt, err := g.prompt(a, req)
	if err != nil {
		return nil, err
	}
	contents := []*genai.Content{genai.NewContentFromText(prompt, genai.RoleUser)}
	cfg := &genai.GenerateContentConfig{
		SystemInstruction: genai.NewContentFromText(geminiSystemInstruction, genai.RoleUser),
		Tools:             []*genai.Tool{{FunctionDeclarations: toolDeclarations()}},
		Temperature:       genai.Ptr[float32](0.2),
	}
	model := g.cfg.Model
	if req.ModelOverride != "" {
		model = req.ModelOverride
	}
	var text string
	turns, calls := 0, 0
	for turns < maxIter {
		turns++
		if turns == maxIter {
			// Last allowed turn: ask for the answer, no more tool calls.
			cfg.ToolConfig = &genai.ToolConfig{FunctionCallingConfig: &genai.FunctionCallingConfig{Mode: genai.FunctionCallingConfigModeNone}}
		}
		// messageCount and promptLength are what the app's progress display
		// reads of a turn.
		if err := req.report(ctx, ProgressIteration, map[string]any{"iteration": turns, "maxIterations": maxIter, "model": model,
			"messageCount": len(contents), "promptLength": promptLength(contents)}); err != nil {
			return nil, err
		}
		if gate := g.cfg.Gate; gate != nil {
			if err := gate.Before(ctx, turns); err != nil {
				return nil, err
			}
		}
		resp, err := client.Models.GenerateContent(ctx, model, contents, cfg)
		if err != nil {
			err = g.classify(ctx, err, slot)
		}
		if gate := g.cfg.Gate; gate != nil {
			tokens := 0
			if err == nil && resp.UsageMetadata != nil {
				tokens = int(resp.UsageMetadata.TotalTokenCount)
			}
			gate.After(context.WithoutCancel(ctx), tokens, err)
		}
		if err != nil {
			return nil, err
		}
		fcs := resp.FunctionCalls()
		if len(fcs) == 0 {
			text = resp.Text()
			if err := req.report(ctx, ProgressAIResponse, map[string]any{"type": "final_answer", "iteration": turns, "length": len(text)}); err != nil {
				return nil, err
			}
			break
		}
		if len(resp.Candidates) > 0 && resp.Candidates[0].Content != nil {
			contents = append(contents, resp.Candidates[0].Content)
		}
		var parts []*genai.Part
		for _, fc := range fcs {
			calls++
			// tool and toolName: the app's two readers use one each.
			if err := req.report(ctx, ProgressToolCall, map[string]any{"tool": fc.Name, "toolName": fc.Name, "parameters": fc.Args, "iteration": turns}); err != nil {
				return nil, err
			}
			start := time.Now()
			out, err := tools.call(ctx, fc.Name, fc.Args)
			if err != nil {
				var herr *historyError
				if errors.As(err, &herr) {
					return nil, herr.err // the store failed: the caller classifies it
				}
				out = map[string]any{"error": err.Error()}
			}
			resp := map[string]any{"tool": fc.Name, "toolName": fc.Name, "success": err == nil, "dataSize": jsonSize(out),
				"durationMs": time.Since(start).Milliseconds(), "iteration": turns}
			if err != nil {
				resp["error"] = err.Error()
			}
			if err := req.report(ctx, ProgressToolResponse, resp); err != nil {
				return nil, err
			}
			p := genai.NewPartFromFunctionResponse(fc.Name, out)
			p.FunctionResponse.ID = fc.ID
			parts = append(parts, p)
		}
		contents = append(contents, genai.NewContentFromParts(parts, genai.RoleUser))
	}
	res.Metrics["llm"] = map[string]any{"model": model, "turns": turns, "toolCalls": calls, "answered": text != ""}
	res.Turns, res.ToolCalls, res.Model = turns, calls, model
	if strings.TrimSpace(text) != "" {
		res.Markdown = text
	}
	return res, nil
}

// classify maps an SDK error to what the workload's retry policy reads:
// *ProviderError for HTTP answers, the context's or the network's error
// wrapped with %w otherwise.
func (g *Gemini) classify(ctx context.Context, err error, slot *retryAfterSlot) error {
	var apiErr genai.APIError
	if errors.As(err, &apiErr) {
		pe := &ProviderError{StatusCode: apiErr.Code, Err: err}
		slot.mu.Lock()
		h := slot.v
		slot.mu.Unlock()
		if d, ok := ParseRetryAfter(h, time.Now()); ok {
			pe.RetryAfter = d
		} else if d, ok := RetryInfoDelay(apiErr.Details); ok {
			pe.RetryAfter = d
		}
		return pe
	}
	var pap *genai.APIError
	if errors.As(err, &pap) && pap != nil {
		return &ProviderError{StatusCode: pap.Code, Err: err}
	}
	if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
		return fmt.Errorf("gemini: %w (%v)", ctx.Err(), err)
	}
	if (&ProviderError{Err: err}).rateLimitText() {
		// A quota or rate limit the SDK reports without an HTTP answer.
		return &ProviderError{Err: fmt.Errorf("gemini: %w", err)}
	}
	return fmt.Errorf("gemini: %w", err)
}

// ParseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func ParseRetryAfter(h string, now time.Time) (time.Duration, bool) {
	h = strings.TrimSpace(h)
	if h == "" {
		return 0, false
	}
	if s, err := strconv.ParseFloat(h, 64); err == nil && s >= 0 {
		return time.Duration(s * float64(time.Second)), true
	}
	if t, err := http.ParseTime(h); err == nil {
		return max(t.Sub(now), 0), true
	}
	return 0, false
}

// RetryInfoDelay finds the google.rpc.RetryInfo retryDelay ("30s",
// "1.5s") in an error body's details.
func RetryInfoDelay(details []map[string]any) (time.Duration, bool) {
	for _, d := range details {
		if t, _ := d["@type"].(string); !strings.HasSuffix(t, "google.rpc.RetryInfo") {
			continue
		}
		switch v := d["retryDelay"].(type) {
		case string:
			if dur, err := time.ParseDuration(v); err == nil {
				return dur, true
			}
		case map[string]any: // {seconds, nanos} form
			s, _ := v["seconds"].(float64)
			if ss, ok := v["seconds"].(string); ok {
				s, _ = strconv.ParseFloat(ss, 64)
			}
			n, _ := v["nanos"].(float64)
			return time.Duration(s*float64(time.Second) + n), true
		}
	}
	return 0, false
}

// AnonymousProfile is the system profile as sent to the model: the id
// hashed, the location rounded to 0.1° (about 10 km), no name.
func AnonymousProfile(sys *bms.System, systemID string) map[string]any {
	sum := sha256.Sum256([]byte(systemID))
	p := map[string]any{"systemRef": hex.EncodeToString(sum[:6])}
	if sys == nil {
		return p
	}
	p["chemistry"] = sys.Chemistry
	p["nominalVoltage"] = sys.Voltage
	p["capacityAh"] = sys.Capacity
	p["capacityKWh"] = round(KWh(sys.Capacity, sys.Voltage), 2)
	p["latitude"] = math.Round(sys.Latitude*10) / 10
	p["longitude"] = math.Round(sys.Longitude*10) / 10
	p["maxAmpsSolarCharging"] = sys.MaxAmpsSolarCharging
	p["maxAmpsGeneratorCharging"] = sys.MaxAmpsGeneratorCharging
	return p
}

func (g *Gemini) prompt(a *Analysis, req Request) (string, error) {
	snap := req.Snapshot
	snap.HardwareSystemID = "" // identifying
	rba := map[string]any{
		"healthScore": a.HealthScore, "status": a.Status, "findings": a.Findings, "deductions": a.Deductions,
		"snapshot": a.Snapshot, "trends": a.History.Trends,
		"anomalyCount": a.History.AnomalyCount, "socJumpCount": a.History.SOCJumpCount,
	}
	if a.History.Energy.CoveredDays > 0 { // no power in the window: no energy, rather than 0 kWh
		rba["energy"] = a.History.Energy.summary()
	}
	ctxJSON, err := json.Marshal(map[string]any{
		"system":            AnonymousProfile(a.System, req.SystemID),
		"snapshot":          snap,
		"contextSummary":    a.Context,
		"ruleBasedAnalysis": rba,
	})
	if err != nil {
		return "", fmt.Errorf("gemini: encode context: %w", err)
	}
	var b strings.Builder
	b.WriteString("Battery data (JSON). The rule-based analysis is a fallback: confirm, refine or correct it.\n")
	b.Write(ctxJSON)
	if req.CustomPrompt != "" {
		b.WriteString("\n\nThe user asks (answer this first, within the three sections):\n")
		b.WriteString(req.CustomPrompt)
	}
	return b.String(), nil
}

func (e EnergyBalance) summary() EnergyBalance {
	e.PerDay = nil
	return e
}

// promptLength is the characters of text the model is sent in a turn:
// every text part, and the JSON of every tool answer.
func promptLength(contents []*genai.Content) int {
	n := 0
	for _, c := range contents {
		for _, p := range c.Parts {
			n += len(p.Text)
			if p.FunctionResponse != nil {
				n += jsonSize(p.FunctionResponse.Response)
			}
		}
	}
	return n
}

// jsonSize is the bytes of v's JSON: a tool answer's dataSize.
func jsonSize(v any) int {
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return len(b)
}
