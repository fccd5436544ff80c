package insights

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/testenv/fakegemini"
)

// geminiFixture is the provider on a fake model API that answers with h,
// and a request for it.
func geminiFixture(t *testing.T, h func(c fakegemini.Call, w http.ResponseWriter)) (*Gemini, *fakegemini.Server, Request) {
	f := fakegemini.Start(t, "test-key", h)
	sys, recs, now := testSystemHistory()
	src := NewMemorySource([]bms.System{sys}, recs)
	g := NewGemini(GeminiConfig{APIKey: "test-key", BaseURL: f.URL, HTTPClient: &http.Client{Timeout: 5 * time.Second}}, nil, src)
	req := Request{SystemID: sys.ID, Snapshot: testSnapshot(), ContextWindowDays: 30, MaxIterations: 5, Now: now, CustomPrompt: "Is my battery ready for winter?"}
	return g, f, req
}

func TestGeminiToolLoop(t *testing.T) {
	final := "## KEY FINDINGS\n- ok\n## TREND ANALYSIS\n- flat\n## RECOMMENDATIONS\n- 🟢 keep 2.0 kWh/day"
	g, f, req := geminiFixture(t, func(c fakegemini.Call, w http.ResponseWriter) {
		switch c.N {
		case 1:
			io.WriteString(w, fakegemini.FunctionCalls(
				map[string]any{"name": ToolSystemAnalytics, "args": map[string]any{}},
				map[string]any{"name": ToolRequestBMSData, "args": map[string]any{"metric": "soc", "days": 3, "granularity": "daily"}}))
		case 2:
			io.WriteString(w, fakegemini.FunctionCalls(
				map[string]any{"name": ToolPredictTrends, "args": map[string]any{"metric": "imbalanceMv", "daysAhead": 30}},
				map[string]any{"name": ToolUsagePatterns, "args": map[string]any{}},
				map[string]any{"name": ToolEnergyBudget, "args": map[string]any{"additionalLoadW": 100, "hoursPerDay": 5}}))
		default:
			io.WriteString(w, fakegemini.Text(final))
		}
	})
	res, err := g.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Provider != "gemini" || res.Markdown != final || res.HealthScore == 0 || res.ContextSummary.Records == 0 {
		t.Fatalf("result %+v", res)
	}
	if f.Calls() != 3 {
		t.Fatalf("%d requests, want 3", f.Calls())
	}
	// The first request carries the anonymised profile, the custom prompt
	// and the five tools; the system id and name are not sent.
	first, _ := json.Marshal(f.Requests()[0])
	for _, want := range []string{"Is my battery ready for winter?", ToolRequestBMSData, ToolSystemAnalytics, ToolPredictTrends, ToolUsagePatterns, ToolEnergyBudget, "systemRef", "ruleBasedAnalysis"} {
		if !strings.Contains(string(first), want) {
			t.Fatalf("first request lacks %q", want)
		}
	}
	if strings.Contains(string(first), req.SystemID) || strings.Contains(string(first), "Test cabin") || strings.Contains(string(first), "46.5547") {
		t.Fatalf("first request leaks identity: %s", first)
	}
	// The third request holds the tool answers of both turns.
	third, _ := json.Marshal(f.Requests()[2])
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
	g, f, req := geminiFixture(t, func(_ fakegemini.Call, w http.ResponseWriter) {
		io.WriteString(w, fakegemini.FunctionCalls(map[string]any{"name": ToolSystemAnalytics, "args": map[string]any{}}))
	})
	req.MaxIterations = 4
	res, err := g.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if f.Calls() != 4 {
		t.Fatalf("%d requests, want exactly MaxIterations 4", f.Calls())
	}
	// The last turn forbids tool calls.
	last, _ := json.Marshal(f.Requests()[3]["toolConfig"])
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
			g, _, req := geminiFixture(t, func(_ fakegemini.Call, w http.ResponseWriter) {
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
	g, _, req := geminiFixture(t, func(c fakegemini.Call, _ http.ResponseWriter) {
		c.Hold()
	})
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
	g, _, req := geminiFixture(t, func(_ fakegemini.Call, w http.ResponseWriter) {
		io.WriteString(w, fakegemini.Text("x"))
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
	g, f, req := geminiFixture(t, func(c fakegemini.Call, w http.ResponseWriter) {
		if c.N == 1 {
			io.WriteString(w, fakegemini.FunctionCalls(map[string]any{"name": ToolRequestBMSData, "args": map[string]any{"metric": "soc", "days": 3}}))
			return
		}
		io.WriteString(w, fakegemini.Text("## KEY FINDINGS\n- ok"))
	})
	f.ExpectModel("gemini-2.5-pro")
	req.ModelOverride = "gemini-2.5-pro"
	var events []Progress
	req.Progress = func(_ context.Context, ev Progress) error { events = append(events, ev); return nil }
	res, err := g.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if f.Calls() != 2 || res.Model != "gemini-2.5-pro" || res.Turns != 2 || res.ToolCalls != 1 {
		t.Fatalf("%d requests, result model %q turns %d tool calls %d", f.Calls(), res.Model, res.Turns, res.ToolCalls)
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
	// The field names both of the BMS app's readers use: its progress
	// display reads tool, dataSize, messageCount, promptLength; its status
	// function toolName, iteration, maxIterations.
	call, answer, turn2 := events[1].Data, events[2].Data, events[3].Data
	if call["tool"] != ToolRequestBMSData || call["iteration"] != 1 || call["parameters"] == nil {
		t.Fatalf("tool call %v, want {tool, toolName, parameters, iteration}", call)
	}
	if answer["tool"] != ToolRequestBMSData || answer["success"] != true || answer["dataSize"].(int) <= 2 || answer["durationMs"] == nil {
		t.Fatalf("tool answer %v, want {tool, toolName, success, dataSize, durationMs}", answer)
	}
	if events[0].Data["messageCount"] != 1 || events[0].Data["promptLength"].(int) <= 0 ||
		turn2["messageCount"].(int) <= 1 || turn2["promptLength"].(int) <= events[0].Data["promptLength"].(int) {
		t.Fatalf("turns %v / %v, want messageCount and a growing promptLength", events[0].Data, turn2)
	}
	// A progress error (the store failed) stops the run.
	stop := errors.New("store down")
	req.Progress = func(context.Context, Progress) error { return stop }
	if _, err := g.Generate(context.Background(), req); !errors.Is(err, stop) {
		t.Fatalf("progress error: %v", err)
	}
}
