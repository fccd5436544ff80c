package web

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// sameOrigin are the headers of a browser's same-origin request.
var sameOriginHdr = []string{"Sec-Fetch-Site", "same-origin"}

// The viewer reads everything the admin reads (the API, the pages,
// /metrics, asynqmon's UI and API in its read-only mode) and changes
// nothing: every other method is 403, as JSON on the API and asynqmon, as
// a page elsewhere, and nothing it tried is done or audited.
func TestViewerIsReadOnly(t *testing.T) {
	e := newEnv(t, envOptions{worker: true, viewer: true})
	id := e.archivedRun("job-view")
	sched := e.send("job-view-later", "delayUntil", time.Now().Add(time.Hour).Format(time.RFC3339))["eventId"].(string)

	for _, path := range []string{"/api/jobs", "/api/jobs/job-view", "/api/events/" + id, "/api/failures", "/api/breaker",
		"/api/audit", "/", "/jobs/job-view", "/audit", "/metrics", "/monitoring/", "/monitoring/api/queues",
		"/monitoring/api/queues/default/archived_tasks", "/assets/style.css", "/failures", "/bulk", "/api/jobs/bulk",
		"/bulk?action=retry&status=failed&dryRun=1"} {
		for _, m := range []string{"GET", "HEAD"} {
			if m == "HEAD" && strings.HasPrefix(path, "/monitoring/api/") {
				continue // asynqmon's API answers GET only, to the admin too
			}
			if r := e.do(m, path, nil, authViewer); r.code != http.StatusOK {
				t.Errorf("viewer %s %s: %d, want 200: %.200s", m, path, r.code, r.body)
			}
		}
	}
	// Its pages say who is signed in, and the job page has no buttons.
	for _, c := range []struct {
		a          auth
		who        string
		withButton bool
	}{
		{authViewer, "signed in as viewer (read-only)", false},
		{authBasic, "signed in as admin ·", true},
	} {
		body := string(e.do("GET", "/jobs/job-view", nil, c.a).body)
		if !strings.Contains(body, c.who) {
			t.Errorf("job page for %s does not say %q", c.who, c.who)
		}
		if got := strings.Contains(body, `action="/jobs/job-view/retry"`); got != c.withButton {
			t.Errorf("job page for %q: retry form shown %v, want %v", c.who, got, c.withButton)
		}
		if got := strings.Contains(body, `action="/jobs/job-view/rerun"`); got != c.withButton {
			t.Errorf("job page for %q: re-run form shown %v, want %v", c.who, got, c.withButton)
		}
		bulk := string(e.do("GET", "/bulk?action=retry&status=failed&dryRun=1", nil, c.a).body)
		if !strings.Contains(bulk, `<b id="bulk-matched">1</b>`) || strings.Contains(bulk, `id="bulk-confirm"`) != c.withButton {
			t.Errorf("bulk dry run for %q: count or confirm button (want %v) wrong:\n%.2000s", c.who, c.withButton, bulk)
		}
	}
	// asynqmon's UI: read-only for the viewer, not for the admin.
	if body := string(e.do("GET", "/monitoring/", nil, authViewer).body); !strings.Contains(body, `READ_ONLY="true"`) {
		t.Errorf("the viewer's asynqmon is not read-only:\n%.600s", body)
	}
	if body := string(e.do("GET", "/monitoring/", nil, authBasic).body); !strings.Contains(body, `READ_ONLY="false"`) {
		t.Errorf("the admin's asynqmon is read-only:\n%.600s", body)
	}

	// Everything that changes state is refused, same-origin or not.
	csrf := e.server.csrfToken(viewerRequest(t), "retry:job-view")
	form := url.Values{"csrf": {csrf}}.Encode()
	for _, c := range []struct {
		method, path string
		body         any
		hdr          []string
		page         bool
	}{
		{"POST", "/api/events/" + id + "/retry", nil, sameOriginHdr, false},
		{"DELETE", "/api/events/" + sched, nil, sameOriginHdr, false},
		{"POST", "/api/breaker/reset", nil, sameOriginHdr, false},
		{"POST", "/api/events", eventBody("job-view-send"), sameOriginHdr, false},
		{"POST", netlifyBase + "/send", eventBody("job-view-send"), sameOriginHdr, false},
		{"POST", "/monitoring/api/queues/default:pause", nil, sameOriginHdr, false},
		{"POST", "/monitoring/api/queues/default/archived_tasks/" + id + ":run", nil, sameOriginHdr, false},
		{"DELETE", "/monitoring/api/queues/default/archived_tasks/" + id, nil, sameOriginHdr, false},
		{"DELETE", "/monitoring/api/queues/default/scheduled_tasks/" + sched, nil, nil, false},
		{"POST", "/jobs/job-view/retry", form, append([]string{"Content-Type", "application/x-www-form-urlencoded"}, sameOriginHdr...), true},
		{"POST", "/jobs/job-view-later/cancel", form, append([]string{"Content-Type", "application/x-www-form-urlencoded"}, sameOriginHdr...), true},
		{"POST", "/api/jobs/bulk", map[string]any{"action": "retry", "filter": map[string]any{"status": "failed"}}, sameOriginHdr, false},
		{"POST", "/api/jobs/bulk", map[string]any{"action": "retry", "filter": map[string]any{}, "dryRun": true}, sameOriginHdr, false},
		{"POST", "/api/jobs/job-view/rerun", map[string]any{"fromStep": "validate"}, sameOriginHdr, false},
		{"POST", "/bulk", url.Values{"csrf": {e.server.csrfToken(viewerRequest(t), "bulk")}, "action": {"retry"}, "status": {"failed"}}.Encode(),
			append([]string{"Content-Type", "application/x-www-form-urlencoded"}, sameOriginHdr...), true},
		{"POST", "/jobs/job-view/rerun", url.Values{"csrf": {e.server.csrfToken(viewerRequest(t), "rerun:job-view")}, "fromStep": {"validate"}}.Encode(),
			append([]string{"Content-Type", "application/x-www-form-urlencoded"}, sameOriginHdr...), true},
	} {
		r := e.do(c.method, c.path, c.body, authViewer, c.hdr...)
		if r.code != http.StatusForbidden {
			t.Errorf("viewer %s %s: %d, want 403: %.300s", c.method, c.path, r.code, r.body)
			continue
		}
		if c.page {
			if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") || !strings.Contains(string(r.body), "read-only") {
				t.Errorf("viewer %s %s: want the read-only page, got %s:\n%.300s", c.method, c.path, ct, r.body)
			}
			continue
		}
		if msg, _ := r.json(t)["error"].(string); !strings.Contains(msg, "read-only") {
			t.Errorf("viewer %s %s: error %q does not say read-only", c.method, c.path, msg)
		}
	}
	// Nothing was done: the task is still archived, the scheduled one
	// scheduled, the queue not paused, nothing sent, nothing audited.
	e.waitTask("default", id, time.Second, asynq.TaskStateArchived)
	e.waitTask("default", sched, time.Second, asynq.TaskStateScheduled)
	if q, err := e.inspector.GetQueueInfo("default"); err != nil || q.Paused {
		t.Errorf("queue default: %+v, %v; want not paused", q, err)
	}
	if j := e.job("job-view"); j.Status != tasks.StatusFailed {
		t.Errorf("job-view is %s, want failed", j.Status)
	}
	if _, err := e.store.GetJob(t.Context(), "job-view-send"); err == nil {
		t.Error("the viewer's send recorded a job")
	}
	if list := e.audit(t, "", authViewer); list.Count != 0 {
		t.Errorf("refused actions audited: %+v", list.Entries)
	}
}

