package web

import (
	"bytes"
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/extension"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

type pageTemplates struct {
	index, job, message, audit, failures, bulk, bulkOp *template.Template
}

// pageChrome is what the layout shows of the request on every page: who
// is signed in. Page data embeds it; render fills it.
type pageChrome struct {
	SignedInAs string
	ReadOnly   bool
}

func (c *pageChrome) chrome() *pageChrome { return c }

// chromed is page data that embeds pageChrome.
type chromed interface{ chrome() *pageChrome }

var funcs = template.FuncMap{
	"time":     fmtTime,
	"timep":    fmtTimePtr,
	"duration": fmtDuration,
	"monitorQueue": func(queue, state string) string {
		u := monitorRoot + "/queues/" + url.PathEscape(queue)
		if state != "" {
			u += "?status=" + url.QueryEscape(state)
		}
		return u
	},
	"monitorTask": func(queue, id string) string {
		return monitorRoot + "/queues/" + url.PathEscape(queue) + "/tasks/" + url.PathEscape(id)
	},
	"jobURL": func(id string) string { return "/jobs/" + url.PathEscape(id) },
	// chrome is the page's pageChrome, nil for data without one.
	"chrome": func(data any) *pageChrome {
		if c, ok := data.(chromed); ok {
			return c.chrome()
		}
		return nil
	},
	// chainState words a follow-up's state for the job page.
	"chainState": func(state string) string {
		switch state {
		case ops.FollowUpUnsent:
			return "not sent yet"
		case ops.FollowUpGone:
			return "gone from Redis"
		}
		return state
	},
	"deref": func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	},
}

func mustParsePages() *pageTemplates {
	parse := func(name string) *template.Template {
		return template.Must(template.New(name).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name))
	}
	return &pageTemplates{index: parse("index.html"), job: parse("job.html"), message: parse("message.html"), audit: parse("audit.html"),
		failures: parse("failures.html"), bulk: parse("bulk.html"), bulkOp: parse("bulkop.html")}
}

func assetHandler() http.Handler {
	sub, _ := fs.Sub(assetFS, "assets")
	files := http.StripPrefix("/assets/", http.FileServer(http.FS(sub)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=3600")
		files.ServeHTTP(w, r)
	})
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "–"
	}
	return t.UTC().Format("2006-01-02 15:04:05Z")
}

func fmtTimePtr(t *time.Time) string {
	if t == nil {
		return "–"
	}
	return fmtTime(*t)
}

func fmtDuration(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d < time.Second:
		return fmt.Sprintf("%d ms", ms)
	case d < time.Minute:
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	return d.Round(time.Second).String()
}

// The pages' Content-Security-Policy: no script at all, or the service's
// own scripts only (/assets/; no inline script, no other origin).
const (
	cspNoScript = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; frame-ancestors 'none'; form-action 'self'"
	cspScripts  = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'"
)

// render writes a page that loads no script; a template error is logged
// and answered 500. Data that embeds pageChrome (passed as a pointer) gets
// the request's user.
func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, t *template.Template, data any) {
	s.renderPage(w, r, code, t, data, false)
}

