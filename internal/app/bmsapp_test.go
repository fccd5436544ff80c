package app_test

// The BMS app drop-in (docs/DESIGN.md section 12): a database written in the
// app's exact shapes (ObjectId _ids, `id` fields, ISO-string timestamps,
// null numbers, a scalar temperature, a job created `queued` with
// progress: []), driven through the Netlify send alias with the app
// client's exact body, and read back through the app's status poll.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/bmsview/insights/web"
)

const bmsToken = "bms-app-token-0123456789"

// bmsFixture is the app's database: one system with 3 days of 15-minute
// history (string timestamps, and a day of BSON dates), another system's
// history beside it, and jobs the app created.
type bmsFixture struct {
	systemOID bson.ObjectID
	systemID  string
	inWindow  int // history records of the system inside a 30-day window
}

func bmsSeed(t *testing.T, a *app.App, now time.Time) bmsFixture {
	t.Helper()
	ctx := context.Background()
	db := a.Store.Database()
	f := bmsFixture{systemOID: bson.NewObjectID(), systemID: "3f1c2a9e-7b44-4c1e-9d2f-5a6b7c8d9e0f"}
	if _, err := db.Collection("systems").InsertMany(ctx, []any{
		bson.D{{Key: "_id", Value: f.systemOID}, {Key: "id", Value: f.systemID}, {Key: "name", Value: "Cabin bank"},
			{Key: "chemistry", Value: "LiFePO4"}, {Key: "voltage", Value: 51.2}, {Key: "capacity", Value: 280},
			{Key: "latitude", Value: 45.5}, {Key: "longitude", Value: -122.6}, {Key: "associatedHardwareIds", Value: bson.A{"DL-40121"}},
			{Key: "associatedDLs", Value: bson.A{"DL-40121"}}, {Key: "maxAmpsSolarCharging", Value: nil}, {Key: "maxAmpsGeneratorCharging", Value: nil}},
		bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "id", Value: "other-system"}, {Key: "name", Value: "Shed"},
			{Key: "chemistry", Value: nil}, {Key: "voltage", Value: nil}, {Key: "capacity", Value: nil}},
	}); err != nil {
		t.Fatal(err)
	}
	var hist []any
	rec := func(system string, at time.Time, ts any, soc float64) bson.D {
		return bson.D{
			{Key: "_id", Value: bson.NewObjectID()}, {Key: "id", Value: fmt.Sprintf("rec-%s-%d", system, at.UnixMilli())},
			{Key: "timestamp", Value: ts}, {Key: "systemId", Value: system}, {Key: "systemName", Value: "Cabin bank"},
			{Key: "analysis", Value: bson.D{
				{Key: "stateOfCharge", Value: soc}, {Key: "overallVoltage", Value: 52.9}, {Key: "current", Value: -6.5},
				{Key: "power", Value: nil}, {Key: "remainingCapacity", Value: 280 * soc / 100}, {Key: "fullCapacity", Value: 280},
				{Key: "cycleCount", Value: 412}, {Key: "highestCellVoltage", Value: 3.312}, {Key: "lowestCellVoltage", Value: 3.301},
				{Key: "averageCellVoltage", Value: nil}, {Key: "cellVoltageDifference", Value: 0.011},
				{Key: "temperature", Value: 23.5}, {Key: "mosTemperature", Value: 29.0}, {Key: "chargeMosOn", Value: true},
				{Key: "dischargeMosOn", Value: true}, {Key: "balanceOn", Value: false}, {Key: "alerts", Value: bson.A{}},
				{Key: "hardwareSystemId", Value: "DL-40121"}, {Key: "dlNumber", Value: "DL-40121"}, {Key: "serialNumber", Value: nil},
			}},
			{Key: "hardwareSystemId", Value: "DL-40121"},
			{Key: "weather", Value: bson.D{{Key: "temp", Value: 11.2}, {Key: "clouds", Value: 40}, {Key: "uvi", Value: nil},
				{Key: "weather_main", Value: "Clouds"}, {Key: "weather_icon", Value: "03d"}}},
			{Key: "fileName", Value: "Screenshot_20261120.png"}, {Key: "updatedAt", Value: at.Format("2006-01-02T15:04:05.000Z")},
		}
	}
	start := now.Add(-72 * time.Hour).Truncate(15 * time.Minute)
	for at := start; at.Before(now); at = at.Add(15 * time.Minute) {
		soc := 60 + 20*float64(at.Hour())/24
		var ts any = at.UTC().Format("2006-01-02T15:04:05.000Z")
		if now.Sub(at) > 48*time.Hour {
			ts = at.UTC() // the oldest day as BSON dates: read too
		}
		hist = append(hist, rec(f.systemID, at, ts, soc))
		f.inWindow++
		hist = append(hist, rec("other-system", at, at.UTC().Format("2006-01-02T15:04:05.000Z"), 50))
	}
	// Outside the 30-day window: not counted.
	hist = append(hist, rec(f.systemID, now.Add(-40*24*time.Hour), now.Add(-40*24*time.Hour).UTC().Format("2006-01-02T15:04:05.000Z"), 70))
	if _, err := db.Collection("history").InsertMany(ctx, hist); err != nil {
		t.Fatal(err)
	}
	return f
}

