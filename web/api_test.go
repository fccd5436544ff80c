package web

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// routes lists every route but /healthz and /readyz.
var protectedRoutes = []struct{ method, path string }{
	{"POST", "/api/events"},
	{"GET", "/api/events/some-event"},
	{"POST", "/api/events/some-event/retry"},
	{"DELETE", "/api/events/some-event"},
	{"GET", "/api/jobs/some-job"},
	{"GET", "/api/jobs"},
	{"GET", "/api/jobs?status=failed&limit=5"},
	{"GET", "/api/failures"},
	{"GET", "/api/nothing-here"},
	{"POST", netlifyBase + "/send"},
	{"GET", netlifyBase + "/events/some-event"},
	{"GET", netlifyBase + "/other"},
	{"GET", "/metrics"},
	{"GET", "/monitoring"},
	{"GET", "/monitoring/"},
	{"GET", "/monitoring/queues/default?status=archived"},
	{"GET", "/monitoring/api/queues"},
	{"GET", "/monitoring/api/queues/default/archived_tasks"},
	{"POST", "/monitoring/api/queues/default/archived_tasks/x:run"},
	{"DELETE", "/monitoring/api/queues/default"},
	{"GET", "/monitoring/api/redis_info"},
	{"GET", "/monitoring/favicon.ico"},
	{"GET", "/monitoring/static/js/main.5adda2da.chunk.js"},
	{"GET", "/"},
	{"GET", "/?status=failed"},
	{"GET", "/jobs/some-job"},
	{"POST", "/jobs/some-job/retry"},
	{"POST", "/jobs/some-job/cancel"},
	{"GET", "/assets/style.css"},
	{"GET", "/no/such/page"},
}

func TestAuthOnEveryRoute(t *testing.T) {
	e := newEnv(t, envOptions{})
	basic := func(user, pass string) string {
		req, _ := http.NewRequest("GET", "/", nil)
		req.SetBasicAuth(user, pass)
		return req.Header.Get("Authorization")
	}
	bad := map[string]string{
		"none":            "",
		"wrong bearer":    "Bearer wrong-token",
		"empty bearer":    "Bearer ",
		"token as basic":  basic(AdminUser, testToken),
		"wrong password":  basic(AdminUser, "nope"),
		"wrong user":      basic("root", testPassword),
		"password bearer": "Bearer " + testPassword,
		"garbled basic":   "Basic !!!",
		"other scheme":    "Digest username=admin",
	}
	for _, rt := range protectedRoutes {
		for name, h := range bad {
			var r *resp
			if h == "" {
				r = e.do(rt.method, rt.path, nil, authNone)
			} else {
				r = e.do(rt.method, rt.path, nil, authNone, "Authorization", h)
			}
			if r.code != http.StatusUnauthorized {
				t.Fatalf("%s %s with %s credentials: %d, want 401: %.200s", rt.method, rt.path, name, r.code, r.body)
			}
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Basic ") {
				t.Fatalf("%s %s: no Basic challenge: %q", rt.method, rt.path, r.header.Get("WWW-Authenticate"))
			}
			if !jsonPath(rt.path) && !strings.HasPrefix(rt.path, "/assets/") {
				// A page: what a browser whose login was cancelled shows.
				if !strings.Contains(string(r.body), "Sign-in needed") {
					t.Fatalf("%s %s: 401 without a sign-in page: %.300s", rt.method, rt.path, r.body)
				}
			} else if m := r.json(t); m["error"] == "" {
				t.Fatalf("401 without JSON error: %s", r.body)
			}
		}
		for _, a := range []auth{authBearer, authBasic} {
			r := e.do(rt.method, rt.path, nil, a)
			if r.code == http.StatusUnauthorized {
				t.Fatalf("%s %s with good credentials: 401: %s", rt.method, rt.path, r.body)
			}
		}
	}
	for _, p := range []string{"/healthz", "/readyz"} {
		r := e.do("GET", p, nil, authNone)
		e.expect(r, http.StatusOK)
	}
}

func TestReadyz(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.do("GET", "/readyz", nil, authNone)
	e.expect(r, http.StatusOK)
	if r.json(t)["status"] != "ready" {
		t.Fatalf("readyz: %s", r.body)
	}
	down := newEnv(t, envOptions{ready: func(context.Context) error { return io.ErrUnexpectedEOF }})
	r = down.do("GET", "/readyz", nil, authNone)
	down.expect(r, http.StatusServiceUnavailable)
}

