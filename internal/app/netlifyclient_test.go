package app_test

// The BMS app's own Netlify client (docs/DESIGN.md section 12): the locked
// npm package @netlify/async-workloads 0.0.92 itself, installed from
// testdata/netlify-client's lock file (`npm ci` there; .ci/run does it),
// driven by a Node script that calls it exactly as the app's
// insights-async-client.cjs does, against this service with its worker.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/bmsview/insights/web"
)

// netlifyClientDir holds the package's lock file and the send script.
const netlifyClientDir = "testdata/netlify-client"

// clientCall is one AsyncWorkloadsClient.send of the script.
type clientCall struct {
	EventName string         `json:"eventName"`
	Options   map[string]any `json:"options"`
	Chain     []string       `json:"chain,omitempty"`
}

// clientResult is what the client's send returned to the app.
type clientResult struct {
	SendStatus string `json:"sendStatus"`
	EventID    string `json:"eventId"`
}

// netlifyClient runs the installed package; it skips the test where Node
// or the package is missing, except in CI, where that is a failure.
func netlifyClient(t *testing.T) func(env map[string]string, calls ...clientCall) []clientResult {
	t.Helper()
	missing := func(what string) {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s (CI must run `npm ci` in internal/app/%s)", what, netlifyClientDir)
		}
		t.Skipf("%s: run `npm ci` in internal/app/%s", what, netlifyClientDir)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed")
	}
	if _, err := os.Stat(filepath.Join(netlifyClientDir, "node_modules", "@netlify", "async-workloads", "package.json")); err != nil {
		missing("@netlify/async-workloads is not installed")
	}
	return func(env map[string]string, calls ...clientCall) []clientResult {
		t.Helper()
		in, _ := json.Marshal(calls)
		cmd := exec.Command(node, "send.cjs")
		cmd.Dir = netlifyClientDir
		cmd.Stdin = bytes.NewReader(in)
		cmd.Env = append(os.Environ(), "NODE_NO_WARNINGS=1")
		for k, v := range env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("node send.cjs: %v\n%s", err, stderr.String())
		}
		var out []clientResult
		sc := bufio.NewScanner(&stdout)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "RESULT ")
			if !ok {
				continue // the client's own log lines
			}
			var r clientResult
			if err := json.Unmarshal([]byte(line), &r); err != nil {
				t.Fatalf("client output %q: %v", sc.Text(), err)
			}
			out = append(out, r)
		}
		if len(out) != len(calls) {
			t.Fatalf("%d answers for %d sends; stderr:\n%s", len(out), len(calls), stderr.String())
		}
		return out
	}
}

// routerLog records the router's answers and, when told to, loses the
// answer to the next router POST after the service handled it (the
// connection drops): the client then sends it again, same eventId.
type routerLog struct {
	next http.Handler
	mu   sync.Mutex
	// codes are the router's status codes, in order.
	codes    []int
	dropNext bool
	dropped  string // the eventId whose answer was lost
}

func (l *routerLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != web.RouterPath {
		l.next.ServeHTTP(w, r)
		return
	}
	body, _ := readAll(r)
	var evs []struct {
		EventID string `json:"eventId"`
	}
	_ = json.Unmarshal(body, &evs)
	r.Body = nopCloser{bytes.NewReader(body)}
	rec := httptest.NewRecorder()
	l.next.ServeHTTP(rec, r)
	l.mu.Lock()
	l.codes = append(l.codes, rec.Code)
	drop := l.dropNext && len(evs) == 1
	if drop {
		l.dropNext, l.dropped = false, evs[0].EventID
	}
	l.mu.Unlock()
	if drop {
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func (l *routerLog) lastCode() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.codes) == 0 {
		return 0
	}
	return l.codes[len(l.codes)-1]
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

func readAll(r *http.Request) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(r.Body)
	return b.Bytes(), err
}