// viewerRequest is a request with the viewer's credentials, to mint the
// CSRF token its browser would have if the page offered the form.
func viewerRequest(t *testing.T) *http.Request {
	r, err := http.NewRequest("POST", "/", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.SetBasicAuth(ViewerUser, testViewerPassword)
	return r
}

// Only the right password makes a viewer, only when VIEWER_PASSWORD is
// set, and the passwords do not cross over between the users.
func TestViewerCredentials(t *testing.T) {
	with := newEnv(t, envOptions{viewer: true})
	without := newEnv(t, envOptions{})
	for _, c := range []struct {
		name       string
		e          *env
		user, pass string
		want       int
	}{
		{"viewer", with, ViewerUser, testViewerPassword, http.StatusOK},
		{"wrong viewer password", with, ViewerUser, "nope", http.StatusUnauthorized},
		{"viewer with the admin's password", with, ViewerUser, testPassword, http.StatusUnauthorized},
		{"admin with the viewer's password", with, AdminUser, testViewerPassword, http.StatusUnauthorized},
		{"viewer, empty password", with, ViewerUser, "", http.StatusUnauthorized},
		{"no VIEWER_PASSWORD: viewer", without, ViewerUser, testViewerPassword, http.StatusUnauthorized},
		{"no VIEWER_PASSWORD: viewer, empty password", without, ViewerUser, "", http.StatusUnauthorized},
		{"no VIEWER_PASSWORD: admin", without, AdminUser, testPassword, http.StatusOK},
	} {
		t.Run(c.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", "/", nil)
			req.SetBasicAuth(c.user, c.pass)
			for _, path := range []string{"/api/jobs", "/", "/monitoring/api/queues"} {
				r := c.e.do("GET", path, nil, authNone, "Authorization", req.Header.Get("Authorization"))
				if r.code != c.want {
					t.Fatalf("GET %s: %d, want %d: %.200s", path, r.code, c.want, r.body)
				}
			}
		})
	}
	// The challenge names the viewer only where there is one.
	msg := func(e *env) string {
		m, _ := e.do("GET", "/api/jobs", nil, authNone).json(t)["error"].(string)
		return m
	}
	if m := msg(with); !strings.Contains(m, "viewer:<VIEWER_PASSWORD>") {
		t.Errorf("401 with a viewer: %q does not mention it", m)
	}
	if m := msg(without); strings.Contains(m, "viewer") {
		t.Errorf("401 without a viewer: %q mentions one", m)
	}
}