// bmsSnapshotDoc is analysisData as the app sends it: nulls for what the
// BMS did not measure, the main temperature as a scalar, fields of its own.
func bmsSnapshotDoc() map[string]any {
	return map[string]any{
		"stateOfCharge": 64, "overallVoltage": 52.6, "current": -12.4, "power": nil, "remainingCapacity": 179.2,
		"fullCapacity": 280, "cycleCount": 412, "highestCellVoltage": 3.316, "lowestCellVoltage": 3.296,
		"averageCellVoltage": nil, "cellVoltageDifference": 0.02, "cellVoltages": []float64{3.31, 3.316, 3.296, 3.3},
		"temperature": 52, "mosTemperature": 38, "chargeMosOn": true, "dischargeMosOn": true, "balanceOn": nil,
		"alerts": []string{}, "summary": "Discharging under load", "status": "Discharging", "hardwareSystemId": "DL-40121",
		"dlNumber": "DL-40121", "serialNumber": nil, "numTempSensors": 1,
	}
}

// bmsAppJob inserts a job the way the app's createInsightsJob does.
func bmsAppJob(t *testing.T, a *app.App, jobID, systemID string, analysis any, status string, extra ...bson.E) bson.ObjectID {
	t.Helper()
	oid := bson.NewObjectID()
	now := time.Now().UTC()
	doc := bson.D{
		{Key: "_id", Value: oid}, {Key: "id", Value: jobID}, {Key: "status", Value: status},
		{Key: "analysisData", Value: analysis}, {Key: "systemId", Value: systemID}, {Key: "customPrompt", Value: nil},
		{Key: "initialSummary", Value: nil}, {Key: "contextWindowDays", Value: 30}, {Key: "maxIterations", Value: nil},
		{Key: "modelOverride", Value: nil}, {Key: "fullContextMode", Value: false}, {Key: "progress", Value: bson.A{}},
		{Key: "partialInsights", Value: nil}, {Key: "finalInsights", Value: nil}, {Key: "checkpointState", Value: nil},
		{Key: "error", Value: nil}, {Key: "createdAt", Value: now}, {Key: "updatedAt", Value: now},
	}
	doc = append(doc, extra...)
	if _, err := a.Store.Database().Collection("insights-jobs").InsertOne(context.Background(), doc); err != nil {
		t.Fatal(err)
	}
	return oid
}

func bmsPost(t *testing.T, url string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+bmsToken)
	return bmsDo(t, req)
}

func bmsGet(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Authorization", "Bearer "+bmsToken)
	return bmsDo(t, req)
}