// renderPage writes a page; scripts: it loads the service's own scripts,
// which its policy then allows.
func (s *Server) renderPage(w http.ResponseWriter, r *http.Request, code int, t *template.Template, data any, scripts bool) {
	if c, ok := data.(chromed); ok {
		c.chrome().SignedInAs, c.chrome().ReadOnly = userOf(r), !mayAct(r)
	}
	var buf bytes.Buffer
	if err := t.ExecuteTemplate(&buf, "layout", data); err != nil {
		s.log.Error("render page", "err", err)
		http.Error(w, "page could not be rendered", http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	csp := cspNoScript
	if scripts {
		csp = cspScripts
	}
	h.Set("Content-Security-Policy", csp)
	w.WriteHeader(code)
	_, _ = buf.WriteTo(w)
}

type messagePage struct {
	pageChrome
	Title, Message string
}

func (s *Server) pageError(w http.ResponseWriter, r *http.Request, code int, title, msg string) {
	s.render(w, r, code, s.pages.message, &messagePage{Title: title, Message: msg})
}

func (s *Server) notFoundPage(w http.ResponseWriter, r *http.Request) {
	s.pageError(w, r, http.StatusNotFound, "Not found", "There is no page at "+r.URL.Path+".")
}

type statusCount struct {
	Status string
	Count  int64
	Active bool
}

type indexPage struct {
	pageChrome
	Title    string
	Jobs     []*store.Job
	Counts   []statusCount
	Total    int64
	Status   string
	SystemID string
	Limit    int
	Statuses []string
	Error    string
	// Extra are the filter's other fields (a failure group's), kept by the
	// form and the paging links; Older and Newer page through the jobs.
	Extra        map[string]string
	Older, Newer string
	// Breaker is the provider's breaker when it is not closed; nil else.
	Breaker *flow.BreakerState
}

// openBreaker is the provider's breaker for a page's banner: nil when it is
// closed, unknown or not configured (a page never fails for it).
func (s *Server) openBreaker(ctx context.Context) *flow.BreakerState {
	if s.cfg.Breaker == nil {
		return nil
	}
	st, err := s.cfg.Breaker.State(ctx)
	if err != nil || st.State == flow.Closed {
		return nil
	}
	return st
}

// indexPage is GET /: recent jobs, filters and counts by status.
func (s *Server) indexPage(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Store == nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", "MongoDB is not configured.")
		return
	}
	data := indexPage{Title: "Recent jobs", Statuses: jobStatuses, Breaker: s.openBreaker(r.Context())}
	f, err := parseJobFilter(r)
	if err != nil {
		data.Error = err.Error()
		f = store.JobFilter{Limit: defaultLimit}
	}
	data.Status, data.SystemID, data.Limit = f.Status, f.SystemID, f.Limit
	counts, err := s.cfg.Store.CountByStatus(r.Context())
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "MongoDB unavailable", err.Error())
		return
	}
	for _, st := range jobStatuses {
		data.Counts = append(data.Counts, statusCount{Status: st, Count: counts[st], Active: st == f.Status})
		data.Total += counts[st]
	}
	jobs, err := s.cfg.Store.ListJobs(r.Context(), f)
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "MongoDB unavailable", err.Error())
		return
	}
	data.Jobs = jobs
	in := filterFromQuery(r.URL.Query())
	in.Status, in.SystemID = "", ""
	data.Extra = map[string]string{}
	for k, v := range in.values() {
		data.Extra[k] = v[0]
	}
	page := func(offset int) string {
		v := filterFromQuery(r.URL.Query()).values()
		v.Set("limit", strconv.Itoa(f.Limit))
		v.Set("offset", strconv.Itoa(offset))
		return "/?" + v.Encode()
	}
	if len(jobs) == f.Limit {
		data.Older = page(f.Offset + f.Limit)
	}
	if f.Offset > 0 {
		data.Newer = page(max(f.Offset-f.Limit, 0))
	}
	code := http.StatusOK
	if data.Error != "" {
		code = http.StatusUnprocessableEntity
	}
	s.render(w, r, code, s.pages.index, &data)
}

type stepRow struct {
	Name    string
	Present bool
	State   store.StepState
	Output  string
}

type jobPage struct {
	pageChrome
	Title string
	// Breaker is the provider's breaker when it is not closed; nil else.
	Breaker     *flow.BreakerState
	Job         *store.Job
	Steps       []stepRow
	Event       *EventStatus
	EventError  string
	ResultHTML  template.HTML
	ResultJSON  string
	RequestJSON string
	Progress    []progressRow
	Live        bool
	// CanAct: the user may press the buttons (not the viewer).
	CanAct     bool
	CanRetry   bool
	CanCancel  bool
	CanRerun   bool
	RetryCSRF  string
	CancelCSRF string
	RerunCSRF  string
	// Runs are the job's current run, then its ended ones, newest first.
	Runs      []runRow
	StepNames []string
	Notice    string
	Error     string

	// Streams: the page follows the job's live stream (LiveURL) with
	// live.js; the run is live, or its chain has yet to be sent.
	Streams bool
	LiveURL string
	// Chain is the run's insights-completed follow-up; ChainError says why
	// it is unknown.
	Chain      *ops.FollowUpStatus
	ChainError string
}

var markdown = goldmark.New(goldmark.WithExtensions(extension.GFM))

// renderMarkdown turns the result's markdown into HTML; goldmark leaves out
// raw HTML (it is not configured WithUnsafe), so the output is safe.
func renderMarkdown(md string) template.HTML {
	var buf bytes.Buffer
	if err := markdown.Convert([]byte(md), &buf); err != nil {
		return template.HTML("<pre>" + template.HTMLEscapeString(md) + "</pre>")
	}
	return template.HTML(buf.String()) //nolint:gosec // goldmark escapes and drops raw HTML
}

func prettyJSON(v any) string {
	if v == nil {
		return ""
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprint(v)
	}
	return shorten(string(b))
}