// audit reads GET /api/audit with query q.
func (e *env) audit(t *testing.T, q string, a auth) AuditList {
	t.Helper()
	r := e.do("GET", "/api/audit"+q, nil, a)
	e.expect(r, http.StatusOK)
	var list AuditList
	if err := json.Unmarshal(r.body, &list); err != nil {
		t.Fatalf("audit list: %v\n%s", err, r.body)
	}
	if list.Entries == nil || list.Count != len(list.Entries) {
		t.Fatalf("audit list: %s", r.body)
	}
	return list
}

// Every operator action that was done is audited, newest first, with who
// did it and to what: the API's retry and cancel, the breaker reset, the
// job page's Retry, asynqmon's changes by an admin (with a batch's
// count); refused or failed actions are not.
func TestAuditTrail(t *testing.T) {
	e := newEnv(t, envOptions{worker: true, viewer: true})
	if list := e.audit(t, "", authBearer); list.Count != 0 {
		t.Fatalf("a new audit trail has entries: %+v", list.Entries)
	}
	type want struct{ user, action, target string }
	var done []want // in order

	// The API's retry (Bearer) of an archived run.
	retried := e.archivedRun("job-audit-retry")
	e.fail.set(false)
	e.expect(e.do("POST", "/api/events/"+retried+"/retry", nil, authBearer), http.StatusOK)
	done = append(done, want{TokenUser, "retry", retried})
	e.waitDone("job-audit-retry")
	// Failed actions are not audited: a completed event neither retries
	// nor cancels.
	e.expect(e.do("POST", "/api/events/"+retried+"/retry", nil, authBearer), http.StatusConflict)
	e.expect(e.do("DELETE", "/api/events/"+retried, nil, authBearer), http.StatusConflict)

	// The API's cancel (Basic, same-origin) of a scheduled run.
	later := func(jobID string) string {
		return e.send(jobID, "delayUntil", time.Now().Add(time.Hour).Format(time.RFC3339))["eventId"].(string)
	}
	cancelled := later("job-audit-cancel")
	e.expect(e.do("DELETE", "/api/events/"+cancelled, nil, authBasic, sameOriginHdr...), http.StatusOK)
	done = append(done, want{AdminUser, "cancel", cancelled})

	// The breaker reset.
	e.expect(e.do("POST", "/api/breaker/reset", nil, authBearer), http.StatusOK)
	done = append(done, want{TokenUser, "breaker-reset", "breaker"})

	// The job page's Retry: target the job's event, as the API's.
	pageRun := e.archivedRun("job-audit-page")
	body := string(e.do("GET", "/jobs/job-audit-page", nil, authBasic).body)
	csrf := regexp.MustCompile(`action="/jobs/job-audit-page/retry"><input type="hidden" name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatalf("no retry form on the failed job's page:\n%s", body)
	}
	e.fail.set(false)
	r := e.do("POST", "/jobs/job-audit-page/retry", url.Values{"csrf": {csrf[1]}}.Encode(), authBasic,
		"Content-Type", "application/x-www-form-urlencoded", "Sec-Fetch-Site", "same-origin")
	e.expect(r, http.StatusSeeOther)
	done = append(done, want{AdminUser, "retry", pageRun})
	e.waitDone("job-audit-page")

	// asynqmon: pause and resume a queue, delete scheduled tasks in a batch.
	e.expect(e.do("POST", "/monitoring/api/queues/low:pause", nil, authBasic, sameOriginHdr...), http.StatusNoContent)
	done = append(done, want{AdminUser, "asynqmon:pause-queue", "low"})
	e.expect(e.do("POST", "/monitoring/api/queues/low:resume", nil, authBasic, sameOriginHdr...), http.StatusNoContent)
	done = append(done, want{AdminUser, "asynqmon:resume-queue", "low"})
	batch := []string{later("job-audit-batch-1"), later("job-audit-batch-2")}
	r = e.do("POST", "/monitoring/api/queues/default/scheduled_tasks:batch_delete", map[string]any{"task_ids": batch}, authBasic, sameOriginHdr...)
	e.expect(r, http.StatusOK)
	done = append(done, want{AdminUser, "asynqmon:batch-delete-scheduled-tasks", "default"})
	// asynqmon refusing (an unknown task) is not audited.
	if r := e.do("DELETE", "/monitoring/api/queues/default/scheduled_tasks/no-such-task", nil, authBasic, sameOriginHdr...); r.code/100 == 2 {
		t.Fatalf("asynqmon deleted a task that does not exist: %d", r.code)
	}

	// A viewer's attempt is refused and not audited.
	e.expect(e.do("POST", "/api/breaker/reset", nil, authViewer, sameOriginHdr...), http.StatusForbidden)
	e.expect(e.do("POST", "/monitoring/api/queues/low:pause", nil, authViewer, sameOriginHdr...), http.StatusForbidden)

	var list AuditList
	testenv.WaitFor(t, 5*time.Second, "every action audited", func() (bool, error) {
		list = e.audit(t, "", authViewer)
		return list.Count >= len(done), nil
	})
	if list.Count != len(done) {
		t.Fatalf("%d entries, want %d: %+v", list.Count, len(done), list.Entries)
	}
	for i, w := range done {
		got := list.Entries[len(done)-1-i] // newest first
		if got.User != w.user || got.Action != w.action || got.Target != w.target || got.At.IsZero() {
			t.Errorf("entry %d (newest first): %+v, want %+v", len(done)-1-i, got, w)
		}
	}
	for i := 1; i < len(list.Entries); i++ {
		if list.Entries[i].At.After(list.Entries[i-1].At) {
			t.Errorf("entries not newest first at %d: %v after %v", i, list.Entries[i].At, list.Entries[i-1].At)
		}
	}
	b := list.Entries[0]
	filter, _ := b.Filter.(map[string]any)
	ids, _ := filter["taskIds"].([]any)
	if b.Count == nil || *b.Count != 2 || len(ids) != 2 {
		t.Errorf("batch delete: count %v, filter %v; want 2 and both task ids", b.Count, b.Filter)
	}
	if d := list.Entries[len(done)-1].Detail; !strings.Contains(d, "job-audit-retry") {
		t.Errorf("retry detail %q does not name the job", d)
	}

	// Filters and the limit.
	if l := e.audit(t, "?user=admin", authBearer); l.Count != 5 || l.Entries[0].Action != "asynqmon:batch-delete-scheduled-tasks" {
		t.Errorf("user=admin: %+v", l.Entries)
	}
	if l := e.audit(t, "?action=retry", authBearer); l.Count != 2 || l.Entries[0].Target != pageRun || l.Entries[1].Target != retried {
		t.Errorf("action=retry: %+v", l.Entries)
	}
	if l := e.audit(t, "?limit=2&user=api-token", authBearer); l.Count != 2 || l.Entries[0].Action != "breaker-reset" {
		t.Errorf("limit=2&user=api-token: %+v", l.Entries)
	}
	for _, bad := range []string{"abc", "0", "-1", "2.5"} {
		e.expectError(e.do("GET", "/api/audit?limit="+bad, nil, authBearer), http.StatusUnprocessableEntity, "limit")
	}

	// The page shows them, to the viewer too, linked from the header.
	r = e.do("GET", "/audit", nil, authViewer)
	e.expect(r, http.StatusOK)
	page := string(r.body)
	for _, w := range done {
		row := `data-op="` + w.action + `" data-user="` + w.user + `" data-target="` + w.target + `"`
		if !strings.Contains(page, row) {
			t.Errorf("the audit page lacks %s", row)
		}
	}
	for _, want := range []string{`<a href="/audit">`, `&#34;taskIds&#34;:[`, "signed in as viewer (read-only)"} {
		if !strings.Contains(page, want) {
			t.Errorf("the audit page lacks %s", want)
		}
	}
	if r := e.do("GET", "/audit?action=cancel", nil, authBasic); strings.Count(string(r.body), "<tr data-op=") != 1 {
		t.Errorf("the audit page's action filter: %s", r.body)
	}
	e.expect(e.do("GET", "/audit?limit=zero", nil, authBasic), http.StatusUnprocessableEntity)
}