func TestNetlifyClientDropIn(t *testing.T) {
	send := netlifyClient(t)
	a := e2eOpen(t, nil, app.WorkerOptions{}, nil)
	// Two keys, as while the app's AWL_API_KEY rotates: the client sends
	// the second.
	operator := a.NewOperator(testenv.Logger())
	t.Cleanup(operator.Close)
	ws := web.New(web.Config{Store: a.Store, Client: a.Client, Inspector: a.Inspector, RedisConnOpt: a.Redis,
		APIToken: "old-key-0123456789, " + bmsToken, AdminPassword: "pw", Operator: operator, Logger: testenv.Logger()})
	log := &routerLog{next: ws.Handler()}
	srv := httptest.NewServer(log)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { _ = ws.Close() })
	ctx := context.Background()
	now := time.Now().UTC()
	fx := bmsSeed(t, a, now)
	env := map[string]string{"URL": srv.URL, "AWL_API_KEY": bmsToken}
	jobs := a.Store.Database().Collection("insights-jobs")
	status := func(jobID string) map[string]any {
		t.Helper()
		code, st := bmsGet(t, srv.URL+"/.netlify/functions/generate-insights-status?jobId="+jobID)
		if code != http.StatusOK {
			t.Fatalf("status of %s: %d %v", jobID, code, st)
		}
		return st
	}
	// appSend is the app's triggerInsightsWorkload: its job is created
	// first, then the client sends the request fields (nulls and all).
	appSend := func(jobID string, analysis map[string]any, priority int, delayUntil any) clientResult {
		t.Helper()
		bmsAppJob(t, a, jobID, fx.systemID, analysis, tasks.StatusQueued)
		opts := map[string]any{"data": map[string]any{"jobId": jobID, "analysisData": analysis, "systemId": fx.systemID,
			"customPrompt": nil, "contextWindowDays": 30, "maxIterations": nil, "modelOverride": nil, "fullContextMode": false},
			"priority": priority}
		if delayUntil != nil {
			opts["delayUntil"] = delayUntil
		}
		res := send(env, clientCall{EventName: tasks.EventGenerateInsights, Options: opts})[0]
		if res.SendStatus != "succeeded" || res.EventID == "" {
			t.Fatalf("send of %s: %+v (router answered %d)", jobID, res, log.lastCode())
		}
		return res
	}

	t.Run("the run completes in place under the client's eventId; a resent POST starts nothing", func(t *testing.T) {
		jobID := fmt.Sprintf("insights_%d_client01", now.UnixMilli())
		// The first POST loses its answer, so the client sends it again
		// with the eventId it made.
		log.mu.Lock()
		log.dropNext = true
		n0 := len(log.codes)
		log.mu.Unlock()
		res := appSend(jobID, bmsSnapshotDoc(), 5, nil)
		log.mu.Lock()
		dropped, codes := log.dropped, append([]int(nil), log.codes[n0:]...)
		log.mu.Unlock()
		if dropped != res.EventID || len(codes) != 2 || codes[0] != http.StatusAccepted || codes[1] != http.StatusAccepted {
			t.Fatalf("lost answer for %q, client's eventId %q, router answers %v: want two 202s for one eventId", dropped, res.EventID, codes)
		}
		j := testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "completed", func(j *store.Job) bool {
			return j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
		})
		if j.EventID != res.EventID || j.Queue != tasks.QueueDefault || len(j.PreviousEventIDs) != 0 || j.Attempts != 1 {
			t.Fatalf("job: eventId %s queue %s previous %v attempts %d; want the client's %s, default, one run, one attempt",
				j.EventID, j.Queue, j.PreviousEventIDs, j.Attempts, res.EventID)
		}
		if n, _ := jobs.CountDocuments(ctx, bson.D{{Key: "id", Value: jobID}}); n != 1 {
			t.Fatalf("%d documents for %s, want the app's one", n, jobID)
		}
		// The service tracks the client's eventId: the events route.
		code, ev := bmsGet(t, srv.URL+"/.netlify/functions/async-workloads/events/"+res.EventID)
		if code != http.StatusOK || ev["eventId"] != res.EventID || ev["jobId"] != jobID || ev["netlifyState"] != "done" {
			t.Fatalf("events/%s: %d %v", res.EventID, code, ev)
		}
		st := status(jobID)
		if st["status"] != "completed" || st["workloadStatus"] != "completed" || st["finalInsights"] == nil {
			t.Fatalf("status: %v", st)
		}
		// The same send again, once the run has ended (the app's retry of
		// a POST whose answer it never read): a duplicate, no new run.
		code, again := bmsPost(t, srv.URL+web.RouterPath+"?events=%5B%22generate-insights%22%5D&client-context=awl-client",
			[]map[string]any{{"eventName": "generate-insights", "eventId": res.EventID, "data": map[string]any{"jobId": jobID},
				"priority": 5, "baseUrl": srv.URL, "eventChain": []string{"generate-insights"}}})
		evs, _ := again["events"].([]any)
		if code != http.StatusAccepted || len(evs) != 1 || asMap(t, evs[0])["sendStatus"] != "duplicate" {
			t.Fatalf("resend after the run: %d %v", code, again)
		}
		if j2, _ := a.Store.GetJob(ctx, jobID); j2.EventID != res.EventID || j2.Status != tasks.StatusCompleted {
			t.Fatalf("after the resend: eventId %s status %s", j2.EventID, j2.Status)
		}
	})

	t.Run("priority 10 lands in critical", func(t *testing.T) {
		jobID := fmt.Sprintf("insights_%d_urgent01", now.UnixMilli())
		res := appSend(jobID, bmsSnapshotDoc(), 10, nil)
		j := testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "completed", func(j *store.Job) bool { return j.Status == tasks.StatusCompleted })
		if j.Queue != tasks.QueueCritical || j.EventID != res.EventID {
			t.Fatalf("queue %s eventId %s, want critical and %s", j.Queue, j.EventID, res.EventID)
		}
	})

	t.Run("delayUntil is honoured", func(t *testing.T) {
		jobID := fmt.Sprintf("insights_%d_delayed1", now.UnixMilli())
		due := time.Now().Add(5 * time.Second).Truncate(time.Millisecond)
		appSend(jobID, bmsSnapshotDoc(), 5, due.UnixMilli())
		j := testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "completed", func(j *store.Job) bool { return j.Status == tasks.StatusCompleted })
		if j.ProcessAt == nil || !j.ProcessAt.Equal(due) {
			t.Fatalf("processAt %v, want the delayUntil %v", j.ProcessAt, due)
		}
		if started := j.Steps[tasks.StepInitialize].StartedAt; started.IsZero() || started.Before(due) {
			t.Fatalf("the run started at %v, before its delayUntil %v", started, due)
		}
	})

	t.Run("a value out of range fails the job in validate; awl:retry-failed-events runs it again", func(t *testing.T) {
		jobID := fmt.Sprintf("insights_%d_badsoc01", now.UnixMilli())
		snap := bmsSnapshotDoc()
		snap["stateOfCharge"] = 150
		res := appSend(jobID, snap, 5, nil)
		testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "failed", func(j *store.Job) bool { return j.Status == tasks.StatusFailed })
		st := status(jobID)
		if st["status"] != "failed" || !strings.Contains(fmt.Sprint(st["error"]), "stateOfCharge") || st["failureReason"] == nil {
			t.Fatalf("status: %v", st)
		}
		// The app corrects its document and retries the dead-lettered
		// event through its client.
		if _, err := jobs.UpdateOne(ctx, bson.D{{Key: "id", Value: jobID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "analysisData.stateOfCharge", Value: 64}}}}); err != nil {
			t.Fatal(err)
		}
		r := send(env, clientCall{EventName: tasks.EventRetryFailed, Options: map[string]any{"data": map[string]any{"eventIds": []string{res.EventID}}}})[0]
		if r.SendStatus != "succeeded" || log.lastCode() != http.StatusAccepted {
			t.Fatalf("awl:retry-failed-events: %+v (router %d)", r, log.lastCode())
		}
		j := testenv.WaitJob(t, a.Store, jobID, 60*time.Second, "completed", func(j *store.Job) bool { return j.Status == tasks.StatusCompleted })
		if j.EventID != res.EventID {
			t.Fatalf("eventId %s after the retry, want %s", j.EventID, res.EventID)
		}
		entries, err := a.Store.ListAudit(ctx, store.AuditQuery{Action: tasks.EventRetryFailed})
		if err != nil || len(entries) != 1 || entries[0].User != web.TokenUser || entries[0].Count == nil || *entries[0].Count != 1 {
			t.Fatalf("audit: %+v %v", entries, err)
		}
	})

	t.Run("the app reads queued while delayed; awl:delete-events cancels it and the app reads failed", func(t *testing.T) {
		jobID := fmt.Sprintf("insights_%d_later001", now.UnixMilli())
		res := appSend(jobID, bmsSnapshotDoc(), 5, time.Now().Add(2*time.Hour).UnixMilli())
		if st := status(jobID); st["status"] != "queued" || st["workloadStatus"] != "scheduled" {
			t.Fatalf("status while delayed: %v", st)
		}
		r := send(env, clientCall{EventName: tasks.EventDeleteEvents, Options: map[string]any{"data": map[string]any{"eventIds": []string{res.EventID}, "states": []string{"delayed"}}}})[0]
		if r.SendStatus != "succeeded" {
			t.Fatalf("awl:delete-events: %+v", r)
		}
		j, _ := a.Store.GetJob(ctx, jobID)
		if j.Status != tasks.StatusCancelled {
			t.Fatalf("job %s after delete-events", j.Status)
		}
		st := status(jobID)
		if st["status"] != "failed" || st["workloadStatus"] != "cancelled" || !strings.Contains(fmt.Sprint(st["error"]), "cancelled") {
			t.Fatalf("status of a cancelled job: %v", st)
		}
		// A state that was not asked for is left alone.
		otherID := fmt.Sprintf("insights_%d_later002", now.UnixMilli())
		other := appSend(otherID, bmsSnapshotDoc(), 5, time.Now().Add(2*time.Hour).UnixMilli())
		send(env, clientCall{EventName: tasks.EventDeleteEvents, Options: map[string]any{"data": map[string]any{"eventIds": []string{other.EventID}, "states": []string{"hibernating"}}}})
		if j, _ := a.Store.GetJob(ctx, otherID); j.Status != tasks.StatusScheduled {
			t.Fatalf("a delayed event deleted as hibernating: %s", j.Status)
		}
	})

	t.Run("a chain of 20 is a loop: 508, nothing sent", func(t *testing.T) {
		jobID := fmt.Sprintf("insights_%d_looping1", now.UnixMilli())
		bmsAppJob(t, a, jobID, fx.systemID, bmsSnapshotDoc(), tasks.StatusQueued)
		chain := make([]string, tasks.EventChainLimit-1)
		for i := range chain {
			chain[i] = tasks.EventGenerateInsights
		}
		// The client blocks its own chains at AWL_EVENT_CHAIN_LIMIT: raised
		// here so that the service's check is what is tried.
		loopEnv := map[string]string{"URL": srv.URL, "AWL_API_KEY": bmsToken, "AWL_EVENT_CHAIN_LIMIT": "100"}
		r := send(loopEnv, clientCall{EventName: tasks.EventGenerateInsights, Chain: chain,
			Options: map[string]any{"data": map[string]any{"jobId": jobID}}})[0]
		if r.SendStatus == "succeeded" || log.lastCode() != http.StatusLoopDetected {
			t.Fatalf("chain of %d: client %+v, router %d, want 508", tasks.EventChainLimit, r, log.lastCode())
		}
		if j, _ := a.Store.GetJob(ctx, jobID); j.Status != tasks.StatusQueued || j.EventID != "" {
			t.Fatalf("the looping send started a run: %s %s", j.Status, j.EventID)
		}
	})

	t.Run("an unknown key is refused", func(t *testing.T) {
		r := send(map[string]string{"URL": srv.URL, "AWL_API_KEY": "not-a-key"}, clientCall{EventName: tasks.EventGenerateInsights,
			Options: map[string]any{"data": map[string]any{"jobId": "insights_0_nokey"}}})[0]
		if r.SendStatus == "succeeded" || log.lastCode() != http.StatusUnauthorized {
			t.Fatalf("wrong key: %+v router %d", r, log.lastCode())
		}
	})
}
