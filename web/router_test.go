package web

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

const routerURL = RouterPath + "?events=%5B%22generate-insights%22%5D&client-context=awl-client"

// routerEvent is one event as the Netlify client sends it.
func routerEvent(eventID string, data map[string]any, kv ...any) map[string]any {
	ev := map[string]any{"eventName": tasks.EventGenerateInsights, "eventId": eventID, "data": data, "priority": 0,
		"baseUrl": "https://bms.example", "eventChain": []string{tasks.EventGenerateInsights}}
	for i := 0; i+1 < len(kv); i += 2 {
		ev[kv[i].(string)] = kv[i+1]
	}
	return ev
}

func snapshotData(jobID string) map[string]any {
	return map[string]any{"jobId": jobID, "systemId": "sys-1", "analysisData": map[string]any{"stateOfCharge": 64, "current": -3},
		"customPrompt": nil, "contextWindowDays": nil, "maxIterations": nil, "modelOverride": nil, "fullContextMode": nil}
}

func TestRouterPrioritiesAndRefusals(t *testing.T) {
	e := newEnv(t, envOptions{})
	// Netlify's priorities onto the queues: the app's 5 and Netlify's
	// default 0 are normal work, 10 urgent.
	for _, c := range []struct {
		priority any
		queue    string
	}{{nil, tasks.QueueDefault}, {0, tasks.QueueDefault}, {5, tasks.QueueDefault}, {7, tasks.QueueHigh},
		{10, tasks.QueueCritical}, {50, tasks.QueueCritical}, {-9, tasks.QueueDefault}, {-10, tasks.QueueLow}} {
		t.Run(fmt.Sprint("priority ", c.priority), func(t *testing.T) {
			e.t = t
			name := strings.NewReplacer("-", "m", "<", "", ">", "").Replace(fmt.Sprint(c.priority))
			id := "ev-prio-" + name
			ev := routerEvent(id, snapshotData("job-prio-"+name), "priority", c.priority)
			r := e.do("POST", routerURL, []any{ev}, authBearer)
			e.expect(r, http.StatusAccepted)
			out := r.json(t)["events"].([]any)[0].(map[string]any)
			if out["eventId"] != id || out["sendStatus"] != "succeeded" || out["queue"] != c.queue {
				t.Fatalf("answer %v, want eventId %s in %s", out, id, c.queue)
			}
		})
	}
	e.t = t

	// Each event on its own: the first is sent, the second refused, and
	// the answer names the event and the field.
	r := e.do("POST", RouterPath, []any{routerEvent("ev-ok-1", snapshotData("job-mixed-1")),
		routerEvent("ev-bad-2", map[string]any{"analysisData": map[string]any{"current": 1}})}, authBearer)
	m := e.expectError(r, http.StatusUnprocessableEntity, "[1].data.systemId")
	evs := m["events"].([]any)
	if evs[0].(map[string]any)["sendStatus"] != "succeeded" || evs[1].(map[string]any)["sendStatus"] != "refused" {
		t.Fatalf("outcomes %v", evs)
	}
	if j := e.job("job-mixed-1"); j.EventID != "ev-ok-1" {
		t.Fatalf("the accepted event's job: %+v", j)
	}

	// Out of range is the validate step's (the app polls its job); what
	// the event filter refuses, and what the client could not have sent,
	// are refused at the door.
	data := snapshotData("job-range")
	data["contextWindowDays"] = 400
	e.expect(e.do("POST", RouterPath, []any{routerEvent("ev-range", data)}, authBearer), http.StatusAccepted)
	for _, c := range []struct {
		name  string
		body  any
		code  int
		field string
	}{
		{"not an array", `"generate-insights"`, 400, ""},
		{"empty array", `[]`, 400, ""},
		{"unknown event", []any{routerEvent("ev-x", snapshotData("j"), "eventName", "other")}, 400, ""},
		{"no eventId", []any{routerEvent("", snapshotData("j-noid"))}, 422, "[0].eventId"},
		{"bad eventId", []any{routerEvent("a b", snapshotData("j-badid"))}, 422, "[0].eventId"},
		{"priority out of range", []any{routerEvent("ev-p", snapshotData("j-p"), "priority", 51)}, 422, "[0].priority"},
		{"delay over a year", []any{routerEvent("ev-d", snapshotData("j-d"), "delayUntil", time.Now().Add(400*24*time.Hour).UnixMilli())}, 422, "[0].delayUntil"},
		{"no data", []any{routerEvent("ev-nd", nil)}, 422, "[0].data"},
		{"wrong type", []any{routerEvent("ev-wt", map[string]any{"jobId": "j-wt", "maxIterations": "ten"})}, 422, "[0].data.maxIterations"},
		{"delete everything", []any{map[string]any{"eventName": tasks.EventDeleteEvents, "eventId": "ev-del", "data": map[string]any{}}}, 422, "[0].data.eventIds"},
		{"delete unknown state", []any{map[string]any{"eventName": tasks.EventDeleteEvents, "eventId": "ev-del2", "data": map[string]any{"states": []string{"gone"}}}}, 422, "[0].data.states[0]"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			e.expectError(e.do("POST", RouterPath, c.body, authBearer), c.code, c.field)
		})
	}
	e.t = t
	// The query names the events the body holds.
	e.expectError(e.do("POST", RouterPath+`?events=%5B%22other%22%5D`, []any{routerEvent("ev-q", snapshotData("j-q"))}, authBearer), 400, "events")
	// A chain at the limit is a loop: 508, nothing recorded.
	chain := make([]string, tasks.EventChainLimit)
	for i := range chain {
		chain[i] = tasks.EventGenerateInsights
	}
	e.expect(e.do("POST", RouterPath, []any{routerEvent("ev-loop", snapshotData("job-loop"), "eventChain", chain)}, authBearer), http.StatusLoopDetected)
	if _, err := e.store.GetJob(context.Background(), "job-loop"); err == nil {
		t.Fatal("a looping event recorded its job")
	}
	// Without credentials, nothing is sent.
	e.expect(e.do("POST", RouterPath, []any{routerEvent("ev-viewer", snapshotData("job-viewer"))}, authNone), http.StatusUnauthorized)
}

