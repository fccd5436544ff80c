package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/crypt"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/internal/testenv/fakegemini"
	"github.com/bmsview/insights/tasks"
)

const (
	e2eKey      = "e2e-test-key-0123456789-abcdefghijklmnop"
	e2eOtherKey = "another-key-0123456789-abcdefghijklmnopqr"
)

// e2eOpen builds the real app from a config loaded from vars (on top of the
// test's Redis database and a fresh MongoDB database), with a running
// worker. The app, the worker and the database go away when the test ends.
//
// engine, when not nil, builds the worker's engine from the opened app
// (else o.Engine, else a.NewEngine()).
func e2eOpen(t *testing.T, vars map[string]string, o app.WorkerOptions, engine func(*app.App) insights.Engine) *app.App {
	t.Helper()
	opt := testenv.Redis(t) // the package's own; the reconciler test has another
	env := map[string]string{
		"REDIS_URL":        fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB),
		"BACKOFF_SCHEDULE": "1s",
		"SHUTDOWN_TIMEOUT": "3s",
	}
	for k, v := range vars {
		env[k] = v
	}
	a, _ := testenv.App(t, env, testenv.Logger())
	if engine != nil {
		o.Engine = engine(a)
	}
	startWorker(t, a, o)
	return a
}

func e2eSnapshot() *tasks.AnalysisData {
	return &tasks.AnalysisData{StateOfCharge: bms.F(72), OverallVoltage: bms.F(52.8), Current: bms.F(-9), Power: bms.F(-475), RemainingCapacity: bms.F(144),
		FullCapacity: bms.F(200), CycleCount: bms.F(310), HighestCellVoltage: bms.F(3.31), LowestCellVoltage: bms.F(3.28), AverageCellVoltage: bms.F(3.3),
		CellVoltageDifference: bms.F(0.03), CellVoltages: []float64{3.3, 3.31, 3.28, 3.3}, Temperatures: []float64{24, 25}, MOSTemperature: bms.F(31)}
}

func e2eSend(t *testing.T, a *app.App, jobID string) *tasks.SendResult {
	t.Helper()
	res, err := a.Client.TriggerInsights(context.Background(), tasks.EventData{JobID: jobID, SystemID: "sys-e2e", AnalysisData: e2eSnapshot()})
	if err != nil {
		t.Fatalf("send: %v", err)
	}
	return res
}

// geminiKey is the GEMINI_API_KEY of these tests, which the fake model
// checks.
const geminiKey = "x"

func geminiVars(url string) map[string]string {
	return map[string]string{
		"INSIGHTS_PROVIDER": "gemini", "GEMINI_API_KEY": geminiKey, "GEMINI_BASE_URL": url,
		"RETRY_TRANSIENT_DELAY": "37s", "RETRY_RATE_LIMIT_DELAY": "53s",
	}
}

