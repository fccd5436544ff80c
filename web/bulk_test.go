package web

import (
	"context"
	"encoding/json"
	"fmt"
	"html"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// bulkAnswer decodes an answer of the bulk routes.
func bulkAnswer(t *testing.T, r *resp) BulkAnswer {
	t.Helper()
	var a BulkAnswer
	if err := json.Unmarshal(r.body, &a); err != nil || a.BulkOp == nil {
		t.Fatalf("bulk answer (%d): %v\n%s", r.code, err, r.body)
	}
	return a
}

func TestBulkRetryThroughTheAPI(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "b-1", "b-2", "b-3", "b-4")
	for _, id := range []string{"b-1", "b-2", "b-3", "b-4", "ok-1"} {
		e.send(id)
	}
	for _, id := range []string{"b-1", "b-2", "b-3", "b-4"} {
		e.waitStatus(id, tasks.StatusFailed, 20*time.Second)
	}
	e.waitDone("ok-1")
	// asynq trimmed one dead task: it is still a failure in MongoDB, and
	// retried all the same.
	trimmed := e.job("b-4")
	if err := e.inspector.DeleteTask(trimmed.Queue, trimmed.EventID); err != nil {
		t.Fatal(err)
	}

	filter := map[string]any{"status": "failed", "failureKind": "business", "step": "process-insights"}
	r := e.do("POST", "/api/jobs/bulk", map[string]any{"action": "retry", "filter": filter, "dryRun": true}, authBearer)
	e.expect(r, http.StatusOK)
	if got := strings.TrimSpace(string(r.body)); got != `{"matched":4}` {
		t.Fatalf("dry run answered %s, want only the count {\"matched\":4}", got)
	}
	if j := e.job("b-1"); j.Status != tasks.StatusFailed {
		t.Fatalf("a dry run changed job b-1: %s", j.Status)
	}

	e.fail.set(false)
	r = e.do("POST", "/api/jobs/bulk", map[string]any{"action": "retry", "filter": filter}, authBearer)
	e.expect(r, http.StatusOK)
	a := bulkAnswer(t, r)
	if a.Status != store.BulkDone || a.Matched != 4 || a.Done != 4 || a.Failed != 0 || a.Skipped != 0 {
		t.Fatalf("bulk retry: %s", r.body)
	}
	if loc := r.header.Get("Location"); loc != "/api/jobs/bulk/"+a.ID {
		t.Errorf("Location %q", loc)
	}
	for _, id := range []string{"b-1", "b-2", "b-3", "b-4"} {
		j := e.waitDone(id)
		if j.Failures != 0 {
			t.Errorf("job %s completed with failures %d: its budget was not reset", id, j.Failures)
		}
	}
	if j := e.job("b-4"); j.EventID != trimmed.EventID {
		t.Errorf("the trimmed job ran as event %s, want its own %s", j.EventID, trimmed.EventID)
	}

	r = e.do("GET", "/api/jobs/bulk/"+a.ID, nil, authBearer)
	e.expect(r, http.StatusOK)
	got := bulkAnswer(t, r)
	if len(got.Outcomes) != 4 || got.Filter.FailureKind != "business" || got.Filter.Step != "process-insights" {
		t.Fatalf("bulk action read back: %s", r.body)
	}
	details := map[string]string{}
	for _, o := range got.Outcomes {
		details[o.JobID] = o.Outcome + " " + o.Detail
	}
	if details["b-4"] != "done re-enqueued" || details["b-1"] != "done run" {
		t.Errorf("outcomes: %v", details)
	}
	r = e.do("GET", "/api/jobs/bulk", nil, authBearer)
	e.expect(r, http.StatusOK)
	if !strings.Contains(string(r.body), a.ID) {
		t.Errorf("the list of bulk actions misses %s: %s", a.ID, r.body)
	}
	e.expectError(e.do("GET", "/api/jobs/bulk/nope", nil, authBearer), http.StatusNotFound, "")

	// The audit trail has the action (not the dry run): who, the filter,
	// how many.
	list := e.audit(t, "?action=bulk-retry", authBearer)
	if list.Count != 1 {
		t.Fatalf("audit of bulk retries: %+v", list.Entries)
	}
	got0 := list.Entries[0]
	f, _ := json.Marshal(got0.Filter)
	if got0.User != "api-token" || got0.Target != a.ID || got0.Count == nil || *got0.Count != 4 ||
		string(f) != `{"failureKind":"business","status":"failed","step":"process-insights"}` {
		t.Errorf("audit entry: %+v filter %s", got0, f)
	}
}

