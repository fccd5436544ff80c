package insights

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// fakeGemini speaks the generateContent REST shape.
type fakeGemini struct {
	t *testing.T
	// model is the model the requests must name; "": gemini-2.5-flash.
	model   string
	mu      sync.Mutex
	reqs    []map[string]any
	handler func(n int, body map[string]any, w http.ResponseWriter)
}

func (f *fakeGemini) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	model := f.model
	if model == "" {
		model = "gemini-2.5-flash"
	}
	if !strings.HasSuffix(r.URL.Path, "/models/"+model+":generateContent") {
		f.t.Errorf("unexpected path %s", r.URL.Path)
	}
	if r.Header.Get("x-goog-api-key") != "test-key" {
		f.t.Errorf("api key header %q", r.Header.Get("x-goog-api-key"))
	}
	b, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(b, &body)
	f.mu.Lock()
	f.reqs = append(f.reqs, body)
	n := len(f.reqs)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	f.handler(n, body, w)
}

func functionCallResponse(calls ...map[string]any) string {
	var parts []any
	for _, c := range calls {
		parts = append(parts, map[string]any{"functionCall": c})
	}
	b, _ := json.Marshal(map[string]any{"candidates": []any{map[string]any{"content": map[string]any{"role": "model", "parts": parts}}}})
	return string(b)
}

func textResponse(s string) string {
	b, _ := json.Marshal(map[string]any{"candidates": []any{map[string]any{"content": map[string]any{"role": "model", "parts": []any{map[string]any{"text": s}}}, "finishReason": "STOP"}}})
	return string(b)
}

func geminiFixture(t *testing.T, h func(n int, body map[string]any, w http.ResponseWriter)) (*Gemini, *fakeGemini, Request) {
	f := &fakeGemini{t: t, handler: h}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	sys, recs, now := testSystemHistory()
	src := NewMemorySource([]bms.System{sys}, recs)
	g := NewGemini(GeminiConfig{APIKey: "test-key", BaseURL: srv.URL, HTTPClient: &http.Client{Timeout: 5 * time.Second}}, nil, src)
	req := Request{SystemID: sys.ID, Snapshot: testSnapshot(), ContextWindowDays: 30, MaxIterations: 5, Now: now, CustomPrompt: "Is my battery ready for winter?"}
	return g, f, req
}

func TestGeminiToolLoop(t *testing.T) {
	final := "## KEY FINDINGS\n- ok\n## TREND ANALYSIS\n- flat\n## RECOMMENDATIONS\n- 🟢 keep 2.0 kWh/day"
	g, f, req := geminiFixture(t, func(n int, body map[string]any, w http.ResponseWriter) {
		switch n {
		case 1:
			io.WriteString(w, functionCallResponse(
				map[string]any{"name": ToolSystemAnalytics, "args": map[string]any{}},
				map[string]any{"name": ToolRequestBMSData, "args": map[string]any{"metric": "soc", "days": 3, "granularity": "daily"}}))
		case 2:
			io.WriteString(w, functionCallResponse(
				map[string]any{"name": ToolPredictTrends, "args": map[string]any{"metric": "imbalanceMv", "daysAhead": 30}},
				map[string]any{"name": ToolUsagePatterns, "args": map[string]any{}},
				map[string]any{"name": ToolEnergyBudget, "args": map[string]any{"additionalLoadW": 100, "hoursPerDay": 5}}))
		default:
			io.WriteString(w, textResponse(final))
		}
	})
	res, err := g.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Provider != "gemini" || res.Markdown != final || res.HealthScore == 0 || res.ContextSummary.Records == 0 {
		t.Fatalf("result %+v", res)
	}
	if len(f.reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(f.reqs))
	}
	// The first request carries the anonymised profile, the custom prompt
	// and the five tools; the system id and name are not sent.
	first, _ := json.Marshal(f.reqs[0])
	for _, want := range []string{"Is my battery ready for winter?", ToolRequestBMSData, ToolSystemAnalytics, ToolPredictTrends, ToolUsagePatterns, ToolEnergyBudget, "systemRef", "ruleBasedAnalysis"} {
		if !strings.Contains(string(first), want) {
			t.Fatalf("first request lacks %q", want)
		}
	}
	if strings.Contains(string(first), req.SystemID) || strings.Contains(string(first), "Test cabin") || strings.Contains(string(first), "46.5547") {
		t.Fatalf("first request leaks identity: %s", first)
	}
	// The third request holds the tool answers of both turns.
	third, _ := json.Marshal(f.reqs[2])
	for _, want := range []string{`"functionResponse"`, `"daysToThreshold"`, `"nightSharePct"`, `"addedLoadKWhPerDay":0.5`, `"points"`, `"healthScore"`} {
		if !strings.Contains(string(third), want) {
			t.Fatalf("third request lacks %s: %s", want, third)
		}
	}
	llm := res.Metrics["llm"].(map[string]any)
	if llm["turns"] != 3 || llm["toolCalls"] != 5 {
		t.Fatalf("llm metrics %v", llm)
	}
}

