package web

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// insertFailed writes failed jobs straight into MongoDB, as old runs left
// them: id, kind, step and message each.
func (e *env) insertFailed(at time.Time, jobs ...[4]string) {
	e.t.Helper()
	var docs []any
	for i, j := range jobs {
		ts := at.Add(time.Duration(i) * time.Second)
		docs = append(docs, bson.M{"_id": j[0], "id": j[0], "status": "failed", "systemId": "sys-1", "eventId": "ev-" + j[0],
			"queue": "default", "createdAt": ts, "updatedAt": ts, "error": j[3],
			"failure": bson.M{"kind": j[1], "step": j[2], "message": j[3], "at": ts}})
	}
	if _, err := e.store.Database().Collection(store.JobsCollection).InsertMany(context.Background(), docs); err != nil {
		e.t.Fatal(err)
	}
}

// Seven jobs failing for one reason, each message naming its own job, are
// one group of seven, with their raw messages kept as examples; the
// group's fingerprint selects exactly them for the list and a bulk retry.
func TestFailureGroupsByFingerprint(t *testing.T) {
	e := newEnv(t, envOptions{})
	at := time.Now().Add(-time.Hour).UTC()
	var jobs [][4]string
	for i := 1; i <= 7; i++ {
		id := fmt.Sprintf("orphan-%d", i)
		jobs = append(jobs, [4]string{id, store.KindBusiness, tasks.StepFetchJob, "job " + id + " is missing its request"})
	}
	jobs = append(jobs, [4]string{"slow-1", store.KindTransient, tasks.StepProcessInsights, "provider timeout after 30s"},
		[4]string{"slow-2", store.KindTransient, tasks.StepProcessInsights, "provider timeout after 45s"})
	e.insertFailed(at, jobs...)

	r := e.do("GET", "/api/failures", nil, authBearer)
	e.expect(r, http.StatusOK)
	var f Failures
	if err := json.Unmarshal(r.body, &f); err != nil {
		t.Fatal(err)
	}
	if f.Total != 9 || len(f.Groups) != 2 {
		t.Fatalf("failures: %d in %d groups, want 9 in 2: %s", f.Total, len(f.Groups), r.body)
	}
	g := f.Groups[0]
	if g.Count != 7 || g.Kind != store.KindBusiness || g.Pattern != "job <id> is missing its request" || len(g.Examples) != 5 {
		t.Fatalf("the orphans' group: %+v", g)
	}
	if g.Message != "job orphan-7 is missing its request" || g.Examples[0].Message != "job orphan-7 is missing its request" {
		t.Errorf("the group keeps the newest raw message: %q, example %q", g.Message, g.Examples[0].Message)
	}
	if f.Groups[1].Count != 2 || f.Groups[1].Pattern != "provider timeout after <duration>" {
		t.Errorf("the timeouts' group: %+v", f.Groups[1].FailureGroup)
	}

	// The fingerprint is a filter: the job list and a bulk dry run.
	r = e.do("GET", "/api/jobs?status=failed&fingerprint="+g.Fingerprint, nil, authBearer)
	e.expect(r, http.StatusOK)
	var list JobList
	_ = json.Unmarshal(r.body, &list)
	if list.Count != 7 {
		t.Errorf("the group's list has %d jobs, want 7", list.Count)
	}
	r = e.do("GET", "/api/jobs?status=failed&limit=3&offset=5&fingerprint="+g.Fingerprint, nil, authBearer)
	e.expect(r, http.StatusOK)
	_ = json.Unmarshal(r.body, &list)
	if list.Count != 2 || list.Jobs[0].ID != "orphan-2" || list.Jobs[1].ID != "orphan-1" {
		t.Errorf("the group's last page: %s", r.body)
	}
	r = e.do("POST", "/api/jobs/bulk", map[string]any{"action": "retry", "dryRun": true,
		"filter": map[string]any{"status": "failed", "fingerprint": g.Fingerprint}}, authBearer)
	e.expect(r, http.StatusOK)
	if strings.TrimSpace(string(r.body)) != `{"matched":7}` {
		t.Errorf("dry run of the group: %s", r.body)
	}
	e.expectError(e.do("GET", "/api/jobs?fingerprint=nope", nil, authBearer), http.StatusUnprocessableEntity, "fingerprint")

	// The page: one row of seven, whose retry is "retry anyway…" (the
	// failure is permanent) and leads to a dry run that says so.
	r = e.do("GET", "/failures", nil, authBasic)
	e.expect(r, http.StatusOK)
	body := string(r.body)
	for _, want := range []string{`data-count="7" data-fingerprint="` + g.Fingerprint + `"`, "job &lt;id&gt; is missing its request",
		"retry anyway…", `data-permanent="true"`, `data-count="2"`} {
		if !strings.Contains(body, want) {
			t.Errorf("failures page lacks %s", want)
		}
	}
	r = e.do("GET", "/bulk?action=retry&dryRun=1&status=failed&fingerprint="+g.Fingerprint, nil, authBasic)
	e.expect(r, http.StatusOK)
	body = string(r.body)
	for _, want := range []string{`<b id="bulk-matched">7</b>`, `id="bulk-permanent"><b>7</b> of them failed for good`, `href="/jobs/orphan-7"`} {
		if !strings.Contains(body, want) {
			t.Errorf("dry run page lacks %s", want)
		}
	}
}

