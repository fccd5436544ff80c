package web

import (
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bmsview/insights/tasks"
)

// formPost posts a page form as a same-origin browser would.
func (e *env) formPost(path string, v url.Values) *resp {
	e.t.Helper()
	return e.do("POST", path, v.Encode(), authBasic, "Content-Type", "application/x-www-form-urlencoded",
		"Origin", e.ts.URL, "Sec-Fetch-Site", "same-origin")
}

func csrfOf(t *testing.T, body, action string) string {
	t.Helper()
	m := regexp.MustCompile(`action="` + regexp.QuoteMeta(action) + `"[^>]*>\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no form posting to %s with a CSRF token:\n%s", action, body)
	}
	return m[1]
}

func TestFailuresAndBulkPages(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	e.fail.set(true, "p-1", "p-2", "p-3")
	for _, id := range []string{"p-1", "p-2", "p-3"} {
		e.send(id)
	}
	for _, id := range []string{"p-1", "p-2", "p-3"} {
		e.waitStatus(id, tasks.StatusFailed, 20*time.Second)
	}

	r := e.do("GET", "/failures", nil, authBasic)
	e.expect(r, http.StatusOK)
	body := string(r.body)
	if !strings.Contains(body, `data-kind="business" data-step="process-insights" data-count="3"`) {
		t.Fatalf("failures page without the group of 3:\n%s", body)
	}
	retry := regexp.MustCompile(`class="bulk-retry" href="([^"]+)"`).FindStringSubmatch(body)
	if retry == nil {
		t.Fatalf("no retry link on the failures page")
	}
	link := html.UnescapeString(retry[1]) // as a browser reads the attribute

	// The group's link is a dry run: the count and a confirm button.
	r = e.do("GET", link, nil, authBasic)
	e.expect(r, http.StatusOK)
	body = string(r.body)
	if !strings.Contains(body, `<b id="bulk-matched">3</b>`) || !strings.Contains(body, `id="bulk-confirm"`) {
		t.Fatalf("dry run page:\n%s", body)
	}
	token := csrfOf(t, body, "/bulk")
	for _, id := range []string{"p-1", "p-2", "p-3"} {
		if j := e.job(id); j.Status != tasks.StatusFailed {
			t.Fatalf("the dry run changed job %s: %s", id, j.Status)
		}
	}
	form := url.Values{"csrf": {token}, "action": {"retry"}, "status": {"failed"}, "failureKind": {"business"},
		"step": {"process-insights"}, "message": {e.job("p-1").Failure.Message}}
	bad := url.Values{}
	for k, v := range form {
		bad[k] = v
	}
	bad.Set("csrf", "00")
	e.expect(e.formPost("/bulk", bad), http.StatusForbidden)

	e.fail.set(false)
	r = e.formPost("/bulk", form)
	e.expect(r, http.StatusSeeOther)
	loc := r.header.Get("Location")
	if !strings.HasPrefix(loc, "/bulk/") {
		t.Fatalf("confirm redirected to %q", loc)
	}
	for _, id := range []string{"p-1", "p-2", "p-3"} {
		e.waitDone(id)
	}
	r = e.do("GET", loc, nil, authBasic)
	e.expect(r, http.StatusOK)
	body = string(r.body)
	done := regexp.MustCompile(`<tr data-job="p-\d" data-status="completed"`).FindAllString(body, -1)
	if len(done) != 3 || !strings.Contains(body, `id="bulk-status" data-status="done"`) {
		t.Fatalf("bulk action page after the jobs completed:\n%s", body)
	}
	r = e.do("GET", "/bulk", nil, authBasic)
	e.expect(r, http.StatusOK)
	if !strings.Contains(string(r.body), `href="`+loc+`"`) {
		t.Errorf("the bulk page does not list the action %s", loc)
	}
	e.expect(e.do("GET", "/bulk?dryRun=1&status=lost", nil, authBasic), http.StatusUnprocessableEntity)
	e.expect(e.do("GET", "/failures?step=dance", nil, authBasic), http.StatusUnprocessableEntity)
	// No filter: counted (and offered) only with "every job" ticked.
	r = e.do("GET", "/bulk?dryRun=1&action=delete", nil, authBasic)
	e.expect(r, http.StatusUnprocessableEntity)
	if strings.Contains(string(r.body), `id="bulk-confirm"`) {
		t.Errorf("an empty filter is offered for confirmation:\n%s", r.body)
	}
	r = e.do("GET", "/bulk?dryRun=1&action=delete&all=1", nil, authBasic)
	e.expect(r, http.StatusOK)
	if !strings.Contains(string(r.body), `name="all" value="1"`) {
		t.Errorf("the confirm form of every job does not carry all:\n%s", r.body)
	}
}

func TestRerunFromTheJobPage(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	first := e.send("pr-1")["eventId"].(string)
	e.waitDone("pr-1")
	r := e.do("GET", "/jobs/pr-1", nil, authBasic)
	e.expect(r, http.StatusOK)
	token := csrfOf(t, string(r.body), "/jobs/pr-1/rerun")
	r = e.formPost("/jobs/pr-1/rerun", url.Values{"csrf": {token}, "fromStep": {"store-results"}, "maxIterations": {"x"}})
	e.expect(r, http.StatusUnprocessableEntity)
	if !strings.Contains(string(r.body), `id="rerun-error"`) || !strings.Contains(string(r.body), "maxIterations: must be a whole number") {
		t.Fatalf("a bad number was not refused on the page:\n%s", r.body)
	}
	r = e.formPost("/jobs/pr-1/rerun", url.Values{"csrf": {token}, "fromStep": {"store-results"}})
	e.expect(r, http.StatusSeeOther)
	if !strings.Contains(r.header.Get("Location"), "notice=") {
		t.Fatalf("re-run refused: %s", r.header.Get("Location"))
	}
	j := testenvWaitRun(t, e, "pr-1", e.job("pr-1").EventID)
	if j.EventID == first {
		t.Fatalf("no new run")
	}
	r = e.do("GET", "/jobs/pr-1", nil, authBasic)
	e.expect(r, http.StatusOK)
	body := string(r.body)
	for _, want := range []string{`data-event="` + first + `"`, `data-event="` + j.EventID + `" class="current"`,
		`re-run from <b>store-results</b>`, `data-step="process-insights" data-reused="true"`, `data-step="store-results" data-reused="false"`} {
		if !strings.Contains(body, want) {
			t.Errorf("job page lacks %s", want)
		}
	}
}
