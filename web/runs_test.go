package web

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/bmsview/insights/tasks"
)

// Every ended run keeps its result: a new send of a completed job, then a
// re-run of it, each replace the job's finalInsights, and the earlier
// results stay in the job's runs, shown by GET /api/jobs/{jobId} and the
// job page (issue 22, item 1); before, they were gone for good.
func TestEndedRunsKeepTheirInsights(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	prompt := func(v any) string {
		m, _ := v.(map[string]any)
		metrics, _ := m["metrics"].(map[string]any)
		s, _ := metrics["customPrompt"].(string)
		return s
	}
	send := func(p string) string {
		r := e.do("POST", "/api/events", `{"eventName":"generate-insights","eventData":{"jobId":"keep-1","systemId":"sys-1","customPrompt":"`+p+`","analysisData":{"stateOfCharge":70}}}`, authBearer)
		e.expect(r, http.StatusAccepted)
		id, _ := r.json(t)["eventId"].(string)
		return id
	}
	first := send("first")
	testenvWaitRun(t, e, "keep-1", first)
	second := send("second")
	if second == first {
		t.Fatal("the second send did not start a new run")
	}
	testenvWaitRun(t, e, "keep-1", second)
	r := e.do("POST", "/api/jobs/keep-1/rerun", map[string]any{"fromStep": tasks.StepProcessInsights, "customPrompt": "third"}, authBearer)
	e.expect(r, http.StatusAccepted)
	third, _ := r.json(t)["eventId"].(string)
	testenvWaitRun(t, e, "keep-1", third)

	r = e.do("GET", "/api/jobs/keep-1", nil, authBearer)
	e.expect(r, http.StatusOK)
	var view struct {
		EventID       string `json:"eventId"`
		FinalInsights any    `json:"finalInsights"`
		Runs          []struct {
			EventID       string `json:"eventId"`
			Status        string `json:"status"`
			FinalInsights any    `json:"finalInsights"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(r.body, &view); err != nil {
		t.Fatal(err)
	}
	if view.EventID != third || prompt(view.FinalInsights) != "third" {
		t.Fatalf("current run %s with insights of %q, want %s with the third's", view.EventID, prompt(view.FinalInsights), third)
	}
	if len(view.Runs) != 2 {
		t.Fatalf("%d ended runs, want 2: %s", len(view.Runs), r.body)
	}
	for i, want := range []struct{ id, prompt string }{{second, "second"}, {first, "first"}} {
		run := view.Runs[i]
		raw, _ := run.FinalInsights.(map[string]any)
		if run.EventID != want.id || run.Status != tasks.StatusCompleted || prompt(run.FinalInsights) != want.prompt || raw["rawText"] == "" {
			t.Errorf("runs[%d]: %s %s insights %v; want %s completed with the %s run's insights", i, run.EventID, run.Status, run.FinalInsights, want.id, want.prompt)
		}
	}
	page := e.do("GET", "/jobs/keep-1", nil, authBasic)
	e.expect(page, http.StatusOK)
	if n := strings.Count(string(page.body), "Insights of this run"); n != 2 {
		t.Errorf("the job page shows the insights of %d ended runs, want 2", n)
	}
}