// A permanent failure's page says a retry fails again and opens the
// re-run form; retried anyway, the page then tells what the run did
// (failed again), read from the job on every load, with no notice in the
// URL to come back on reload.
func TestPermanentFailureRetryTellsTheOutcome(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "perm-1")
	e.send("perm-1")
	e.waitStatus("perm-1", tasks.StatusFailed, 20*time.Second)
	r := e.do("GET", "/jobs/perm-1", nil, authBasic)
	e.expect(r, http.StatusOK)
	body := string(r.body)
	for _, want := range []string{`id="job-permanent"`, "fails again", `id="retry">Retry anyway`, `<details class="rerun" id="rerun-form" open>`} {
		if !strings.Contains(body, want) {
			t.Fatalf("permanent failure's page lacks %s", want)
		}
	}
	if strings.Contains(body, "Retry now") {
		t.Errorf("a permanent failure offers Retry now")
	}
	first := e.job("perm-1").Failure.At
	r = e.formPost("/jobs/perm-1/retry", url.Values{"csrf": {csrfOf(t, body, "/jobs/perm-1/retry")}})
	e.expect(r, http.StatusSeeOther)
	if loc := r.header.Get("Location"); loc != "/jobs/perm-1" {
		t.Errorf("the retry redirects to %s, want the plain job page", loc)
	}
	testenv.WaitJob(t, e.store, "perm-1", 20*time.Second, "failed again", func(j *store.Job) bool {
		return j.Status == tasks.StatusFailed && j.Failure != nil && j.Failure.At.After(first)
	})
	r = e.do("GET", "/jobs/perm-1", nil, authBasic)
	body = string(r.body)
	if !strings.Contains(body, `id="retry-outcome" data-state="failed-again"`) || !strings.Contains(body, "the run then failed again") {
		t.Errorf("the page does not say the retried run failed again:\n%s", body)
	}
}

// A refused re-run answers the job page with what was typed, and the
// form says the rules provider ignores the prompt; a re-run with an
// edited prompt shows the edit in the runs table.
func TestRerunFormKeepsInputAndShowsEdits(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.server.cfg.Provider = "rules"
	e.send("edit-1")
	e.waitDone("edit-1")
	r := e.do("GET", "/jobs/edit-1", nil, authBasic)
	body := string(r.body)
	if !strings.Contains(body, "ignores the custom prompt") {
		t.Errorf("the re-run form does not say rules ignores the prompt")
	}
	token := csrfOf(t, body, "/jobs/edit-1/rerun")
	r = e.formPost("/jobs/edit-1/rerun", url.Values{"csrf": {token}, "fromStep": {"send-completion"},
		"customPrompt": {"focus on the cold nights"}, "contextWindowDays": {"14"}})
	e.expect(r, http.StatusUnprocessableEntity)
	body = string(r.body)
	for _, want := range []string{`id="rerun-error"`, "focus on the cold nights</textarea>", `value="14"`,
		`<option value="send-completion" selected>`, `id="rerun-form" open`} {
		if !strings.Contains(body, want) {
			t.Errorf("refused re-run's page lacks %s", want)
		}
	}
	first := e.job("edit-1").EventID
	r = e.formPost("/jobs/edit-1/rerun", url.Values{"csrf": {token}, "fromStep": {"process-insights"},
		"customPrompt": {"focus on the cold nights"}})
	e.expect(r, http.StatusSeeOther)
	testenv.WaitJob(t, e.store, "edit-1", 20*time.Second, "the re-run done", func(j *store.Job) bool {
		return j.EventID != first && j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})
	r = e.do("GET", "/jobs/edit-1", nil, authBasic)
	if !strings.Contains(string(r.body), "edited: customPrompt “focus on the cold nights”") {
		t.Errorf("the runs table does not show the edit:\n%s", r.body)
	}
}