func bmsDo(t *testing.T, req *http.Request) (int, map[string]any) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s %s: %d %s: not JSON: %v", req.Method, req.URL, resp.StatusCode, b, err)
	}
	return resp.StatusCode, out
}

func TestBMSAppDropIn(t *testing.T) {
	a := e2eOpen(t, map[string]string{"DATA_ENCRYPTION_KEY": e2eKey}, app.WorkerOptions{}, nil)
	operator := a.NewOperator(testenv.Logger())
	t.Cleanup(operator.Close)
	ws := web.New(web.Config{Store: a.Store, Client: a.Client, Inspector: a.Inspector, RedisConnOpt: a.Redis,
		APIToken: bmsToken, AdminPassword: "pw", Operator: operator, Logger: testenv.Logger()})
	srv := httptest.NewServer(ws.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = ws.Close() })
	ctx := context.Background()
	now := time.Now().UTC()
	fx := bmsSeed(t, a, now)
	jobs := a.Store.Database().Collection("insights-jobs")

	// The app creates its job, then its client sends (insights-async-client.cjs):
	// absent values omitted, priority only when not 5.
	jobID := fmt.Sprintf("insights_%d_k3j9x0abc", now.UnixMilli())
	oid := bmsAppJob(t, a, jobID, fx.systemID, bmsSnapshotDoc(), tasks.StatusQueued)
	code, sent := bmsPost(t, srv.URL+"/.netlify/functions/async-workloads/send", map[string]any{
		"eventName": "generate-insights",
		"eventData": map[string]any{"jobId": jobID, "analysisData": bmsSnapshotDoc(), "systemId": fx.systemID,
			"contextWindowDays": 30, "fullContextMode": false},
	})
	if code != http.StatusAccepted || sent["sendStatus"] != "succeeded" || sent["eventId"] == "" || sent["jobId"] != jobID {
		t.Fatalf("send: %d %v, want 202 succeeded with an eventId", code, sent)
	}
	j := testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "completed with its follow-up sent", func(j *store.Job) bool {
		return j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})

	// Updated in place: one document, the app's _id, the app's own fields kept.
	if n, err := jobs.CountDocuments(ctx, bson.D{{Key: "id", Value: jobID}}); err != nil || n != 1 {
		t.Fatalf("%d documents with id %s (%v), want the app's one", n, jobID, err)
	}
	var raw bson.M
	if err := jobs.FindOne(ctx, bson.D{{Key: "_id", Value: oid}}).Decode(&raw); err != nil {
		t.Fatalf("the app's document by its ObjectId: %v", err)
	}
	for _, k := range []string{"initialSummary", "checkpointState", "customPrompt"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("the app's field %s is gone", k)
		}
	}
	if raw["status"] != "completed" || raw["error"] != nil || raw["eventId"] != sent["eventId"] {
		t.Fatalf("stored status %v error %v eventId %v", raw["status"], raw["error"], raw["eventId"])
	}
	checkEnvelope(t, "finalInsights", raw["finalInsights"]) // DATA_ENCRYPTION_KEY: the app's scheme
	if _, ok := raw["createdAt"].(bson.DateTime); !ok {
		t.Errorf("createdAt is %T, want the app's BSON date", raw["createdAt"])
	}
	prog, _ := raw["progress"].(bson.A)
	stepsSeen := map[string]bool{}
	for _, p := range prog {
		ev := asMap(t, p)
		if _, ok := ev["timestamp"].(bson.DateTime); !ok || ev["type"] == nil {
			t.Fatalf("progress event %v: want {timestamp: date, type, data}", ev)
		}
		if d := asMap(t, ev["data"]); d["step"] != nil {
			stepsSeen[fmt.Sprint(d["step"])] = true
		}
	}
	for _, s := range tasks.Steps {
		if !stepsSeen[s] {
			t.Errorf("no progress event for the start of %s (progress %v)", s, prog)
		}
	}

	// The analysis read the app's history: ISO strings and dates, this
	// system's only, in the window; the scalar 52 °C is a critical finding.
	code, st := bmsGet(t, srv.URL+"/.netlify/functions/generate-insights-status?jobId="+jobID)
	if code != http.StatusOK || st["status"] != "completed" || st["jobId"] != jobID || st["completedAt"] == nil || st["createdAt"] == nil {
		t.Fatalf("status completed: %d %v", code, st)
	}
	fi, _ := st["finalInsights"].(map[string]any)
	ins, _ := st["insights"].(map[string]any)
	if fi == nil || ins == nil || !strings.Contains(fmt.Sprint(fi["rawText"]), "## KEY FINDINGS") {
		t.Fatalf("status: finalInsights %v insights %v, want the decrypted report under both", st["finalInsights"], st["insights"])
	}
	cs, _ := fi["contextSummary"].(map[string]any)
	if fmt.Sprint(cs["records"]) != fmt.Sprint(fx.inWindow) || fmt.Sprint(cs["windowDays"]) != "30" {
		t.Fatalf("contextSummary %v, want %d records over 30 days", cs, fx.inWindow)
	}
	if md, _ := st["metadata"].(map[string]any); md == nil || md["turns"] == nil || md["toolCalls"] == nil {
		t.Fatalf("metadata %v, want {turns, toolCalls}", st["metadata"])
	}
	if !strings.Contains(fmt.Sprint(fi["findings"]), "TEMPERATURE_HIGH") || fi["status"] != "Critical" {
		t.Fatalf("findings %v status %v: the scalar temperature of 52 °C is critical", fi["findings"], fi["status"])
	}
	// POST {jobId}, as the front end polls, answers the same.
	code, st2 := bmsPost(t, srv.URL+"/.netlify/functions/generate-insights-status", map[string]any{"jobId": jobID})
	if code != http.StatusOK || st2["status"] != "completed" || st2["finalInsights"] == nil {
		t.Fatalf("POST status: %d %v", code, st2)
	}

	// The follow-up set lastInsights on the app's system document, and
	// created no other.
	testenv.WaitFor(t, 30*time.Second, "lastInsights on the app's system", func() (bool, error) {
		var sys bson.M
		err := a.Store.Database().Collection("systems").FindOne(ctx, bson.D{{Key: "_id", Value: fx.systemOID}}).Decode(&sys)
		if err != nil || sys["lastInsights"] == nil {
			return false, err
		}
		li := asMap(t, sys["lastInsights"])
		return li["jobId"] == jobID && li["hasInsights"] == true, nil
	})
	if n, _ := a.Store.Database().Collection("systems").CountDocuments(ctx, bson.D{}); n != 2 {
		t.Fatalf("%d systems, want the app's 2 (no stub)", n)
	}
	if j.Steps[tasks.StepProcessInsights].Runs != 1 {
		t.Fatalf("process-insights ran %d times", j.Steps[tasks.StepProcessInsights].Runs)
	}

	t.Run("failed", func(t *testing.T) {
		// An app job without its request, sent {jobId} only: fails for good.
		failID := fmt.Sprintf("insights_%d_nodata0001", now.UnixMilli())
		bmsAppJob(t, a, failID, "", nil, tasks.StatusQueued)
		code, res := bmsPost(t, srv.URL+"/.netlify/functions/async-workloads/send", map[string]any{
			"eventName": "generate-insights", "eventData": map[string]any{"jobId": failID}})
		if code != http.StatusAccepted {
			t.Fatalf("send: %d %v", code, res)
		}
		testenv.WaitJob(t, a.Store, failID, 30*time.Second, "failed", func(j *store.Job) bool { return j.Status == tasks.StatusFailed })
		code, st := bmsGet(t, srv.URL+"/.netlify/functions/generate-insights-status?jobId="+failID)
		msg, _ := st["error"].(string)
		sug, _ := st["suggestions"].([]any)
		last, _ := st["lastProgressEvent"].(map[string]any)
		if code != http.StatusOK || st["status"] != "failed" || !strings.Contains(msg, "missing its request") ||
			st["failedAt"] == nil || st["failureReason"] == nil || st["failureCategory"] != "unknown" || len(sug) != 2 ||
			last == nil || last["type"] != "error" || st["progressCount"] == nil {
			t.Fatalf("status failed: %d %v", code, st)
		}
	})

	t.Run("processing", func(t *testing.T) {
		// A run under way, as the front end sees it mid-step.
		procID := fmt.Sprintf("insights_%d_running001", now.UnixMilli())
		bmsAppJob(t, a, procID, fx.systemID, bmsSnapshotDoc(), tasks.StatusProcessing)
		if _, err := jobs.UpdateOne(ctx, bson.D{{Key: "id", Value: procID}}, bson.D{{Key: "$push", Value: bson.D{{Key: "progress", Value: bson.D{
			{Key: "timestamp", Value: time.Now().UTC()}, {Key: "type", Value: "tool_call"},
			{Key: "data", Value: bson.D{{Key: "toolName", Value: "request_bms_data"}, {Key: "iteration", Value: 1}}}}}}}}); err != nil {
			t.Fatal(err)
		}
		code, st := bmsPost(t, srv.URL+"/.netlify/functions/generate-insights-status", map[string]any{"jobId": procID})
		progress, _ := st["progress"].([]any)
		if code != http.StatusOK || st["status"] != "processing" || len(progress) != 1 || fmt.Sprint(st["progressCount"]) != "1" ||
			st["currentStage"] != "🔧 Fetching BMS historical data..." {
			t.Fatalf("status processing: %d %v", code, st)
		}
		if _, ok := st["partialInsights"]; ok && st["partialInsights"] != nil {
			t.Fatalf("partialInsights %v, want null", st["partialInsights"])
		}
	})

	t.Run("unknown and missing jobId", func(t *testing.T) {
		code, st := bmsGet(t, srv.URL+"/.netlify/functions/generate-insights-status?jobId=insights_0_nope")
		if code != http.StatusNotFound || st["error"] != "Job not found" || st["jobId"] != "insights_0_nope" {
			t.Fatalf("unknown: %d %v", code, st)
		}
		code, st = bmsGet(t, srv.URL+"/.netlify/functions/generate-insights-status")
		if code != http.StatusBadRequest || st["error"] != "jobId is required" {
			t.Fatalf("missing jobId (GET): %d %v", code, st)
		}
		code, st = bmsPost(t, srv.URL+"/.netlify/functions/generate-insights-status", map[string]any{})
		if code != http.StatusBadRequest || st["error"] != "jobId is required" {
			t.Fatalf("missing jobId (POST): %d %v", code, st)
		}
	})

	t.Run("sent again while live is a duplicate; after completion a new run", func(t *testing.T) {
		code, res := bmsPost(t, srv.URL+"/.netlify/functions/async-workloads/send", map[string]any{
			"eventName": "generate-insights", "eventData": map[string]any{"jobId": jobID}})
		if code != http.StatusAccepted || res["eventId"] == sent["eventId"] {
			t.Fatalf("re-send of a completed job: %d %v, want a new run", code, res)
		}
		code, dup := bmsPost(t, srv.URL+"/.netlify/functions/async-workloads/send", map[string]any{
			"eventName": "generate-insights", "eventData": map[string]any{"jobId": jobID}})
		if (code != http.StatusOK || dup["sendStatus"] != "duplicate" || dup["eventId"] != res["eventId"]) &&
			!(code == http.StatusAccepted) { // it may have completed meanwhile
			t.Fatalf("re-send while live: %d %v", code, dup)
		}
		testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "completed again", func(j *store.Job) bool {
			return j.EventID == res["eventId"] && j.Status == tasks.StatusCompleted
		})
		if n, _ := jobs.CountDocuments(ctx, bson.D{{Key: "id", Value: jobID}}); n != 1 {
			t.Fatalf("%d documents for %s after a re-run", n, jobID)
		}
	})
}