// asynqmon's API paths are named for the audit trail by operation, object
// and task state.
func TestAsynqmonAction(t *testing.T) {
	for _, c := range []struct{ method, path, action, target string }{
		{"POST", "queues/q1:pause", "asynqmon:pause-queue", "q1"},
		{"POST", "queues/q1:resume", "asynqmon:resume-queue", "q1"},
		{"DELETE", "queues/q1", "asynqmon:delete-queue", "q1"},
		{"POST", "queues/q1/archived_tasks/t-1:run", "asynqmon:run-archived-task", "q1/t-1"},
		{"POST", "queues/q1/pending_tasks/t-1:archive", "asynqmon:archive-pending-task", "q1/t-1"},
		{"DELETE", "queues/q1/completed_tasks/t-1", "asynqmon:delete-completed-task", "q1/t-1"},
		{"POST", "queues/q1/active_tasks/t-1:cancel", "asynqmon:cancel-active-task", "q1/t-1"},
		{"POST", "queues/q1/retry_tasks:batch_run", "asynqmon:batch-run-retry-tasks", "q1"},
		{"POST", "queues/q1/archived_tasks:run_all", "asynqmon:run-all-archived-tasks", "q1"},
		{"DELETE", "queues/q1/scheduled_tasks:delete_all", "asynqmon:delete-all-scheduled-tasks", "q1"},
		{"POST", "queues/q1/groups/g1/aggregating_tasks/t-1:run", "asynqmon:run-aggregating-task", "q1/g1/t-1"},
		{"DELETE", "queues/q1/groups/g1/aggregating_tasks:delete_all", "asynqmon:delete-all-aggregating-tasks", "q1/g1"},
		{"POST", "something/else", "asynqmon:post", "something/else"},
	} {
		e := asynqmonAction(c.method, c.path)
		if e.Action != c.action || e.Target != c.target {
			t.Errorf("%s %s: %q on %q, want %q on %q", c.method, c.path, e.Action, e.Target, c.action, c.target)
		}
	}
}