func TestGeminiIterationLimit(t *testing.T) {
	g, f, req := geminiFixture(t, func(n int, body map[string]any, w http.ResponseWriter) {
		io.WriteString(w, functionCallResponse(map[string]any{"name": ToolSystemAnalytics, "args": map[string]any{}}))
	})
	req.MaxIterations = 4
	res, err := g.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.reqs) != 4 {
		t.Fatalf("%d requests, want exactly MaxIterations 4", len(f.reqs))
	}
	// The last turn forbids tool calls.
	last, _ := json.Marshal(f.reqs[3]["toolConfig"])
	if !strings.Contains(string(last), "NONE") {
		t.Fatalf("last turn tool config %s", last)
	}
	// No answer from the model: the rules report is the fallback.
	if res.Provider != "gemini" || !strings.Contains(res.Markdown, "## KEY FINDINGS") || res.Metrics["llm"].(map[string]any)["answered"] != false {
		t.Fatalf("fallback result %+v", res)
	}
}

func TestGeminiErrors(t *testing.T) {
	cases := []struct {
		name       string
		status     int
		header     string
		body       string
		wantStatus int
		wantRetry  time.Duration
	}{
		{"429 Retry-After", 429, "17", `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}`, 429, 17 * time.Second},
		{"429 RetryInfo", 429, "", `{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"42s"}]}}`, 429, 42 * time.Second},
		{"500", 500, "", `{"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}`, 500, 0},
		{"400", 400, "", `{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}`, 400, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g, _, req := geminiFixture(t, func(n int, body map[string]any, w http.ResponseWriter) {
				if c.header != "" {
					w.Header().Set("Retry-After", c.header)
				}
				w.WriteHeader(c.status)
				io.WriteString(w, c.body)
			})
			_, err := g.Generate(context.Background(), req)
			var pe *ProviderError
			if !errors.As(err, &pe) {
				t.Fatalf("want *ProviderError, got %T %v", err, err)
			}
			if pe.StatusCode != c.wantStatus || pe.RetryAfter != c.wantRetry {
				t.Fatalf("got status %d retry %v, want %d %v (%v)", pe.StatusCode, pe.RetryAfter, c.wantStatus, c.wantRetry, err)
			}
		})
	}
}

func TestGeminiTimeout(t *testing.T) {
	release := make(chan struct{})
	g, _, req := geminiFixture(t, func(n int, body map[string]any, w http.ResponseWriter) {
		<-release
	})
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := g.Generate(ctx, req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want context.DeadlineExceeded, got %v", err)
	}
	var pe *ProviderError
	if errors.As(err, &pe) {
		t.Fatal("a timeout is not a ProviderError")
	}

	// The HTTP client's own timeout surfaces as a net.Error timeout.
	g.http.Timeout = 100 * time.Millisecond
	_, err = g.Generate(context.Background(), req)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a net.Error timeout, got %T %v", err, err)
	}
}

func TestGeminiHistoryErrorIsReturned(t *testing.T) {
	boom := errors.New("mongo down")
	g, _, req := geminiFixture(t, func(n int, body map[string]any, w http.ResponseWriter) {
		io.WriteString(w, textResponse("x"))
	})
	g.src.(*MemorySource).Err = boom
	if _, err := g.Generate(context.Background(), req); !errors.Is(err, boom) {
		t.Fatalf("want wrapped store error, got %v", err)
	}
}

func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	if d, ok := ParseRetryAfter("120", now); !ok || d != 2*time.Minute {
		t.Fatal(d, ok)
	}
	if d, ok := ParseRetryAfter("Wed, 01 Jan 2025 00:00:30 GMT", now); !ok || d != 30*time.Second {
		t.Fatal(d, ok)
	}
	if _, ok := ParseRetryAfter("soon", now); ok {
		t.Fatal("garbage accepted")
	}
	if d, ok := RetryInfoDelay([]map[string]any{{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1.5s"}}); !ok || d != 1500*time.Millisecond {
		t.Fatal(d, ok)
	}
}

// A job's modelOverride is the model asked, and every turn and tool call is
// reported as a progress event in the BMS app's shape.
func TestGeminiModelOverrideAndProgress(t *testing.T) {
	g, f, req := geminiFixture(t, func(n int, body map[string]any, w http.ResponseWriter) {
		if n == 1 {
			io.WriteString(w, functionCallResponse(map[string]any{"name": ToolRequestBMSData, "args": map[string]any{"metric": "soc", "days": 3}}))
			return
		}
		io.WriteString(w, textResponse("## KEY FINDINGS\n- ok"))
	})
	f.model = "gemini-2.5-pro"
	req.ModelOverride = "gemini-2.5-pro"
	var events []Progress
	req.Progress = func(_ context.Context, ev Progress) error { events = append(events, ev); return nil }
	res, err := g.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.reqs) != 2 || res.Model != "gemini-2.5-pro" || res.Turns != 2 || res.ToolCalls != 1 {
		t.Fatalf("%d requests, result model %q turns %d tool calls %d", len(f.reqs), res.Model, res.Turns, res.ToolCalls)
	}
	var types []string
	for _, ev := range events {
		types = append(types, ev.Type)
	}
	want := []string{ProgressIteration, ProgressToolCall, ProgressToolResponse, ProgressIteration, ProgressAIResponse}
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Fatalf("progress %v, want %v", types, want)
	}
	if events[1].Data["toolName"] != ToolRequestBMSData || events[0].Data["maxIterations"] != 5 {
		t.Fatalf("progress data %v / %v", events[1].Data, events[0].Data)
	}
	// A progress error (the store failed) stops the run.
	stop := errors.New("store down")
	req.Progress = func(context.Context, Progress) error { return stop }
	if _, err := g.Generate(context.Background(), req); !errors.Is(err, stop) {
		t.Fatalf("progress error: %v", err)
	}
}