// A browser attaches cached Basic credentials to cross-site requests: a
// state-changing API call authenticated by Basic must be same-origin and
// JSON; Bearer callers are not browsers and are not affected.
func TestBasicCrossSiteRefused(t *testing.T) {
	e := newEnv(t, envOptions{})
	form := `{"eventName":"generate-insights","eventData":{"jobId":"csrf-1","systemId":"s","analysisData":{}}}`
	for _, c := range []struct {
		name string
		a    auth
		hdr  []string
		want int
	}{
		{"cross-site text/plain form", authBasic, []string{"Content-Type", "text/plain", "Sec-Fetch-Site", "cross-site"}, http.StatusForbidden},
		{"cross-site JSON", authBasic, []string{"Origin", "https://evil.example"}, http.StatusForbidden},
		{"same-origin text/plain", authBasic, []string{"Content-Type", "text/plain", "Sec-Fetch-Site", "same-origin"}, http.StatusForbidden},
		{"same-origin JSON", authBasic, []string{"Sec-Fetch-Site", "same-origin"}, http.StatusAccepted},
		{"Bearer, text/plain", authBearer, []string{"Content-Type", "text/plain", "Sec-Fetch-Site", "cross-site"}, http.StatusAccepted},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			body := strings.Replace(form, "csrf-1", "csrf-"+strings.NewReplacer(" ", "-", ",", "", "/", "-").Replace(c.name), 1)
			body = strings.Replace(body, `"analysisData":{}`, `"analysisData":{"stateOfCharge":50}`, 1)
			r := e.do("POST", "/api/events", body, c.a, c.hdr...)
			e.expect(r, c.want)
		})
	}
}

func TestPostEvent(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, path := range []string{"/api/events", netlifyBase + "/send"} {
		t.Run(path, func(t *testing.T) {
			e.t = t
			jobID := "job-post-" + strings.NewReplacer("/", "", ".", "").Replace(path)
			r := e.do("POST", path, eventBody(jobID), authBearer)
			e.expect(r, http.StatusAccepted)
			m := r.json(t)
			if m["sendStatus"] != "succeeded" || m["jobId"] != jobID || m["queue"] != "default" || m["state"] != "pending" || m["eventId"] == "" {
				t.Fatalf("answer: %s", r.body)
			}
			if j := e.job(jobID); j.Status != tasks.StatusQueued || j.EventID != m["eventId"] {
				t.Fatalf("job recorded as %+v", j)
			}
			// The same jobId in flight: the existing run.
			r = e.do("POST", path, eventBody(jobID), authBasic)
			e.expect(r, http.StatusOK)
			d := r.json(t)
			if d["sendStatus"] != "duplicate" || d["eventId"] != m["eventId"] || d["state"] != "pending" {
				t.Fatalf("duplicate answer: %s", r.body)
			}

			// Errors, the same on both routes.
			e.expectError(e.do("POST", path, `{"eventName":`, authBearer), 400, "")
			e.expectError(e.do("POST", path, ``, authBearer), 400, "")
			e.expectError(e.do("POST", path, `{"eventName":"generate-insights","eventData":{"jobId":"a"}} {}`, authBearer), 400, "")
			e.expectError(e.do("POST", path, `{"eventName":"other-event","eventData":{"jobId":"a"}}`, authBearer), 400, "eventName")
			e.expectError(e.do("POST", path, `{"eventName":"generate-insights","eventData":{"customPrompt":"x"}}`, authBearer), 422, "eventData.jobId")
			e.expectError(e.do("POST", path, `{"eventName":"generate-insights","eventData":{"analysisData":{}}}`, authBearer), 422, "eventData.systemId")
			e.expectError(e.do("POST", path, eventBody("j-1", "priority", 11), authBearer), 422, "priority")
			e.expectError(e.do("POST", path, eventBody("j-1", "priority", "5"), authBearer), 422, "priority")
			e.expectError(e.do("POST", path, eventBody("j-1", "delayUntil", "tomorrow"), authBearer), 422, "delayUntil")
			b := eventBody("j-range-" + strings.NewReplacer("/", "", ".", "").Replace(path))
			b["eventData"].(map[string]any)["contextWindowDays"] = 400
			if path == "/api/events" {
				e.expectError(e.do("POST", path, b, authBearer), 422, "eventData.contextWindowDays")
			} else {
				// The BMS app's path: the app has created its job and polls
				// it, so the range fails the job in its validate step
				// (handlers' tests) rather than the send.
				e.expect(e.do("POST", path, b, authBearer), http.StatusAccepted)
			}
			b["eventData"].(map[string]any)["contextWindowDays"] = 30
			b["eventData"].(map[string]any)["jobId"] = "bad id with spaces"
			e.expectError(e.do("POST", path, b, authBearer), 422, "eventData.jobId")
		})
	}
	e.t = t

	// Priority picks the queue; delayUntil schedules.
	r := e.do("POST", "/api/events", eventBody("job-urgent", "priority", 10), authBearer)
	e.expect(r, 202)
	if m := r.json(t); m["queue"] != "critical" {
		t.Fatalf("priority 10: %s", r.body)
	}
	at := time.Now().Add(time.Hour).UnixMilli()
	r = e.do("POST", "/api/events", eventBody("job-later", "priority", 2, "delayUntil", at), authBearer)
	e.expect(r, 202)
	if m := r.json(t); m["queue"] != "low" || m["state"] != "scheduled" {
		t.Fatalf("scheduled: %s", r.body)
	}
	if j := e.job("job-later"); j.Status != tasks.StatusScheduled {
		t.Fatalf("scheduled job is %s", j.Status)
	}
	// A send without jobId gets one.
	r = e.do("POST", "/api/events", eventBody(""), authBearer)
	e.expect(r, 202)
	if m := r.json(t); !strings.HasPrefix(m["jobId"].(string), "job-") {
		t.Fatalf("generated jobId: %s", r.body)
	}
}

