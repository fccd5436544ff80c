package web

import (
	"context"
	"errors"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// Snapshot content a store cannot hold is refused at the door, 422 naming
// the field, and nothing is written; before, it was recorded and answered
// 503 with the driver's or SQL's text, and a BMS app that retries 5xx
// retried it for ever (issue 22, item 6).
func TestSnapshotContentRefusedAtTheDoor(t *testing.T) {
	e := newEnv(t, envOptions{})
	parent := t
	deep := `{"stateOfCharge":50,"x":` + strings.Repeat(`{"x":`, 2999) + "1" + strings.Repeat("}", 3000)
	deepField := "eventData.analysisData" + strings.Repeat(".x", tasks.MaxSnapshotDepth)
	cases := []struct {
		name, snapshot, field, says string
	}{
		{"dollar key", `{"stateOfCharge":50,"$where":"1"}`, `eventData.analysisData."$where"`, "must not contain `$` or `.`"},
		{"dotted key", `{"stateOfCharge":50,"cell.1":3.3}`, `eventData.analysisData."cell.1"`, "must not contain `$` or `.`"},
		{"dotted key inside", `{"stateOfCharge":50,"pack":{"ok":1,"a.b":2}}`, `eventData.analysisData.pack."a.b"`, "must not contain"},
		{"NUL in a key", `{"stateOfCharge":50,"a\u0000b":1}`, `eventData.analysisData."a\x00b"`, "NUL"},
		{"3000 levels deep", deep, deepField, "over the limit of " + strconv.Itoa(tasks.MaxSnapshotDepth)},
		{"infinite number", `{"stateOfCharge":50,"power2":1e400}`, "eventData.analysisData.power2", "finite number"},
		{"infinite number in a list", `{"stateOfCharge":50,"readings":[1,-1e400]}`, "eventData.analysisData.readings.1", "finite number"},
	}
	if os.Getenv("MONGODB_URI") == "" {
		// The embedded FerretDB v1 cannot store an array inside an array.
		cases = append(cases, struct{ name, snapshot, field, says string }{
			"nested arrays on FerretDB", `{"stateOfCharge":50,"cellGroups":[[3.31,3.32],[3.33,3.34]]}`, "eventData.analysisData.cellGroups.0", "FerretDB"})
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			defer func() { e.t = parent }()
			jobID := "bad-snapshot-" + strconv.Itoa(i)
			body := `{"eventName":"generate-insights","eventData":{"jobId":"` + jobID + `","systemId":"sys-1","analysisData":` + c.snapshot + `}}`
			r := e.do("POST", "/api/events", body, authBearer)
			m := e.expectError(r, http.StatusUnprocessableEntity, c.field)
			if msg, _ := m["error"].(string); !strings.Contains(msg, c.says) {
				t.Errorf("error %q does not say %q", msg, c.says)
			}
			if _, err := e.store.GetJob(context.Background(), jobID); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("the refused send wrote its job (err %v)", err)
			}
		})
	}
	// The Netlify router's events too: what no store can hold is refused
	// at the door, never recorded as a job its validate step would fail.
	data := snapshotData("bad-router")
	data["analysisData"] = map[string]any{"stateOfCharge": 50, "$where": "1"}
	e.expectError(e.do("POST", RouterPath, []any{routerEvent("ev-bad-snapshot", data)}, authBearer),
		http.StatusUnprocessableEntity, `[0].data.analysisData."$where"`)
	if _, err := e.store.GetJob(context.Background(), "bad-router"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused router event wrote its job (err %v)", err)
	}
	// Within the limit, and arrays of objects, are taken and stored.
	ok := strings.Repeat(`{"x":`, tasks.MaxSnapshotDepth-1) + "1" + strings.Repeat("}", tasks.MaxSnapshotDepth-1)
	body := `{"eventName":"generate-insights","eventData":{"jobId":"deep-ok","systemId":"sys-1","analysisData":` +
		`{"stateOfCharge":50,"groups":[{"cells":[3.3,3.31]}],"deep":` + ok + `}}}`
	e.expect(e.do("POST", "/api/events", body, authBearer), http.StatusAccepted)
	if j := e.job("deep-ok"); j.AnalysisData == nil || j.AnalysisData.Extra["deep"] == nil {
		t.Fatalf("the snapshot within the limit was not stored whole: %+v", j.AnalysisData)
	}
}

// A store outage is answered 503 naming the store that is down, never with
// the error's own text (driver messages, addresses): the detail goes to
// the log only.
func TestUnavailableAnswersNameTheStoreOnly(t *testing.T) {
	st, p := proxiedStore(t)
	e := newEnv(t, envOptions{store: st})
	e.send("before-the-outage")
	p.close()
	for _, c := range []struct{ method, path string }{
		{"GET", "/api/jobs/before-the-outage"},
		{"POST", "/api/events"},
	} {
		var body any
		if c.method == "POST" {
			body = eventBody("during-the-outage")
		}
		r := e.do(c.method, c.path, body, authBearer)
		m := e.expectError(r, http.StatusServiceUnavailable, "")
		msg, _ := m["error"].(string)
		if !strings.Contains(msg, "MongoDB is unavailable") {
			t.Errorf("%s %s: %q does not name MongoDB as down", c.method, c.path, msg)
		}
		for _, internal := range []string{"127.0.0.1", "dial", "connection", "server selection", "context deadline", "EOF", p.addr()} {
			if strings.Contains(string(r.body), internal) {
				t.Errorf("%s %s: the answer carries internal text %q: %s", c.method, c.path, internal, r.body)
			}
		}
	}
}