// TestE2EGeminiErrors: each kind of answer of the model's API goes through
// the Gemini provider, the workload's classification, the job record and
// asynq's retry scheduling.
func TestE2EGeminiErrors(t *testing.T) {
	const (
		quota   = `{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}`
		retryIn = `{"error":{"code":429,"message":"You exceeded your current quota","status":"RESOURCE_EXHAUSTED","details":[` +
			`{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[]},` +
			`{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"42s"}]}}`
		internal = `{"error":{"code":500,"message":"Internal error encountered.","status":"INTERNAL"}}`
		badKey   = `{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT"}}`
	)
	cases := []struct {
		name       string
		status     int
		retryAfter string
		body       string
		hang       bool // hold the request past the HTTP client's timeout
		wantKind   string
		wantDelay  time.Duration // 0: archived at once
	}{
		{name: "429 Retry-After header", status: 429, retryAfter: "120", body: quota, wantKind: store.KindRateLimit, wantDelay: 120 * time.Second},
		{name: "429 RetryInfo in body", status: 429, body: retryIn, wantKind: store.KindRateLimit, wantDelay: 42 * time.Second},
		{name: "429 without delay", status: 429, body: quota, wantKind: store.KindRateLimit, wantDelay: 53 * time.Second},
		{name: "500", status: 500, body: internal, wantKind: store.KindTransient, wantDelay: 37 * time.Second},
		{name: "400", status: 400, body: badKey, wantKind: store.KindBusiness},
		{name: "HTTP timeout", hang: true, wantKind: store.KindTransient, wantDelay: 37 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := fakegemini.Start(t, geminiKey, func(call fakegemini.Call, w http.ResponseWriter) {
				if c.hang {
					call.Hold()
					return
				}
				if c.retryAfter != "" {
					w.Header().Set("Retry-After", c.retryAfter)
				}
				w.WriteHeader(c.status)
				_, _ = io.WriteString(w, c.body)
			})
			var engine func(*app.App) insights.Engine
			if c.hang {
				// The app has no setting for the provider's HTTP timeout
				// (a fixed 2 min): the same provider, built as
				// app.NewEngine does, with a 1 s client timeout.
				engine = func(a *app.App) insights.Engine {
					return insights.NewGemini(insights.GeminiConfig{APIKey: geminiKey, BaseURL: f.URL,
						HTTPClient: &http.Client{Timeout: time.Second}}, insights.NewRules(a.Store), a.Store)
				}
			}
			a := e2eOpen(t, geminiVars(f.URL), app.WorkerOptions{}, engine)
			sent := e2eSend(t, a, "gemini-err")

			wantState, wantStatus := asynq.TaskStateRetry, tasks.StatusRetrying
			if c.wantDelay == 0 {
				wantState, wantStatus = asynq.TaskStateArchived, tasks.StatusFailed
			}
			info := testenv.WaitTask(t, a.Inspector, sent.Queue, sent.EventID, 20*time.Second, testenv.InState(wantState))
			j := testenv.WaitJob(t, a.Store, "gemini-err", 10*time.Second, wantStatus, func(j *store.Job) bool {
				return j.Status == wantStatus && j.Error != nil
			})
			if j.Failure.Kind != c.wantKind || j.Failure.Step != tasks.StepProcessInsights {
				t.Errorf("job error %+v, want kind %s at %s", j.Error, c.wantKind, tasks.StepProcessInsights)
			}
			if st := j.Steps[tasks.StepProcessInsights]; st.Status != store.StepFailed || st.Runs < 1 {
				t.Errorf("process-insights checkpoint %+v, want failed", st)
			}
			if c.wantDelay == 0 {
				if info.Retried != 0 {
					t.Errorf("archived after %d retries, want 0", info.Retried)
				}
				if j.Failures != 1 || f.Calls() != 1 {
					t.Errorf("failures %d, model calls %d, want 1 and 1", j.Failures, f.Calls())
				}
				return
			}
			got := info.NextProcessAt.Sub(info.LastFailedAt)
			if d := got - c.wantDelay; d < -time.Second || d > time.Second {
				t.Errorf("retry in %v (next %v, failed %v), want %v ± 1s (last error %q)",
					got, info.NextProcessAt, info.LastFailedAt, c.wantDelay, info.LastErr)
			}
		})
	}
}