// bigReader yields n bytes of a JSON string without knowing its length in
// advance (chunked upload), counting what was taken from it.
type bigReader struct {
	n    int
	head []byte
	// sent is read by the test while the client's transport may still be
	// writing the body (the server answers 413 before reading it all).
	sent atomic.Int64
}

func (b *bigReader) Read(p []byte) (int, error) {
	sent := int(b.sent.Load())
	if sent >= b.n {
		return 0, io.EOF
	}
	i := 0
	for ; i < len(p) && sent < b.n; i++ {
		if sent < len(b.head) {
			p[i] = b.head[sent]
		} else {
			p[i] = 'x'
		}
		sent++
	}
	b.sent.Store(int64(sent))
	return i, nil
}

func TestPostEventTooLarge(t *testing.T) {
	e := newEnv(t, envOptions{})
	head := []byte(`{"eventName":"generate-insights","eventData":{"jobId":"big","customPrompt":"`)
	for _, path := range []string{"/api/events", netlifyBase + "/send"} {
		// Known length: refused before any of it is read.
		e.bodyRead.Store(0)
		body := append(append([]byte{}, head...), bytes.Repeat([]byte("x"), 600*1024)...)
		r := e.do("POST", path, body, authBearer)
		e.expectError(r, http.StatusRequestEntityTooLarge, "")
		if n := e.bodyRead.Load(); n != 0 {
			t.Fatalf("%s: read %d bytes of a body announced too large", path, n)
		}
		// Unknown length (chunked): read only up to the limit.
		e.bodyRead.Store(0)
		src := &bigReader{n: 64 << 20, head: head}
		r = e.do("POST", path, io.NopCloser(src), authBearer)
		e.expectError(r, http.StatusRequestEntityTooLarge, "")
		if n := e.bodyRead.Load(); n > maxBodyBytes+1 {
			t.Fatalf("%s: handler read %d bytes, more than the %d byte limit", path, n, maxBodyBytes)
		}
		if int(src.sent.Load()) >= src.n {
			t.Fatalf("%s: the whole 64 MB body was sent: the server read it to the end", path)
		}
	}
	// A body under the limit is read and accepted.
	small := eventBody("job-medium")
	small["eventData"].(map[string]any)["customPrompt"] = strings.Repeat("p", 4000)
	e.expect(e.do("POST", "/api/events", small, authBearer), http.StatusAccepted)
}