func TestRouterEventIDsAreOnce(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	ev := routerEvent("ev-once", snapshotData("job-once"))
	e.expect(e.do("POST", routerURL, []any{ev}, authBearer), http.StatusAccepted)
	j := e.waitDone("job-once")
	// Sent again after its run ended, and again for another job: never a
	// second run.
	r := e.do("POST", routerURL, []any{ev}, authBearer)
	e.expect(r, http.StatusAccepted)
	if out := r.json(t)["events"].([]any)[0].(map[string]any); out["sendStatus"] != "duplicate" || out["eventId"] != "ev-once" {
		t.Fatalf("resend: %v", out)
	}
	e.expectError(e.do("POST", routerURL, []any{routerEvent("ev-once", snapshotData("job-other"))}, authBearer), 422, "eventId")
	if j2 := e.job("job-once"); j2.EventID != j.EventID || j2.Attempts != j.Attempts || j2.Status != tasks.StatusCompleted {
		t.Fatalf("after resends: %+v", j2)
	}
	// The events route finds it, with its state in Netlify's words.
	r = e.do("GET", netlifyBase+"/events/ev-once", nil, authBearer)
	e.expect(r, http.StatusOK)
	if m := r.json(t); m["netlifyState"] != "done" || m["jobId"] != "job-once" {
		t.Fatalf("events route: %s", r.body)
	}

	// Nothing measured: refused at /api/events, failed in validate on the
	// app's paths, which its poll reads.
	e.expectError(e.do("POST", "/api/events", map[string]any{"eventName": "generate-insights", "eventData": map[string]any{
		"jobId": "job-blank-api", "systemId": "sys-1", "analysisData": map[string]any{"summary": "unreadable screenshot", "stateOfChrage": 50}}},
		authBearer), 422, "eventData.analysisData")
	blank := map[string]any{"jobId": "job-blank", "systemId": "sys-1", "analysisData": map[string]any{"summary": "unreadable screenshot", "stateOfChrage": 50}}
	e.expect(e.do("POST", routerURL, []any{routerEvent("ev-blank", blank)}, authBearer), http.StatusAccepted)
	f := e.waitStatus("job-blank", tasks.StatusFailed, 30*time.Second)
	if f.Failure == nil || f.Failure.Step != tasks.StepValidate || !strings.Contains(f.Failure.Message, "no measured value") ||
		f.Steps[tasks.StepProcessInsights].Status != "" {
		t.Fatalf("failure %+v steps %v", f.Failure, f.Steps)
	}
	r = e.do("GET", StatusPathBMS+"?jobId=job-blank", nil, authBearer)
	if m := r.json(t); m["status"] != "failed" || !strings.Contains(fmt.Sprint(m["error"]), "no measured value") {
		t.Fatalf("status route: %s", r.body)
	}
}