// TestE2EGeminiToolCallThenAnswer: the model asks for one tool, gets its
// answer, then writes the report; the job completes with it.
func TestE2EGeminiToolCallThenAnswer(t *testing.T) {
	final := "## KEY FINDINGS\n- fine\n## TREND ANALYSIS\n- flat\n## RECOMMENDATIONS\n- 🟢 keep 2.0 kWh/day"
	f := fakegemini.Start(t, geminiKey, func(c fakegemini.Call, w http.ResponseWriter) {
		if c.N == 1 {
			_, _ = io.WriteString(w, fakegemini.FunctionCalls(map[string]any{"name": insights.ToolSystemAnalytics, "args": map[string]any{}}))
			return
		}
		_, _ = io.WriteString(w, fakegemini.Text(final))
	})
	a := e2eOpen(t, geminiVars(f.URL), app.WorkerOptions{}, nil)
	sent := e2eSend(t, a, "gemini-ok")
	j := testenv.WaitJob(t, a.Store, "gemini-ok", 30*time.Second, "completed", func(j *store.Job) bool {
		return j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})
	res := asMap(t, j.FinalInsights)
	if res["provider"] != "gemini" || res["rawText"] != final {
		t.Fatalf("result provider %v rawText %q", res["provider"], res["rawText"])
	}
	if md := asMap(t, res["metadata"]); fmt.Sprint(md["turns"]) != "2" || fmt.Sprint(md["toolCalls"]) != "1" || md["mode"] != "background" {
		t.Fatalf("finalInsights.metadata %v, want the app's shape with 2 turns and 1 tool call", md)
	}
	llm := asMap(t, asMap(t, res["metrics"])["llm"])
	if fmt.Sprint(llm["turns"]) != "2" || fmt.Sprint(llm["toolCalls"]) != "1" || llm["answered"] != true {
		t.Fatalf("llm metrics %v, want 2 turns, 1 tool call, answered", llm)
	}
	bodies := f.Bodies()
	if len(bodies) != 2 {
		t.Fatalf("%d model calls, want 2", len(bodies))
	}
	// The second turn carries the tool's answer back to the model.
	if !strings.Contains(bodies[1], `"functionResponse"`) || !strings.Contains(bodies[1], insights.ToolSystemAnalytics) {
		t.Fatalf("second request lacks the tool answer: %s", bodies[1])
	}
	if st := j.Steps[tasks.StepProcessInsights]; st.Runs != 1 || j.Error != nil {
		t.Fatalf("process-insights %+v, error %+v", st, j.Error)
	}
	info, err := a.Inspector.GetTaskInfo(sent.Queue, sent.EventID)
	if err != nil || info.State != asynq.TaskStateCompleted {
		t.Fatalf("task %+v %v, want completed", info, err)
	}
}

// asMap returns a decoded document as a plain map (the driver hands back
// bson.M for documents inside `any` fields).
func asMap(t *testing.T, v any) map[string]any {
	t.Helper()
	switch m := v.(type) {
	case map[string]any:
		return m
	case bson.M:
		return m
	case bson.D:
		out := make(map[string]any, len(m))
		for _, e := range m {
			out[e.Key] = e.Value
		}
		return out
	}
	t.Fatalf("want a document, got %T %v", v, v)
	return nil
}

func checkEnvelope(t *testing.T, what string, v any) {
	t.Helper()
	m := asMap(t, v)
	if m["encrypted"] != true || m["algorithm"] != crypt.Algorithm {
		t.Errorf("%s not an aes-256-gcm envelope: %v", what, m)
	}
	for _, k := range []string{"data", "iv", "authTag"} {
		if s, _ := m[k].(string); s == "" {
			t.Errorf("%s.%s missing or not a string: %v", what, k, m[k])
		}
	}
	if len(m) != 5 {
		t.Errorf("%s has fields beside the envelope's: %v", what, m)
	}
}