func TestPostEventMongoDown(t *testing.T) {
	for _, mode := range []string{"refused", "silent"} {
		t.Run(mode, func(t *testing.T) {
			st, p := proxiedStore(t)
			e := newEnv(t, envOptions{store: st})
			e.send("job-before-outage")
			if mode == "refused" {
				p.close() // connections drop, new ones are refused
			} else {
				p.hang() // MongoDB stops answering
			}
			start := time.Now()
			r := e.do("POST", "/api/events", eventBody("job-during-outage"), authBearer)
			took := time.Since(start)
			e.expectError(r, http.StatusServiceUnavailable, "")
			if took > 15*time.Second {
				t.Fatalf("503 after %v, want within 15 s", took)
			}
			// Nothing was enqueued for the refused event.
			for _, q := range tasks.Queues {
				list, _ := e.inspector.ListPendingTasks(q)
				for _, ti := range list {
					if strings.Contains(string(ti.Payload), "job-during-outage") {
						t.Fatalf("event enqueued although it was not recorded")
					}
				}
			}
			t.Logf("503 after %v: %s", took.Round(time.Millisecond), r.body)
		})
	}
}

func TestEventLifecycle(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	ev := e.send("job-life")
	id := ev["eventId"].(string)
	e.waitDone("job-life")
	e.waitTask("default", id, 10*time.Second, asynq.TaskStateCompleted)

	r := e.do("GET", "/api/events/"+id, nil, authBearer)
	e.expect(r, 200)
	m := r.json(t)
	if m["eventId"] != id || m["state"] != "completed" || m["queue"] != "default" || m["jobId"] != "job-life" ||
		m["retried"] != 0.0 || m["maxRetry"] != float64(testRetries) || m["eventName"] != tasks.EventGenerateInsights {
		t.Fatalf("event: %s", r.body)
	}
	if _, ok := m["nextProcessAt"]; !ok {
		t.Fatalf("no nextProcessAt: %s", r.body)
	}
	if _, ok := m["lastError"]; !ok {
		t.Fatalf("no lastError: %s", r.body)
	}
	job := m["job"].(map[string]any)
	steps := job["steps"].(map[string]any)
	for _, s := range tasks.Steps {
		st, ok := steps[s].(map[string]any)
		if !ok || st["status"] != "completed" || st["runs"] != 1.0 {
			t.Fatalf("step %s: %v", s, steps[s])
		}
	}
	if job["status"] != "completed" || job["finalInsights"].(map[string]any)["healthScore"] != 92.0 {
		t.Fatalf("job: %v", job)
	}
	// The alias answers the same.
	a := e.do("GET", netlifyBase+"/events/"+id, nil, authBasic)
	e.expect(a, 200)
	if !bytes.Equal(a.body, r.body) {
		t.Fatalf("alias differs:\n%s\n%s", a.body, r.body)
	}
	// The follow-up is an event too (queue low, asynq's own budget).
	fu := tasks.FollowUpTaskIDPrefix + id
	e.waitTask("low", fu, 10*time.Second, asynq.TaskStateCompleted)
	r = e.do("GET", "/api/events/"+url.PathEscape(fu), nil, authBearer)
	e.expect(r, 200)
	// The follow-up's budget is MAX_RETRIES too (its handler keeps it).
	if m := r.json(t); m["queue"] != "low" || m["eventName"] != tasks.EventInsightsCompleted || m["jobId"] != "job-life" || m["maxRetry"] != float64(testRetries) {
		t.Fatalf("follow-up: %s", r.body)
	}

	// Completed: neither retry nor cancel.
	e.expectError(e.do("POST", "/api/events/"+id+"/retry", nil, authBearer), http.StatusConflict, "")
	e.expectError(e.do("DELETE", "/api/events/"+id, nil, authBearer), http.StatusConflict, "")
	// Unknown everywhere.
	for _, p := range []string{"/api/events/nope", netlifyBase + "/events/nope"} {
		e.expectError(e.do("GET", p, nil, authBearer), http.StatusNotFound, "")
	}
	e.expectError(e.do("POST", "/api/events/nope/retry", nil, authBearer), http.StatusNotFound, "")
	e.expectError(e.do("DELETE", "/api/events/nope", nil, authBearer), http.StatusNotFound, "")

	// Jobs.
	r = e.do("GET", "/api/jobs/job-life", nil, authBearer)
	e.expect(r, 200)
	if j := r.json(t); j["jobId"] != "job-life" || j["status"] != "completed" || len(j["steps"].(map[string]any)) != 6 {
		t.Fatalf("job: %s", r.body)
	}
	e.expectError(e.do("GET", "/api/jobs/nope", nil, authBearer), http.StatusNotFound, "")
}

