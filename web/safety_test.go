package web

import (
	"html/template"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
)

// Every answer, asynqmon's and the errors' included, forbids framing
// (X-Frame-Options and CSP frame-ancestors) and content sniffing: a page
// of another site cannot overlay asynqmon's Delete or Run-all buttons.
func TestAntiFramingOnEveryResponse(t *testing.T) {
	e := newEnv(t, envOptions{viewer: true})
	e.send("job-frames")
	for _, c := range []struct {
		method, path string
		a            auth
		code         int
	}{
		{"GET", "/monitoring/", authBasic, http.StatusOK},
		{"GET", "/monitoring/queues/default", authBasic, http.StatusOK},
		{"GET", "/monitoring/api/queues", authBasic, http.StatusOK},
		{"GET", "/monitoring/", authViewer, http.StatusOK},
		{"GET", "/monitoring", authBasic, http.StatusMovedPermanently},
		{"GET", "/monitoring/", authNone, http.StatusUnauthorized},
		{"GET", "/healthz", authNone, http.StatusOK},
		{"GET", "/readyz", authNone, http.StatusOK},
		{"GET", "/metrics", authBearer, http.StatusOK},
		{"GET", "/api/jobs/job-frames", authBearer, http.StatusOK},
		{"GET", "/api/jobs/nope", authBearer, http.StatusNotFound},
		{"POST", "/api/events", authBearer, http.StatusBadRequest},
		{"GET", "/", authBasic, http.StatusOK},
		{"GET", "/jobs/job-frames", authBasic, http.StatusOK},
		{"GET", "/assets/style.css", authBasic, http.StatusOK},
		{"GET", "/nowhere", authBasic, http.StatusNotFound},
	} {
		var body any
		if c.method == "POST" {
			body = "{"
		}
		r := e.do(c.method, c.path, body, c.a)
		if r.code != c.code {
			t.Errorf("%s %s: %d, want %d", c.method, c.path, r.code, c.code)
		}
		if got := r.header.Get("X-Frame-Options"); got != "DENY" {
			t.Errorf("%s %s: X-Frame-Options %q, want DENY", c.method, c.path, got)
		}
		if got := r.header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s %s: X-Content-Type-Options %q, want nosniff", c.method, c.path, got)
		}
		if csp := r.header.Values("Content-Security-Policy"); len(csp) != 1 || !strings.Contains(csp[0], "frame-ancestors 'none'") {
			t.Errorf("%s %s: Content-Security-Policy %q, want one policy with frame-ancestors 'none'", c.method, c.path, csp)
		}
	}
}

// The job page's notice box shows only the service's own words: ?notice=
// names one of a fixed set (anything else shows nothing), and an action's
// error (?error=) shows only with the signature the service gave it.
func TestJobPageNoticesAreFixed(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	const jobID = "job-notice"
	e.send(jobID)
	e.waitDone(jobID)
	const phish = "Session expired: sign in again at https://evil.example.net/login"
	page := func(query string) string {
		t.Helper()
		r := e.do("GET", "/jobs/"+jobID+"?"+query, nil, authBasic)
		e.expect(r, http.StatusOK)
		return string(r.body)
	}
	for _, q := range []string{
		url.Values{"notice": {phish}}.Encode(),
		url.Values{"error": {phish}}.Encode(),
		url.Values{"error": {phish}, "sig": {strings.Repeat("0", 64)}}.Encode(),
	} {
		body := page(q)
		if strings.Contains(body, "evil.example.net") || strings.Contains(body, "Session expired") {
			t.Fatalf("the job page shows text from its URL (%s):\n%s", q, body)
		}
		if strings.Contains(body, `id="notice"`) || strings.Contains(body, `id="action-error"`) {
			t.Fatalf("the job page shows a notice box for %s", q)
		}
	}
	if body := page("notice=" + noticeCancelled); !strings.Contains(body, `<p class="notice" id="notice">Job cancelled.</p>`) {
		t.Fatalf("a known notice key is not shown:\n%s", body)
	}

	// An action's own error comes back signed, and only then is shown;
	// signed for another job or other credentials it is not. (Cancel of a
	// completed job: 409; its token made as the page makes one.)
	req := httptest.NewRequest("POST", "/", nil)
	req.SetBasicAuth(AdminUser, testPassword)
	r := e.formPost("/jobs/"+jobID+"/cancel", url.Values{"csrf": {e.server.csrfToken(req, "cancel:"+jobID)}})
	e.expect(r, http.StatusSeeOther)
	loc, err := url.Parse(r.header.Get("Location"))
	if err != nil || loc.Query().Get("error") == "" || loc.Query().Get("sig") == "" {
		t.Fatalf("a refused cancel redirects to %s, want ?error= with its signature", r.header.Get("Location"))
	}
	msg := loc.Query().Get("error")
	if body := page(loc.RawQuery); !strings.Contains(body, `id="action-error"`) || !strings.Contains(body, template.HTMLEscapeString(msg)) {
		t.Fatalf("the service's own error (%s) is not shown:\n%s", msg, body)
	}
	if r := e.do("GET", "/jobs/"+jobID+"?"+loc.RawQuery, nil, authBearer); strings.Contains(string(r.body), `id="action-error"`) {
		t.Fatalf("an error signed for other credentials is shown")
	}
	token := csrfOf(t, page(""), "/jobs/"+jobID+"/rerun")
	r = e.formPost("/jobs/"+jobID+"/rerun", url.Values{"csrf": {token}, "fromStep": {"store-results"}})
	e.expect(r, http.StatusSeeOther)
	if loc := r.header.Get("Location"); loc != "/jobs/"+jobID+"?notice="+noticeRerun {
		t.Fatalf("a re-run redirects to %s, want the notice key %s", loc, noticeRerun)
	}
}

// asynqmon's Redis page tells the admin where Redis listens, never the
// read-only viewer (who might reach a store without credentials).
func TestViewerRedisInfoHidesTheAddress(t *testing.T) {
	e := newEnv(t, envOptions{viewer: true})
	opt, ok := e.redis.(asynq.RedisClientOpt)
	if !ok {
		t.Skipf("redis options %T", e.redis)
	}
	_, port, _ := net.SplitHostPort(opt.Addr)
	r := e.do("GET", "/monitoring/api/redis_info", nil, authBasic)
	e.expect(r, http.StatusOK)
	if r.json(t)["address"] != opt.Addr {
		t.Fatalf("the admin's redis_info: %.300s, want address %s", r.body, opt.Addr)
	}
	r = e.do("GET", "/monitoring/api/redis_info", nil, authViewer)
	e.expect(r, http.StatusOK)
	info := r.json(t)
	if strings.Contains(string(r.body), opt.Addr) || strings.Contains(string(r.body), "tcp_port:"+port) || info["address"] == opt.Addr {
		t.Fatalf("the viewer's redis_info shows where Redis listens: %.500s", r.body)
	}
	if raw, _ := info["raw_info"].(string); !strings.Contains(raw, "redis_version") {
		t.Fatalf("the viewer's redis_info lost the rest of INFO: %.300s", r.body)
	}
}