// TestStatusRouteFourStatuses: the app's front end knows queued,
// processing, completed and failed; every status of ours maps onto one,
// so every job ends its poll.
func TestStatusRouteFourStatuses(t *testing.T) {
	e := newEnv(t, envOptions{})
	jobs := e.store.Database().Collection(store.JobsCollection)
	now := time.Now().UTC()
	msg := "boom"
	for _, c := range []struct {
		status, app string
		fields      []string
	}{
		{tasks.StatusQueued, "queued", nil},
		{tasks.StatusScheduled, "queued", nil},
		{tasks.StatusProcessing, "processing", []string{"progress", "progressCount", "currentStage"}},
		{tasks.StatusRetrying, "processing", []string{"progress", "progressCount", "currentStage"}},
		{tasks.StatusCompleted, "completed", []string{"insights", "completedAt", "metadata"}},
		{tasks.StatusFailed, "failed", []string{"error", "failedAt", "failureReason", "failureCategory", "suggestions", "lastProgressEvent", "progressCount"}},
		{tasks.StatusCancelled, "failed", []string{"error", "failedAt", "failureReason", "failureCategory", "suggestions"}},
	} {
		t.Run(c.status, func(t *testing.T) {
			e.t = t
			id := "job-four-" + c.status
			doc := bson.D{{Key: "_id", Value: bson.NewObjectID()}, {Key: "id", Value: id}, {Key: "status", Value: c.status},
				{Key: "progress", Value: bson.A{bson.D{{Key: "timestamp", Value: now}, {Key: "type", Value: "error"},
					{Key: "data", Value: bson.D{{Key: "message", Value: msg}, {Key: "error", Value: msg}}}}}},
				{Key: "error", Value: msg}, {Key: "failure", Value: bson.D{{Key: "kind", Value: "transient"}, {Key: "message", Value: msg}}},
				{Key: "createdAt", Value: now}, {Key: "updatedAt", Value: now}}
			if c.status == tasks.StatusCompleted {
				doc = append(doc, bson.E{Key: "finalInsights", Value: bson.D{{Key: "rawText", Value: "## KEY FINDINGS"},
					{Key: "metadata", Value: bson.D{{Key: "turns", Value: 1}, {Key: "toolCalls", Value: 0}}}}})
			}
			if _, err := jobs.InsertOne(context.Background(), doc); err != nil {
				t.Fatal(err)
			}
			r := e.do("GET", StatusPathBMS+"?jobId="+id, nil, authBearer)
			e.expect(r, http.StatusOK)
			m := r.json(t)
			if m["status"] != c.app || m["workloadStatus"] != c.status {
				t.Fatalf("status %v workloadStatus %v, want %s and %s", m["status"], m["workloadStatus"], c.app, c.status)
			}
			for _, f := range c.fields {
				if m[f] == nil {
					t.Errorf("%s: no %s in %s", c.status, f, r.body)
				}
			}
		})
	}
}

// TestRefusedSendChangesNothing: a send is checked whole, the size of its
// encoded task included, before anything is written: a refusal leaves a
// completed job and its insights as they were (issue 22, item 1).
func TestRefusedSendChangesNothing(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.expect(e.do("POST", "/api/events", eventBody("job-kept"), authBearer), http.StatusAccepted)
	before := e.waitDone("job-kept")
	if before.FinalInsights == nil {
		t.Fatal("no insights to keep")
	}
	// 90 KB of '<' is 540 KB once the task is encoded (each escaped to
	// \u003c): over the limit, though the body is not.
	body := `{"eventName":"generate-insights","eventData":{"jobId":"job-kept","systemId":"sys-1",` +
		`"analysisData":{"stateOfCharge":50,"summary":"` + strings.Repeat("<", 90_000) + `"}}}`
	for _, path := range []string{"/api/events", netlifyBase + "/send"} {
		e.expectError(e.do("POST", path, body, authBearer), http.StatusUnprocessableEntity, "eventData.analysisData")
	}
	after := e.job("job-kept")
	if after.Status != tasks.StatusCompleted || after.EventID != before.EventID || after.FinalInsights == nil ||
		after.AnalysisData == nil || after.AnalysisData.Summary != before.AnalysisData.Summary || len(after.PreviousEventIDs) != 0 {
		t.Fatalf("the refused send changed the job: status %s eventId %s (was %s) insights %v previous %v",
			after.Status, after.EventID, before.EventID, after.FinalInsights != nil, after.PreviousEventIDs)
	}
}