// TestE2EEncryptionAtRest: with DATA_ENCRYPTION_KEY, the result and the
// insights-bearing step outputs are stored sealed; a resume after a later
// step's failure reuses the sealed checkpoint; another key cannot open it.
func TestE2EEncryptionAtRest(t *testing.T) {
	var storeFailed atomic.Bool
	hook := handlers.StepHook(func(ctx context.Context, r *handlers.Attempt, step string) error {
		if step == tasks.StepStoreResults && storeFailed.CompareAndSwap(false, true) {
			return errors.New("injected failure of store-results")
		}
		return nil
	})
	a := e2eOpen(t, map[string]string{"DATA_ENCRYPTION_KEY": e2eKey}, app.WorkerOptions{Hook: hook}, nil)
	if a.Sealer == nil {
		t.Fatal("DATA_ENCRYPTION_KEY set but no Sealer")
	}
	sent := e2eSend(t, a, "sealed")
	j := testenv.WaitJob(t, a.Store, "sealed", 30*time.Second, "completed", func(j *store.Job) bool {
		return j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})
	if !storeFailed.Load() {
		t.Fatal("the hook never failed store-results")
	}
	// Resumed at store-results: process-insights ran once, its sealed
	// output was opened and reused.
	if r := testenv.Runs(j); r[tasks.StepProcessInsights] != 1 || r[tasks.StepStoreResults] != 2 || j.Attempts != 2 {
		t.Fatalf("runs %v attempts %d, want process-insights 1, store-results 2 (1 failed), attempts 2", r, j.Attempts)
	}
	if j.Error != nil {
		t.Errorf("completed job keeps error %+v", j.Error)
	}

	// The raw document holds no plaintext insights.
	ctx := context.Background()
	raw, err := a.Store.Database().Collection("insights-jobs").FindOne(ctx, bson.D{{Key: "_id", Value: "sealed"}}).Raw()
	if err != nil {
		t.Fatal(err)
	}
	for _, plain := range []string{"KEY FINDINGS", "TREND ANALYSIS", "RECOMMENDATIONS", "healthScore", "findings", "contextSummary"} {
		if bytes.Contains(raw, []byte(plain)) {
			t.Errorf("raw job document contains %q in clear", plain)
		}
	}
	var doc bson.M
	if err := a.Store.Database().Collection("insights-jobs").FindOne(ctx, bson.D{{Key: "_id", Value: "sealed"}}).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	checkEnvelope(t, "finalInsights", doc["finalInsights"])
	steps := asMap(t, doc["steps"])
	checkEnvelope(t, "steps.process-insights.output", asMap(t, steps[tasks.StepProcessInsights])["output"])
	checkEnvelope(t, "steps.store-results.output", asMap(t, steps[tasks.StepStoreResults])["output"])

	// The app opens what the store hands back (GetJob, as the API reads it)
	// and what a raw read gives.
	for what, stored := range map[string]any{"GetJob finalInsights": j.FinalInsights, "raw finalInsights": doc["finalInsights"]} {
		v, err := a.Decrypt(stored)
		if err != nil {
			t.Fatalf("%s: decrypt: %v", what, err)
		}
		res, ok := v.(map[string]any)
		if !ok || res["healthScore"] == nil || !strings.Contains(fmt.Sprint(res["rawText"]), "## KEY FINDINGS") || res["provider"] != "rules" {
			t.Fatalf("%s: decrypted %T %v, want the result with healthScore and markdown", what, v, v)
		}
	}
	pi, err := a.Decrypt(j.Steps[tasks.StepProcessInsights].Output)
	if m, ok := pi.(map[string]any); err != nil || !ok || m["healthScore"] == nil || !strings.Contains(fmt.Sprint(m["markdown"]), "## KEY FINDINGS") {
		t.Fatalf("process-insights output decrypted: %v %v", pi, err)
	}
	out, err := a.Decrypt(j.Steps[tasks.StepStoreResults].Output)
	if _, ok := out.(map[string]any); err != nil || !ok {
		t.Fatalf("store-results output decrypted: %v %v", out, err)
	}
	// Decrypted, the output reads as it does stored in clear (bson names):
	// {healthScore, status, storedAt}.
	t.Run("store-results output names", func(t *testing.T) {
		m := out.(map[string]any)
		if m["healthScore"] == nil || m["status"] == nil || m["storedAt"] == nil {
			t.Errorf("decrypted store-results output %v: want healthScore, status, storedAt as stored in clear", m)
		}
	})

	// The follow-up carries the health score read from the sealed output.
	fu, err := a.Inspector.GetTaskInfo("low", tasks.FollowUpTaskIDPrefix+sent.EventID)
	if err != nil {
		t.Fatalf("follow-up task: %v", err)
	}
	var fp map[string]any
	if err := json.Unmarshal(fu.Payload, &fp); err != nil || fp["healthScore"] == nil || fp["jobId"] != "sealed" {
		t.Fatalf("follow-up payload %s %v", fu.Payload, err)
	}

	// Another key: an error, never garbage.
	otherSealer, err := crypt.New(e2eOtherKey)
	if err != nil {
		t.Fatal(err)
	}
	other := &app.App{Sealer: otherSealer}
	for what, stored := range map[string]any{"GetJob finalInsights": j.FinalInsights, "raw finalInsights": doc["finalInsights"]} {
		v, err := other.Decrypt(stored)
		if !errors.Is(err, crypt.ErrWrongKey) || v != nil {
			t.Fatalf("%s with another key: %v %v, want crypt.ErrWrongKey and nothing", what, v, err)
		}
	}
	// No key at all: an error too.
	if v, err := (&app.App{}).Decrypt(j.FinalInsights); err == nil {
		t.Fatalf("decrypt without a key gave %v", v)
	}

	// A new send of the completed job keeps the ended run's result in
	// insights-runs, sealed as the job's was (issue 22, item 1).
	again := e2eSend(t, a, "sealed")
	testenv.WaitJob(t, a.Store, "sealed", 30*time.Second, "the second run completed", func(j *store.Job) bool {
		return j.EventID == again.EventID && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})
	runRaw, err := a.Store.Database().Collection(store.RunsCollection).FindOne(ctx, bson.D{{Key: "_id", Value: sent.EventID}}).Raw()
	if err != nil {
		t.Fatalf("the first run's record: %v", err)
	}
	for _, plain := range []string{"KEY FINDINGS", "RECOMMENDATIONS", "healthScore", "findings"} {
		if bytes.Contains(runRaw, []byte(plain)) {
			t.Errorf("the ended run's record contains %q in clear", plain)
		}
	}
	var run bson.M
	if err := a.Store.Database().Collection(store.RunsCollection).FindOne(ctx, bson.D{{Key: "_id", Value: sent.EventID}}).Decode(&run); err != nil {
		t.Fatal(err)
	}
	checkEnvelope(t, "insights-runs finalInsights", run["finalInsights"])
	if v, err := a.Decrypt(run["finalInsights"]); err != nil || !strings.Contains(fmt.Sprint(v), "## KEY FINDINGS") {
		t.Fatalf("the ended run's finalInsights decrypted: %v %v", v, err)
	}
}