func TestRetryArchivedAndLost(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	id := e.archivedRun("job-bad")

	r := e.do("GET", "/api/events/"+id, nil, authBearer)
	e.expect(r, 200)
	m := r.json(t)
	if m["state"] != "archived" || !strings.Contains(m["lastError"].(string), "inconsistent") || m["retried"] != 0.0 {
		t.Fatalf("archived event: %s", r.body)
	}
	if j := m["job"].(map[string]any); j["status"] != "failed" || j["failure"].(map[string]any)["kind"] != store.KindBusiness || !strings.Contains(j["error"].(string), "inconsistent") {
		t.Fatalf("failed job: %v", j)
	}

	// Cause fixed, run it again: resumes, earlier steps not re-run.
	e.fail.set(false)
	r = e.do("POST", "/api/events/"+id+"/retry", nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["action"] != "run" || m["previousState"] != "archived" || m["state"] != "pending" || m["queue"] != "default" {
		t.Fatalf("retry: %s", r.body)
	}
	j := e.waitDone("job-bad")
	want := map[string]int{"initialize": 1, "fetch-job": 1, "validate": 1, "process-insights": 2, "store-results": 1, "send-completion": 1}
	for s, n := range want {
		if testenv.Runs(j)[s] != n {
			t.Fatalf("runs %v, want %v", testenv.Runs(j), want)
		}
	}

	// A failed job whose task Redis lost is enqueued again from the job.
	e.fail.set(true)
	id2 := e.send("job-lost")["eventId"].(string)
	e.waitStatus("job-lost", tasks.StatusFailed, 20*time.Second)
	e.waitTask("default", id2, 10*time.Second, asynq.TaskStateArchived)
	if err := e.inspector.DeleteTask("default", id2); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", "/api/events/"+id2, nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["state"] != nil || m["job"].(map[string]any)["status"] != "failed" {
		t.Fatalf("lost task: %s", r.body)
	}
	e.fail.set(false)
	r = e.do("POST", "/api/events/"+id2+"/retry", nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["action"] != "re-enqueued" {
		t.Fatalf("retry lost: %s", r.body)
	}
	j = e.waitDone("job-lost")
	if testenv.Runs(j)["validate"] != 1 || testenv.Runs(j)["process-insights"] != 2 {
		t.Fatalf("runs after re-enqueue: %v", testenv.Runs(j))
	}
}

func TestRetryAndCancelWaiting(t *testing.T) {
	e := newEnv(t, envOptions{}) // no worker: tasks stay waiting

	// Pending: nothing to run now.
	id := e.send("job-wait")["eventId"].(string)
	e.expectError(e.do("POST", "/api/events/"+id+"/retry", nil, authBearer), http.StatusConflict, "")
	// Scheduled: run now.
	sid := e.send("job-sched", "delayUntil", time.Now().Add(time.Hour).Format(time.RFC3339))["eventId"].(string)
	r := e.do("GET", "/api/events/"+sid, nil, authBearer)
	e.expect(r, 200)
	m := r.json(t)
	next, _ := time.Parse(time.RFC3339, m["nextProcessAt"].(string))
	if m["state"] != "scheduled" || time.Until(next) < 59*time.Minute {
		t.Fatalf("scheduled event: %s", r.body)
	}
	r = e.do("POST", "/api/events/"+sid+"/retry", nil, authBearer)
	e.expect(r, 200)
	e.waitTask("default", sid, 5*time.Second, asynq.TaskStatePending)

	// Cancel a pending one: job cancelled first, task deleted.
	r = e.do("DELETE", "/api/events/"+id, nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["status"] != "cancelled" || m["taskDeleted"] != true || m["previousState"] != "pending" || m["jobId"] != "job-wait" {
		t.Fatalf("cancel: %s", r.body)
	}
	if j := e.job("job-wait"); j.Status != tasks.StatusCancelled {
		t.Fatalf("job %s", j.Status)
	}
	e.waitGone("default", id, time.Second)
	// Cancelled: a retry is refused; GET still knows it from Mongo.
	e.expectError(e.do("POST", "/api/events/"+id+"/retry", nil, authBearer), http.StatusConflict, "")
	r = e.do("GET", "/api/events/"+id, nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["state"] != nil || m["job"].(map[string]any)["status"] != "cancelled" {
		t.Fatalf("cancelled event: %s", r.body)
	}
	// Sent again after cancel: a new run.
	r = e.do("POST", "/api/events", eventBody("job-wait"), authBearer)
	e.expect(r, http.StatusAccepted)
	if m := r.json(t); m["eventId"] == id {
		t.Fatalf("new run kept the old eventId")
	}
}

func TestCancelActive(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.block.Store(true)
	defer e.fail.block.Store(false)
	id := e.send("job-active")["eventId"].(string)
	e.waitTask("default", id, 10*time.Second, asynq.TaskStateActive)
	testenv.WaitFor(t, 10*time.Second, "validate checkpointed", func() (bool, error) {
		return e.job("job-active").Steps["validate"].Status == "completed", nil
	})
	r := e.do("DELETE", "/api/events/"+id, nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["previousState"] != "active" || m["status"] != "cancelled" {
		t.Fatalf("cancel active: %s", r.body)
	}
	e.waitGone("default", id, 15*time.Second)
	if j := e.job("job-active"); j.Status != tasks.StatusCancelled {
		t.Fatalf("job is %s", j.Status)
	}
}

func TestListJobsAndFailures(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "job-f1", "job-f2")
	for _, id := range []string{"job-f1", "job-f2", "job-ok"} {
		e.send(id)
	}
	e.waitStatus("job-f1", tasks.StatusFailed, 20*time.Second)
	e.waitStatus("job-f2", tasks.StatusFailed, 20*time.Second)
	e.waitDone("job-ok")

	r := e.do("GET", "/api/jobs", nil, authBearer)
	e.expect(r, 200)
	var list JobList
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatal(err)
	}
	if list.Count != 3 || len(list.Jobs) != 3 || list.Limit != 50 {
		t.Fatalf("list: %s", r.body)
	}
	for i := 1; i < len(list.Jobs); i++ {
		if list.Jobs[i].CreatedAt.After(list.Jobs[i-1].CreatedAt) {
			t.Fatalf("not newest first")
		}
	}
	r = e.do("GET", "/api/jobs?status=failed&limit=1", nil, authBearer)
	e.expect(r, 200)
	_ = json.Unmarshal(r.body, &list)
	if list.Count != 1 || list.Jobs[0].Status != "failed" {
		t.Fatalf("filtered: %s", r.body)
	}
	r = e.do("GET", "/api/jobs?systemId=sys-1&limit=1000", nil, authBearer)
	e.expect(r, 200)
	_ = json.Unmarshal(r.body, &list)
	if list.Count != 3 || list.Limit != 500 {
		t.Fatalf("systemId filter: %s", r.body)
	}
	r = e.do("GET", "/api/jobs?systemId=other", nil, authBearer)
	e.expect(r, 200)
	_ = json.Unmarshal(r.body, &list)
	if list.Count != 0 || list.Jobs == nil {
		t.Fatalf("empty list: %s", r.body)
	}
	for _, bad := range []string{"limit=abc", "limit=0", "limit=-3", "limit=1.5"} {
		e.expectError(e.do("GET", "/api/jobs?"+bad, nil, authBearer), 422, "limit")
	}
	e.expectError(e.do("GET", "/api/jobs?status=bogus", nil, authBearer), 422, "status")
	e.expectError(e.do("GET", "/api/jobs?systemId=a%20b", nil, authBearer), 422, "systemId")

	r = e.do("GET", "/api/failures", nil, authBearer)
	e.expect(r, 200)
	var f Failures
	if err := json.Unmarshal(r.body, &f); err != nil {
		t.Fatal(err)
	}
	if f.Total != 2 || len(f.Groups) != 1 || f.Groups[0].Count != 2 || f.Groups[0].Kind != store.KindBusiness ||
		f.Groups[0].Step != tasks.StepProcessInsights || len(f.Groups[0].Examples) != 2 || !strings.Contains(f.Groups[0].Message, "inconsistent") {
		t.Fatalf("failures: %s", r.body)
	}
}

func TestDecryptedResult(t *testing.T) {
	decrypt := func(stored any) (any, error) {
		return map[string]any{"healthScore": 77.0, "rawText": "## KEY FINDINGS\n\n- 🟡 decrypted finding\n"}, nil
	}
	e := newEnv(t, envOptions{decrypt: decrypt})
	sealed := map[string]any{"encrypted": true, "algorithm": "aes-256-gcm", "data": "AAAA", "iv": "BBBB", "authTag": "CCCC"}
	now := time.Now().UTC()
	_, err := e.store.Database().Collection(store.JobsCollection).InsertOne(context.Background(), map[string]any{
		"_id": "job-enc", "id": "job-enc", "eventId": "ev-enc", "eventName": tasks.EventGenerateInsights, "systemId": "sys-1",
		"status": "completed", "queue": "default", "priority": 5, "attempts": 1, "createdAt": now, "updatedAt": now,
		"finalInsights": sealed,
		"steps":         map[string]any{"process-insights": map[string]any{"status": "completed", "runs": 1, "attempt": 1, "output": sealed}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := e.do("GET", "/api/jobs/job-enc", nil, authBearer)
	e.expect(r, 200)
	j := r.json(t)
	if j["finalInsights"].(map[string]any)["healthScore"] != 77.0 {
		t.Fatalf("result not decrypted: %s", r.body)
	}
	out := j["steps"].(map[string]any)["process-insights"].(map[string]any)["output"].(map[string]any)
	if out["healthScore"] != 77.0 {
		t.Fatalf("output not decrypted: %s", r.body)
	}
	page := e.do("GET", "/jobs/job-enc", nil, authBasic)
	e.expect(page, 200)
	if !strings.Contains(string(page.body), "decrypted finding") || strings.Contains(string(page.body), "AAAA") {
		t.Fatalf("page does not show the decrypted result")
	}
}

func TestCORS(t *testing.T) {
	e := newEnv(t, envOptions{cors: []string{"https://app.example.com"}})
	r := e.do("OPTIONS", "/api/events", nil, authNone, "Origin", "https://app.example.com",
		"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization, content-type")
	e.expect(r, http.StatusNoContent)
	if r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
		!strings.Contains(r.header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("preflight headers: %v", r.header)
	}
	r = e.do("POST", "/api/events", eventBody("job-cors"), authBearer, "Origin", "https://app.example.com")
	e.expect(r, 202)
	if r.header.Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Fatalf("no CORS header on the answer")
	}
	// Another origin: no CORS headers, and its preflight is not answered.
	r = e.do("OPTIONS", "/api/events", nil, authNone, "Origin", "https://evil.example.net", "Access-Control-Request-Method", "POST")
	if r.header.Get("Access-Control-Allow-Origin") != "" || r.code == http.StatusNoContent {
		t.Fatalf("foreign origin got CORS: %d %v", r.code, r.header)
	}
	r = e.do("GET", "/api/jobs", nil, authBearer, "Origin", "https://evil.example.net")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("foreign origin got CORS")
	}
	// Without CORS_ORIGINS: none at all.
	none := newEnv(t, envOptions{})
	r = none.do("OPTIONS", "/api/events", nil, authNone, "Origin", "https://app.example.com", "Access-Control-Request-Method", "POST")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("CORS without CORS_ORIGINS")
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "job-m-bad")
	e.send("job-m-ok")
	e.send("job-m-bad")
	e.waitDone("job-m-ok")
	e.waitStatus("job-m-bad", tasks.StatusFailed, 20*time.Second)
	var body string
	testenv.WaitFor(t, 10*time.Second, "metrics", func() (bool, error) {
		r := e.do("GET", "/metrics", nil, authBearer)
		body = string(r.body)
		return r.code == 200 && strings.Contains(body, `insights_queue_tasks{queue="default",state="archived"} 1`), nil
	})
	for _, want := range []string{
		`insights_step_duration_seconds_count{outcome="completed",step="initialize"} 2`,
		`insights_step_duration_seconds_count{outcome="failed",step="process-insights"} 1`,
		`insights_jobs_total{kind="",status="completed"} 1`,
		`insights_jobs_total{kind="business",status="failed"} 1`,
		`insights_dead_letter_tasks 1`,
		`insights_queue_tasks{queue="critical",state="pending"} 0`,
		`insights_queue_up 1`,
		`insights_http_requests_total{code="202",route="POST /api/events"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", body)
	}
}

func TestFormatPayload(t *testing.T) {
	volts := make([]float64, 32)
	for i := range volts {
		volts[i] = 3.3
	}
	snap := testenv.Snapshot()
	snap.CellVoltages = volts
	b, _ := json.Marshal(tasks.Run{EventID: "e", JobID: "j", SystemID: "s", Request: &tasks.Request{AnalysisData: snap, CustomPrompt: strings.Repeat("q", 2000)}, Queue: "default"})
	out := FormatPayload(tasks.EventGenerateInsights, b)
	if !strings.Contains(out, "24 more (32 values)") || !strings.Contains(out, `"jobId": "j"`) || strings.Count(out, "3.3") > 10 {
		t.Fatalf("payload:\n%s", out)
	}
	if !strings.Contains(out, "(2000 bytes)") {
		t.Fatalf("long prompt not shortened:\n%s", out)
	}
	if got := FormatPayload("x", []byte("not json")); !strings.Contains(got, "not JSON") {
		t.Fatalf("non-JSON: %s", got)
	}
	if got := FormatResult("x", []byte(`{"a":1}`)); !strings.Contains(got, `"a": 1`) {
		t.Fatalf("result: %s", got)
	}
}

// asynqmon's Run on an archived task is an operator starting the run
// again: the job gets its full budget back before asynqmon moves the task
// (the worker never infers a re-run from a status).
func TestDashboardRunResetsBudget(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	id := e.archivedRun("job-dash")
	if j, _ := e.store.GetJob(context.Background(), "job-dash"); j.Failures != 1 {
		t.Fatalf("failures %d before the Run, want 1", j.Failures)
	}
	e.fail.set(false)
	r := e.do("POST", "/monitoring/api/queues/default/archived_tasks/"+id+":run", nil, authBasic, "Sec-Fetch-Site", "same-origin")
	if r.code/100 != 2 {
		t.Fatalf("asynqmon Run: %d %s", r.code, r.body)
	}
	j := e.waitDone("job-dash")
	if j.Failures != 0 || testenv.Runs(j)["process-insights"] != 2 {
		t.Fatalf("after the dashboard's Run: failures %d runs %v, want 0 and process-insights 2", j.Failures, testenv.Runs(j))
	}
}

// archivedRun sends jobID while every run fails for good, and returns its
// eventId once the job is failed and its task archived (the failures stay
// on: e.fail.set(false) fixes the cause).
func (e *env) archivedRun(jobID string) string {
	e.t.Helper()
	e.fail.set(true)
	id := e.send(jobID)["eventId"].(string)
	e.waitStatus(jobID, tasks.StatusFailed, 20*time.Second)
	e.waitTask("default", id, 10*time.Second, asynq.TaskStateArchived)
	return id
}

// The model provider's breaker through the API: its state as the workers
// share it, and an operator's reset, Bearer and same-origin Basic alike.
func TestBreakerRoutes(t *testing.T) {
	e := newEnv(t, envOptions{})
	r := e.do("GET", "/api/breaker", nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["state"] != "closed" || m["failures"] != 0.0 {
		t.Fatalf("a new breaker: %s", r.body)
	}
	for range 2 {
		if err := e.breaker.Failure(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	r = e.do("GET", "/api/breaker", nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["state"] != "open" || m["failures"] != 2.0 || m["openedAt"] == nil || m["retryAt"] == nil {
		t.Fatalf("after 2 failures: %s", r.body)
	}
	r = e.do("GET", "/metrics", nil, authBearer)
	e.expect(r, 200)
	if body := string(r.body); !strings.Contains(body, `insights_breaker_state{state="open"} 1`) || !strings.Contains(body, "insights_breaker_failures 2") {
		t.Fatalf("metrics without the open breaker:\n%s", body)
	}
	// The pages show it too.
	page := e.do("GET", "/", nil, authBearer)
	e.expect(page, 200)
	if !strings.Contains(string(page.body), `id="breaker" data-state="open"`) {
		t.Fatalf("the home page does not show the open breaker:\n%s", page.body)
	}
	e.expect(e.do("POST", "/api/breaker/reset", nil, authNone), 401)
	r = e.do("POST", "/api/breaker/reset", nil, authBearer)
	e.expect(r, 200)
	if m := r.json(t); m["state"] != "closed" || m["failures"] != 0.0 {
		t.Fatalf("after the reset: %s", r.body)
	}
	if page := e.do("GET", "/", nil, authBearer); strings.Contains(string(page.body), `id="breaker"`) {
		t.Fatal("the home page still shows the breaker once closed")
	}
}