func TestBulkRefusesBadInput(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, c := range []struct {
		body  string
		code  int
		field string
	}{
		{`{"action":"explode","filter":{}}`, 422, "action"},
		{`{"filter":{}}`, 422, "action"},
		{`{"action":"retry","filter":{"status":"lost"}}`, 422, "filter.status"},
		{`{"action":"retry","filter":{"failureKind":"cosmic"}}`, 422, "filter.failureKind"},
		{`{"action":"retry","filter":{"step":"dance"}}`, 422, "filter.step"},
		{`{"action":"retry","filter":{"systemId":"a b"}}`, 422, "filter.systemId"},
		{`{"action":"retry","filter":{"from":"yesterday"}}`, 422, "filter.from"},
		{`{"action":"retry","filter":{"from":"2026-12-02T00:00:00Z","to":"2026-12-01T00:00:00Z"}}`, 422, "filter.to"},
		{`{"action":"delete","filter":{}}`, 422, "filter"},
		{`{"action":"delete"}`, 422, "filter"},
		{`{"action":"delete","filter":{},"dryRun":true}`, 422, "filter"},
		{`{"action":"delete","filter":{},"all":false}`, 422, "filter"},
		{`{"action":"delete","filter":{"status":"completed","failureKind":"business"}}`, 422, "filter.status"},
		{`{"action":"retry","filter":{"colour":"red"}}`, 400, ""},
		{`{"action":"retry"} {}`, 400, ""},
		{`not json`, 400, ""},
	} {
		r := e.do("POST", "/api/jobs/bulk", c.body, authBearer)
		if r.code != c.code {
			t.Errorf("%s: %d, want %d: %s", c.body, r.code, c.code, r.body)
			continue
		}
		if got, _ := r.json(t)["field"].(string); got != c.field {
			t.Errorf("%s: field %q, want %q", c.body, got, c.field)
		}
	}
	// Every job, said in so many words.
	r := e.do("POST", "/api/jobs/bulk", `{"action":"delete","filter":{},"all":true,"dryRun":true}`, authBearer)
	if r.code != http.StatusOK {
		t.Errorf("dry run with all: %d %s", r.code, r.body)
	}
	// A time range selects by the job's last change.
	r = e.do("POST", "/api/jobs/bulk", `{"action":"delete","filter":{"from":"2026-12-01T00:00:00Z","to":"2026-12-02T00:00:00.5Z"},"dryRun":true}`, authBearer)
	e.expect(r, http.StatusOK)
}