// pageJob reads job id for a page, or answers with the error page (false).
func (s *Server) pageJob(w http.ResponseWriter, r *http.Request, id string) (*store.Job, bool) {
	if s.cfg.Store == nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", "MongoDB is not configured.")
		return nil, false
	}
	job, err := s.cfg.Store.GetJob(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		s.pageError(w, r, http.StatusNotFound, "Job not found", "There is no job "+id+".")
		return nil, false
	}
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "MongoDB unavailable", err.Error())
		return nil, false
	}
	return job, true
}

// jobPage is GET /jobs/{jobId}: the steps as a timeline, the result and the
// event's asynq state, from one read of the job (ops.Job).
func (s *Server) jobPage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("jobId")
	d, err := s.ops.Job(r.Context(), id)
	switch {
	case errors.Is(err, ops.ErrNoStore):
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", "MongoDB is not configured.")
		return
	case errors.Is(err, ops.ErrNotFound):
		s.pageError(w, r, http.StatusNotFound, "Job not found", "There is no job "+id+".")
		return
	case err != nil:
		s.pageError(w, r, http.StatusServiceUnavailable, "MongoDB unavailable", err.Error())
		return
	}
	job := d.Job
	data := jobPage{Title: "Job " + job.ID, Job: job, Live: tasks.Live(job.Status), Breaker: s.openBreaker(r.Context()),
		Notice: r.URL.Query().Get("notice"), Error: r.URL.Query().Get("error")}
	for _, name := range tasks.Steps {
		st, ok := job.Steps[name]
		data.Steps = append(data.Steps, stepRow{Name: name, Present: ok, State: st, Output: prettyJSON(st.Output)})
	}
	if job.FinalInsights != nil {
		data.ResultJSON = prettyJSON(job.FinalInsights)
		if md := finalOf(job.FinalInsights).RawText; md != "" {
			data.ResultHTML = renderMarkdown(md)
		}
	}
	data.RequestJSON = prettyJSON(job.Request)
	for _, ev := range job.Progress {
		data.Progress = append(data.Progress, progressRow{At: ev.Timestamp, Type: ev.Type, Text: stageOf(ev)})
	}
	data.Event, data.Chain = d.Event, d.FollowUp
	if d.EventErr != nil && s.cfg.Inspector != nil {
		data.EventError = d.EventErr.Error()
	}
	if d.FollowUpErr != nil {
		data.ChainError = d.FollowUpErr.Error()
	}
	state := ""
	if data.Event != nil && data.Event.State != nil {
		state = *data.Event.State
	}
	if data.Streams = streams(job); data.Streams {
		data.LiveURL = "/jobs/" + url.PathEscape(job.ID) + "/live?since=" + strconv.Itoa(len(job.Progress))
	}
	data.CanAct = mayAct(r)
	data.CanRetry = data.CanAct && (job.Status == tasks.StatusFailed || state == "archived" || state == "retry")
	data.CanCancel = data.CanAct && tasks.Live(job.Status)
	data.CanRerun = data.CanAct && !tasks.Live(job.Status) && job.EventID != ""
	if data.CanRetry {
		data.RetryCSRF = s.csrfToken(r, "retry:"+job.ID)
	}
	if data.CanCancel {
		data.CancelCSRF = s.csrfToken(r, "cancel:"+job.ID)
	}
	if data.CanRerun {
		data.RerunCSRF = s.csrfToken(r, "rerun:"+job.ID)
	}
	data.StepNames = tasks.Steps
	data.Runs = []runRow{currentRun(job)}
	if prev, err := s.cfg.Store.PreviousRuns(r.Context(), job, 10); err == nil {
		for _, p := range prev {
			data.Runs = append(data.Runs, endedRun(s.ops.RunView(p)))
		}
	}
	s.renderPage(w, r, http.StatusOK, s.pages.job, &data, data.Streams)
}

// progressRow is one progress event on the job page.
type progressRow struct {
	At   time.Time
	Type string
	Text string
}

// finalOf reads a stored finalInsights (as decoded from MongoDB, or
// decrypted) in its document shape; fields it lacks stay zero.
func finalOf(stored any) store.FinalInsights {
	var f store.FinalInsights
	if b, err := json.Marshal(stored); err == nil {
		_ = json.Unmarshal(b, &f)
	}
	return f
}

// retryPage is POST /jobs/{jobId}/retry (the Retry button), audited as
// "retry" of the job's event, as the API's retry is.
func (s *Server) retryPage(w http.ResponseWriter, r *http.Request) {
	s.pageAction(w, r, "retry", func(job *store.Job) (string, error) {
		res, err := s.ops.Retry(r.Context(), job.EventID)
		if err != nil {
			return "", err
		}
		s.audit(r, store.AuditEntry{Action: "retry", Target: job.EventID, Detail: retryDetail(res) + "; job page"})
		return "Event " + res.EventID + " " + res.Action + " (" + res.State + ").", nil
	})
}

