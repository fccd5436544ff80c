package web

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

func TestPages(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "job-page-bad")
	e.send("job-page-ok")
	e.send("job-page-bad")
	e.waitDone("job-page-ok")
	e.waitStatus("job-page-bad", tasks.StatusFailed, 20*time.Second)

	// Index: jobs, counts, filters.
	r := e.do("GET", "/", nil, authBasic)
	e.expect(r, http.StatusOK)
	body := string(r.body)
	for _, want := range []string{`data-job="job-page-ok"`, `data-job="job-page-bad"`, `data-status="failed"`, `href="/assets/style.css"`,
		`href="/monitoring/"`, `<select name="status">`} {
		if !strings.Contains(body, want) {
			t.Fatalf("index lacks %s", want)
		}
	}
	if strings.Contains(body, "cdn") || strings.Contains(body, "https://") {
		t.Fatalf("index refers to an outside resource")
	}
	r = e.do("GET", "/?status=failed", nil, authBasic)
	if body := string(r.body); !strings.Contains(body, `data-job="job-page-bad"`) || strings.Contains(body, `data-job="job-page-ok"`) {
		t.Fatalf("status filter not applied")
	}
	r = e.do("GET", "/?systemId=sys-other", nil, authBasic)
	if strings.Contains(string(r.body), `data-job=`) {
		t.Fatalf("system filter not applied")
	}
	r = e.do("GET", "/?limit=zero", nil, authBasic)
	e.expect(r, http.StatusUnprocessableEntity)

	// A completed job: the six steps, the rendered markdown, the task link.
	r = e.do("GET", "/jobs/job-page-ok", nil, authBasic)
	e.expect(r, http.StatusOK)
	body = string(r.body)
	for _, s := range tasks.Steps {
		if !regexp.MustCompile(`data-step="` + s + `" data-status="completed" data-runs="1"`).MatchString(body) {
			t.Fatalf("timeline lacks completed step %s:\n%s", s, body)
		}
	}
	for _, want := range []string{"<h2>KEY FINDINGS</h2>", "<strong>20 mV</strong>", `id="monitor-link" href="/monitoring/queues/default/tasks/`} {
		if !strings.Contains(body, want) {
			t.Fatalf("job page lacks %s", want)
		}
	}
	if strings.Contains(body, `http-equiv="refresh"`) || strings.Contains(body, `id="retry"`) {
		t.Fatalf("finished job page refreshes or offers a retry")
	}

	// A failed job: its error, the archived task and a Retry button.
	r = e.do("GET", "/jobs/job-page-bad", nil, authBasic)
	e.expect(r, http.StatusOK)
	body = string(r.body)
	for _, want := range []string{`id="retry"`, "inconsistent", `ts-archived`, `href="/monitoring/queues/default?status=archived"`,
		`data-step="process-insights" data-status="failed" data-runs="1"`} {
		if !strings.Contains(body, want) {
			t.Fatalf("failed job page lacks %s:\n%s", want, body)
		}
	}
	csrf := regexp.MustCompile(`action="/jobs/job-page-bad/retry"><input type="hidden" name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	if csrf == nil {
		t.Fatalf("no CSRF token in the retry form")
	}
	form := func(token string) string { return url.Values{"csrf": {token}}.Encode() }
	ct := "application/x-www-form-urlencoded"
	// Refused: no token, a token for other credentials, a cross-site post.
	e.expect(e.do("POST", "/jobs/job-page-bad/retry", "", authBasic, "Content-Type", ct), http.StatusForbidden)
	e.expect(e.do("POST", "/jobs/job-page-bad/retry", form(csrf[1]), authBearer, "Content-Type", ct), http.StatusForbidden)
	e.expect(e.do("POST", "/jobs/job-page-bad/retry", form(csrf[1]), authBasic, "Content-Type", ct, "Sec-Fetch-Site", "cross-site"), http.StatusForbidden)
	e.expect(e.do("POST", "/jobs/job-page-bad/retry", form(csrf[1]), authBasic, "Content-Type", ct, "Origin", "https://evil.example.net"), http.StatusForbidden)
	if j := e.job("job-page-bad"); j.Status != tasks.StatusFailed {
		t.Fatalf("a refused post changed the job: %s", j.Status)
	}
	// Accepted: the job resumes.
	e.fail.set(false)
	r = e.do("POST", "/jobs/job-page-bad/retry", form(csrf[1]), authBasic, "Content-Type", ct, "Origin", e.ts.URL, "Sec-Fetch-Site", "same-origin")
	e.expect(r, http.StatusSeeOther)
	if loc := r.header.Get("Location"); loc != "/jobs/job-page-bad" {
		t.Fatalf("redirect to %s", loc)
	}
	j := e.waitDone("job-page-bad")
	if testenv.Runs(j)["validate"] != 1 || testenv.Runs(j)["process-insights"] != 2 {
		t.Fatalf("runs %v", testenv.Runs(j))
	}

	// A running job's page follows it live (live.js), refreshing itself
	// only without script.
	e.fail.block.Store(true)
	e.send("job-page-live")
	e.waitStatus("job-page-live", tasks.StatusProcessing, 10*time.Second)
	r = e.do("GET", "/jobs/job-page-live", nil, authBasic)
	for _, want := range []string{`<noscript><meta http-equiv="refresh" content="2"></noscript>`, `<script src="/assets/live.js" defer></script>`,
		`data-src="/jobs/job-page-live/live?since=`, `id="cancel"`} {
		if !strings.Contains(string(r.body), want) {
			t.Fatalf("live job page lacks %s:\n%s", want, r.body)
		}
	}
	e.expect(e.do("DELETE", "/api/events/"+e.job("job-page-live").EventID, nil, authBearer), http.StatusOK)
	e.fail.block.Store(false)

	// Unknown job and page.
	e.expect(e.do("GET", "/jobs/nope", nil, authBasic), http.StatusNotFound)
	e.expect(e.do("GET", "/nowhere", nil, authBasic), http.StatusNotFound)
	r = e.do("GET", "/assets/style.css", nil, authBasic)
	e.expect(r, http.StatusOK)
	if !strings.HasPrefix(r.header.Get("Content-Type"), "text/css") {
		t.Fatalf("css served as %s", r.header.Get("Content-Type"))
	}
}

func TestMonitoringMounted(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.send("job-mon")
	r := e.do("GET", "/monitoring/", nil, authBasic)
	e.expect(r, http.StatusOK)
	if !strings.Contains(string(r.body), `window.ROOT_PATH="/monitoring"`) && !strings.Contains(string(r.body), "/monitoring") {
		t.Fatalf("asynqmon index without its root path:\n%.500s", r.body)
	}
	r = e.do("GET", "/monitoring/api/queues/default/pending_tasks", nil, authBasic)
	e.expect(r, http.StatusOK)
	if !strings.Contains(string(r.body), `job-mon`) || !strings.Contains(string(r.body), `\"analysisData\"`) {
		t.Fatalf("pending tasks through asynqmon: %s", r.body)
	}
	// asynqmon's write API refuses cross-site posts.
	r = e.do("POST", "/monitoring/api/queues/default:pause", nil, authBasic, "Sec-Fetch-Site", "cross-site")
	e.expect(r, http.StatusForbidden)
	r = e.do("GET", "/monitoring", nil, authBasic)
	e.expect(r, http.StatusMovedPermanently)
}