// The failures are every failed job in MongoDB, grouped, however old and
// however many: asynq's archive drops the oldest, this does not.
func TestFailuresBeyondTheArchive(t *testing.T) {
	e := newEnv(t, envOptions{})
	ctx := context.Background()
	old := time.Now().AddDate(-1, 0, 0).UTC()
	var docs []any
	for i := range 620 {
		kind, step, msg := store.KindTransient, tasks.StepProcessInsights, "provider timeout"
		if i%5 == 0 {
			kind, step, msg = store.KindBusiness, tasks.StepValidate, "stateOfCharge out of range"
		}
		at := old.Add(time.Duration(i) * time.Minute)
		docs = append(docs, bson.M{"_id": fmt.Sprintf("old-%d", i), "id": fmt.Sprintf("old-%d", i), "status": "failed",
			"systemId": "sys-1", "eventId": fmt.Sprintf("ev-old-%d", i), "queue": "default", "createdAt": at, "updatedAt": at,
			"error": msg, "failure": bson.M{"kind": kind, "step": step, "message": msg, "at": at}})
	}
	// One the BMS app's own workload failed: no failure, an error string.
	docs = append(docs, bson.M{"_id": bson.NewObjectID(), "id": "app-failed", "status": "failed", "systemId": "sys-1",
		"createdAt": old, "updatedAt": old, "error": "Gemini quota exceeded"})
	if _, err := e.store.Database().Collection(store.JobsCollection).InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	r := e.do("GET", "/api/failures", nil, authBearer)
	e.expect(r, http.StatusOK)
	var f Failures
	if err := json.Unmarshal(r.body, &f); err != nil {
		t.Fatal(err)
	}
	if f.Total != 621 || len(f.Groups) != 3 {
		t.Fatalf("failures: total %d in %d groups, want 621 in 3", f.Total, len(f.Groups))
	}
	g := f.Groups[0]
	if g.Kind != store.KindTransient || g.Step != tasks.StepProcessInsights || g.Count != 496 || g.OldestAt.Year() != old.Year() {
		t.Errorf("largest group: %+v", g.FailureGroup)
	}
	if f.Groups[1].Count != 124 || f.Groups[1].Step != tasks.StepValidate || len(f.Groups[1].Examples) == 0 {
		t.Errorf("second group: %+v", f.Groups[1])
	}
	if a := f.Groups[2]; a.Kind != store.KindUnknown || a.Message != "Gemini quota exceeded" || a.Count != 1 {
		t.Errorf("the app's failure: %+v", a.FailureGroup)
	}
	// Each group is a filter: the list pages through all of its jobs, and a
	// bulk dry run counts them.
	r = e.do("GET", "/api/failures?failureKind=business", nil, authBearer)
	e.expect(r, http.StatusOK)
	_ = json.Unmarshal(r.body, &f)
	if f.Total != 124 || len(f.Groups) != 1 {
		t.Errorf("failures of kind business: %s", r.body)
	}
	var list JobList
	seen := map[string]bool{}
	for offset := 0; ; offset += 50 {
		r = e.do("GET", fmt.Sprintf("/api/jobs?status=failed&failureKind=business&step=validate&offset=%d", offset), nil, authBearer)
		e.expect(r, http.StatusOK)
		_ = json.Unmarshal(r.body, &list)
		for _, j := range list.Jobs {
			seen[j.ID] = true
		}
		if list.Count < 50 {
			break
		}
	}
	if len(seen) != 124 {
		t.Errorf("paged through %d jobs of the group, want 124", len(seen))
	}
	r = e.do("POST", "/api/jobs/bulk", map[string]any{"action": "retry", "dryRun": true,
		"filter": map[string]any{"status": "failed", "failureKind": "unknown", "message": "Gemini quota exceeded"}}, authBearer)
	e.expect(r, http.StatusOK)
	if strings.TrimSpace(string(r.body)) != `{"matched":1}` {
		t.Errorf("dry run of the app's group: %s", r.body)
	}
	e.expectError(e.do("GET", "/api/jobs?offset=-1", nil, authBearer), 422, "offset")

	// The failures page lists the failed jobs themselves, 50 a page, the
	// oldest reached by its "older" links.
	pages, listed := 0, map[string]bool{}
	for next := "/failures?failureKind=transient"; next != ""; pages++ {
		r = e.do("GET", next, nil, authBasic)
		e.expect(r, http.StatusOK)
		for _, m := range regexp.MustCompile(`<tr data-job="([^"]+)">`).FindAllStringSubmatch(string(r.body), -1) {
			listed[m[1]] = true
		}
		next = ""
		if m := regexp.MustCompile(`<a href="([^"]+)" id="older">`).FindStringSubmatch(string(r.body)); m != nil {
			next = html.UnescapeString(m[1])
		}
	}
	if len(listed) != 496 || pages != 10 || !listed["old-1"] {
		t.Errorf("the failures page listed %d transient failures in %d pages, want 496 in 10", len(listed), pages)
	}
}