// cancelPage is POST /jobs/{jobId}/cancel (the Cancel button), audited as
// "cancel" of the job's event, as the API's cancel is.
func (s *Server) cancelPage(w http.ResponseWriter, r *http.Request) {
	s.pageAction(w, r, "cancel", func(job *store.Job) (string, error) {
		res, err := s.ops.Cancel(r.Context(), job.EventID)
		if err != nil {
			return "", err
		}
		s.audit(r, store.AuditEntry{Action: "cancel", Target: job.EventID, Detail: cancelDetail(res) + "; job page"})
		return "Job cancelled.", nil
	})
}

func (s *Server) pageAction(w http.ResponseWriter, r *http.Request, action string, do func(*store.Job) (string, error)) {
	id := r.PathValue("jobId")
	if !s.checkCSRF(r, action+":"+id) {
		s.pageError(w, r, http.StatusForbidden, "Refused", "The form's token is missing or stale: reload the job page and try again.")
		return
	}
	job, ok := s.pageJob(w, r, id)
	if !ok {
		return
	}
	target := "/jobs/" + url.PathEscape(id)
	msg, err := do(job)
	if err != nil {
		http.Redirect(w, r, target+"?error="+url.QueryEscape(strings.TrimSpace(err.Error())), http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, target+"?notice="+url.QueryEscape(msg), http.StatusSeeOther)
}

// runRow is one run of a job on its page.
type runRow struct {
	EventID string
	Current bool
	Status  string
	RerunOf *store.RerunOf
	Error   string
	EndedAt time.Time
	Steps   []runStep
	// Insights is an ended run's report and HealthScore its score, when
	// the run had a result.
	Insights    template.HTML
	HealthScore *float64
}

// runStep is a step of a run: its checkpoint's status, or reused when the
// run kept an earlier run's.
type runStep struct {
	Name, Status string
	Runs         int
	Reused       bool
}

func runSteps(steps map[string]store.StepState) []runStep {
	out := make([]runStep, 0, len(tasks.Steps))
	for _, name := range tasks.Steps {
		st, ok := steps[name]
		row := runStep{Name: name, Status: "not run"}
		if ok {
			row.Status, row.Runs, row.Reused = st.Status, st.Runs, st.ReusedFrom != ""
		}
		out = append(out, row)
	}
	return out
}

func currentRun(j *store.Job) runRow {
	r := runRow{EventID: j.EventID, Current: true, Status: j.Status, RerunOf: j.RerunOf, Steps: runSteps(j.Steps)}
	if j.Error != nil && j.Status != tasks.StatusCompleted {
		r.Error = *j.Error
	}
	return r
}

func endedRun(p *store.RunRecord) runRow {
	r := runRow{EventID: p.EventID, Status: p.Status, RerunOf: p.RerunOf, EndedAt: p.EndedAt, Steps: runSteps(p.Steps)}
	if p.Error != nil && p.Status != tasks.StatusCompleted {
		r.Error = *p.Error
	}
	if p.FinalInsights != nil {
		f := finalOf(p.FinalInsights)
		r.HealthScore = &f.HealthScore
		if f.RawText != "" {
			r.Insights = renderMarkdown(f.RawText)
		}
	}
	return r
}

// rerunPage is POST /jobs/{jobId}/rerun (the Re-run form).
func (s *Server) rerunPage(w http.ResponseWriter, r *http.Request) {
	s.pageAction(w, r, "rerun", func(job *store.Job) (string, error) {
		req := ops.RerunRequest{FromStep: r.PostFormValue("fromStep")}
		if v := r.PostFormValue("customPrompt"); v != "" {
			req.CustomPrompt = &v
		}
		if v := r.PostFormValue("modelOverride"); v != "" {
			req.ModelOverride = &v
		}
		for _, f := range []struct {
			name string
			dst  **int
		}{{"contextWindowDays", &req.ContextWindowDays}, {"maxIterations", &req.MaxIterations}} {
			if v := r.PostFormValue(f.name); v != "" {
				n, err := strconv.Atoi(v)
				if err != nil {
					return "", fmt.Errorf("%s: must be a whole number, got %q", f.name, v)
				}
				*f.dst = &n
			}
		}
		res, err := s.ops.Rerun(r.Context(), job.ID, req)
		if err != nil {
			return "", err
		}
		s.recordAudit(r, "rerun", job.ID, req, nil)
		return "Re-run " + res.EventID + " started from " + res.FromStep + ".", nil
	})
}