// recordAudit is how other routes (bulk actions, re-runs) record an action
// with its filter and count: the filter is kept in its JSON form, whatever
// its Go type, and the page shows it as compact JSON.
func TestRecordAuditFilterAndCount(t *testing.T) {
	e := newEnv(t, envOptions{})
	type bulkFilter struct {
		Status      string `json:"status,omitempty"`
		FailureKind string `json:"failureKind,omitempty"`
		SystemID    string `json:"systemId,omitempty"`
	}
	req, _ := http.NewRequest("POST", "/api/jobs/bulk", nil)
	req = req.WithContext(context.WithValue(req.Context(), userKey{}, TokenUser))
	n := 7
	e.server.recordAudit(req, "bulk-retry", "jobs", bulkFilter{Status: "failed", FailureKind: "transient"}, &n)

	list := e.audit(t, "?action=bulk-retry", authBearer)
	if list.Count != 1 {
		t.Fatalf("entries %+v", list.Entries)
	}
	got := list.Entries[0]
	f, _ := got.Filter.(map[string]any)
	if got.User != TokenUser || got.Target != "jobs" || got.Count == nil || *got.Count != 7 ||
		len(f) != 2 || f["status"] != "failed" || f["failureKind"] != "transient" {
		t.Fatalf("entry %+v (filter %v)", got, got.Filter)
	}
	page := string(e.do("GET", "/audit", nil, authBasic).body)
	for _, want := range []string{`<code>{&#34;failureKind&#34;:&#34;transient&#34;,&#34;status&#34;:&#34;failed&#34;}</code>`, "<td>7</td>"} {
		if !strings.Contains(page, want) {
			t.Errorf("the audit page lacks %s:\n%s", want, page)
		}
	}
}

// An action that was done stands when its audit entry cannot be written:
// the failure is logged, the answer is the action's.
func TestAuditFailureDoesNotFailTheAction(t *testing.T) {
	st, p := proxiedStore(t)
	e := newEnv(t, envOptions{store: st})
	p.close() // MongoDB gone; the breaker lives in Redis
	start := time.Now()
	r := e.do("POST", "/api/breaker/reset", nil, authBearer)
	e.expect(r, http.StatusOK)
	if m := r.json(t); m["state"] != "closed" {
		t.Fatalf("reset: %s", r.body)
	}
	if took := time.Since(start); took > auditTimeout+2*time.Second {
		t.Fatalf("the reset answered after %v: the audit write is not bounded", took)
	}
}