// Sign-out and the pages around the login: the icon and the sign-out page
// need no login, a page asked for without one answers a page (what a
// cancelled prompt shows), the sign-out probe makes the browser keep a
// user that matches nothing, and /signin leads a valid login to the jobs.
func TestSignOutAndTheLoginPages(t *testing.T) {
	e := newEnv(t, envOptions{viewer: true})
	r := e.do("GET", "/favicon.ico", nil, authNone)
	e.expect(r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); ct != "image/svg+xml" {
		t.Errorf("favicon served as %q", ct)
	}
	r = e.do("GET", "/signout", nil, authNone)
	e.expect(r, http.StatusOK)
	if !strings.Contains(string(r.body), `<script src="/assets/signout.js" defer></script>`) || !strings.Contains(string(r.body), `href="/signin"`) {
		t.Errorf("sign-out page:\n%s", r.body)
	}
	r = e.do("GET", "/", nil, authNone)
	e.expect(r, http.StatusUnauthorized)
	if !strings.Contains(string(r.body), "Sign-in needed") || r.header.Get("WWW-Authenticate") == "" {
		t.Errorf("a page without a login: %s", r.body)
	}
	r = e.do("GET", "/signin?probe=1", nil, authNone)
	e.expect(r, http.StatusUnauthorized)
	if r.header.Get("WWW-Authenticate") == "" {
		t.Errorf("the probe does not challenge")
	}
	e.expect(e.do("GET", "/signin?probe=1", nil, authNone, "Authorization", "Basic c2lnbmVkLW91dDpzaWduZWQtb3V0"), http.StatusOK)
	e.expect(e.do("GET", "/signin", nil, authNone), http.StatusUnauthorized)
	r = e.do("GET", "/signin", nil, authBasic)
	e.expect(r, http.StatusSeeOther)
	if r.header.Get("Location") != "/" {
		t.Errorf("signed in, /signin redirects to %q", r.header.Get("Location"))
	}
	// The viewer is offered the way to the admin.
	if body := string(e.do("GET", "/", nil, authViewer).body); !strings.Contains(body, `id="signout" href="/signout">sign out / sign in as admin`) {
		t.Errorf("the viewer's page has no sign-out to the admin")
	}
}

// The audit page links each entry to what it acted on, and an event's
// link opens its job.
func TestAuditLinksOpenTheJob(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "aud-1")
	ev := e.send("aud-1")["eventId"].(string)
	e.waitStatus("aud-1", tasks.StatusFailed, 20*time.Second)
	e.fail.set(false)
	e.expect(e.do("POST", "/api/events/"+ev+"/retry", nil, authBearer), http.StatusOK)
	e.waitDone("aud-1")
	body := string(e.do("GET", "/audit", nil, authBasic).body)
	if !strings.Contains(body, `<a class="audit-link" href="/events/`+ev+`">job</a>`) {
		t.Fatalf("the retry's entry does not link its job:\n%s", body)
	}
	r := e.do("GET", "/events/"+ev, nil, authBasic)
	e.expect(r, http.StatusSeeOther)
	if loc := r.header.Get("Location"); loc != "/jobs/aud-1" {
		t.Errorf("/events/%s leads to %q", ev, loc)
	}
	e.expect(e.do("GET", "/events/no-such-event", nil, authBasic), http.StatusNotFound)
}

// asynqmon's pages load nothing from another origin: its links to Google's
// fonts are taken out, the page is otherwise asynqmon's.
func TestMonitorLoadsNoExternalFonts(t *testing.T) {
	e := newEnv(t, envOptions{})
	for _, p := range []string{"/monitoring/", "/monitoring/queues/default"} {
		r := e.do("GET", p, nil, authBasic)
		e.expect(r, http.StatusOK)
		body := string(r.body)
		if strings.Contains(body, "fonts.googleapis.com") || !strings.Contains(body, `window.FLAG_ROOT_PATH=`) {
			t.Errorf("%s:\n%.800s", p, body)
		}
	}
}