// TestE2ETaskTimeoutRetryDelay: a model call cut off by the per-attempt
// limit (TASK_TIMEOUT) is a timeout: kind transient, and per docs/DESIGN.md
// section 6 retried after RETRY_TRANSIENT_DELAY (asynq schedules that
// retry from ctx.Err() = context.DeadlineExceeded before the handler
// answers, so the RetryDelayFunc itself must know the transient delay).
func TestE2ETaskTimeoutRetryDelay(t *testing.T) {
	f := fakegemini.Start(t, geminiKey, func(c fakegemini.Call, _ http.ResponseWriter) { c.Hold() })
	vars := geminiVars(f.URL)
	vars["TASK_TIMEOUT"] = "2s"
	vars["BACKOFF_SCHEDULE"] = "5s"
	a := e2eOpen(t, vars, app.WorkerOptions{}, nil)
	sent := e2eSend(t, a, "task-timeout")
	j := testenv.WaitJob(t, a.Store, "task-timeout", 20*time.Second, "retrying", func(j *store.Job) bool {
		return j.Status == tasks.StatusRetrying && j.Error != nil
	})
	if j.Failure.Kind != store.KindTransient || j.Failure.Step != tasks.StepProcessInsights {
		t.Fatalf("job error %+v, want transient at process-insights", j.Error)
	}
	info := testenv.WaitTask(t, a.Inspector, sent.Queue, sent.EventID, 10*time.Second, testenv.InState(asynq.TaskStateRetry))
	got := info.NextProcessAt.Sub(info.LastFailedAt)
	if d := got - 37*time.Second; d < -time.Second || d > time.Second {
		msg := fmt.Sprintf("retry in %v after a TASK_TIMEOUT cut-off (last error %q), want RETRY_TRANSIENT_DELAY 37s", got, info.LastErr)
		t.Error(msg)
	}
}