func TestRerunFromAStepWithAnEditedPrompt(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	first := e.send("rr-1")["eventId"].(string)
	done := e.waitDone("rr-1")
	before := done.Steps

	r := e.do("POST", "/api/jobs/rr-1/rerun", map[string]any{"fromStep": "process-insights", "customPrompt": "Focus on winter autonomy"}, authBearer)
	e.expect(r, http.StatusAccepted)
	var res ops.RerunResult
	if err := json.Unmarshal(r.body, &res); err != nil {
		t.Fatal(err)
	}
	if res.EventID == "" || res.EventID == first || res.PreviousEventID != first || res.SendStatus != "succeeded" ||
		strings.Join(res.Reused, ",") != "initialize,fetch-job,validate" {
		t.Fatalf("rerun answer: %s", r.body)
	}
	j := testenvWaitRun(t, e, "rr-1", res.EventID)
	for _, name := range []string{"initialize", "fetch-job", "validate"} {
		st := j.Steps[name]
		if st.ReusedFrom != first || st.Runs != before[name].Runs || !st.FinishedAt.Equal(before[name].FinishedAt) {
			t.Errorf("step %s: %+v, want the first run's checkpoint kept (reusedFrom %s)", name, st, first)
		}
	}
	for _, name := range []string{"process-insights", "store-results", "send-completion"} {
		st := j.Steps[name]
		if st.ReusedFrom != "" || st.Runs != 1 || !st.StartedAt.After(before[name].FinishedAt) {
			t.Errorf("step %s: %+v, want it run again in the new run", name, st)
		}
	}
	final := finalOf(j.FinalInsights)
	if j.CustomPrompt != "Focus on winter autonomy" || final.Metrics["customPrompt"] != "Focus on winter autonomy" {
		t.Errorf("the edited prompt did not reach the engine: job %q, engine saw %v", j.CustomPrompt, final.Metrics["customPrompt"])
	}
	if j.RerunOf == nil || j.RerunOf.EventID != first || j.RerunOf.FromStep != "process-insights" {
		t.Errorf("rerunOf: %+v", j.RerunOf)
	}
	runs, err := e.store.PreviousRuns(context.Background(), j, 0)
	if err != nil || len(runs) != 1 || runs[0].EventID != first || runs[0].Status != tasks.StatusCompleted || len(runs[0].Steps) != 6 {
		t.Fatalf("previous runs: %+v, %v", runs, err)
	}
	// Both runs' follow-ups were sent, each once.
	e.waitTask(tasks.QueueLow, tasks.FollowUpTaskIDPrefix+first, 10*time.Second, asynq.TaskStateCompleted)
	e.waitTask(tasks.QueueLow, tasks.FollowUpTaskIDPrefix+res.EventID, 10*time.Second, asynq.TaskStateCompleted)

	if list := e.audit(t, "?action=rerun", authBearer); list.Count != 1 || list.Entries[0].Target != "rr-1" {
		t.Errorf("audit of the re-run: %+v", list.Entries)
	}

	// From the first step: nothing is kept.
	r = e.do("POST", "/api/jobs/rr-1/rerun", map[string]any{"fromStep": "initialize"}, authBearer)
	e.expect(r, http.StatusAccepted)
	_ = json.Unmarshal(r.body, &res)
	if len(res.Reused) != 0 {
		t.Errorf("a re-run from initialize keeps %v", res.Reused)
	}
	j = testenvWaitRun(t, e, "rr-1", res.EventID)
	if j.Steps["initialize"].ReusedFrom != "" {
		t.Errorf("initialize reused in a re-run from it")
	}
	if runs, _ := e.store.PreviousRuns(context.Background(), j, 0); len(runs) != 2 {
		t.Errorf("%d previous runs, want 2", len(runs))
	}
}

// testenvWaitRun waits for job's run eventID to complete, follow-up sent.
func testenvWaitRun(t *testing.T, e *env, jobID, eventID string) *store.Job {
	t.Helper()
	var j *store.Job
	deadline := time.Now().Add(20 * time.Second)
	for {
		j = e.job(jobID)
		if j.EventID == eventID && j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s of job %s not done: %s %+v", eventID, jobID, j.Status, j.Steps)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRerunRefusals(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.send("live-1") // no worker: it stays queued
	e.expectError(e.do("POST", "/api/jobs/live-1/rerun", `{"fromStep":"validate"}`, authBearer), http.StatusConflict, "")
	e.expectError(e.do("POST", "/api/jobs/nope/rerun", `{"fromStep":"validate"}`, authBearer), http.StatusNotFound, "")
	if _, err := e.server.ops.Cancel(context.Background(), e.job("live-1").EventID); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		body, field string
		code        int
	}{
		{`{"fromStep":"dance"}`, "fromStep", 422},
		{`{}`, "fromStep", 422},
		{`{"fromStep":"store-results","customPrompt":"x"}`, "fromStep", 422},
		{`{"fromStep":"validate","contextWindowDays":0}`, "contextWindowDays", 422},
		{`{"fromStep":"validate","maxIterations":51}`, "maxIterations", 422},
		{`{"fromStep":"validate","modelOverride":"bad model!"}`, "modelOverride", 422},
		{`{"fromStep":"validate","customPrompt":"` + strings.Repeat("x", 5001) + `"}`, "customPrompt", 422},
		{`{"fromStep":"validate","colour":"red"}`, "", 400},
	} {
		r := e.do("POST", "/api/jobs/live-1/rerun", c.body, authBearer)
		if r.code != c.code {
			t.Errorf("%.60s: %d, want %d: %s", c.body, r.code, c.code, r.body)
			continue
		}
		if got, _ := r.json(t)["field"].(string); got != c.field {
			t.Errorf("%.60s: field %q, want %q (%s)", c.body, got, c.field, r.body)
		}
	}
	// A cancelled job can be re-run.
	r := e.do("POST", "/api/jobs/live-1/rerun", `{"fromStep":"initialize","maxIterations":3}`, authBearer)
	e.expect(r, http.StatusAccepted)
	if j := e.job("live-1"); j.Status != tasks.StatusQueued || j.MaxIterations != 3 {
		t.Errorf("re-run of a cancelled job: %s maxIterations %d", j.Status, j.MaxIterations)
	}
}
