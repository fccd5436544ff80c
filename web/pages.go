package web

import (
	"bytes"
	"context"
	"crypto/subtle"
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
	index, job, message, audit, failures, bulk, bulkOp, signOut *template.Template
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
	"chainState": func(state, jobStatus string) string {
		switch state {
		case ops.FollowUpUnsent:
			if jobStatus == tasks.StatusFailed || jobStatus == tasks.StatusCancelled {
				return "never sent: the run did not complete"
			}
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
		failures: parse("failures.html"), bulk: parse("bulk.html"), bulkOp: parse("bulkop.html"), signOut: parse("signout.html")}
}

func assetHandler() http.Handler {
	sub, _ := fs.Sub(assetFS, "assets")
	files := http.StripPrefix("/assets/", http.FileServer(http.FS(sub)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "private, max-age=3600")
		files.ServeHTTP(w, r)
	})
}

// fmtTime is a time as the pages show it: relative to now ("3 min ago",
// "in 40 s"), the absolute UTC time on hover (title) and in datetime,
// which console.js reads to keep the relative text current.
func fmtTime(t time.Time) template.HTML {
	if t.IsZero() {
		return "–"
	}
	abs := t.UTC().Format("2006-01-02 15:04:05 UTC")
	return template.HTML(`<time datetime="` + t.UTC().Format(time.RFC3339) + `" title="` + abs + `">` + //nolint:gosec // formatted times only
		relTime(t, time.Now()) + `</time>`)
}

func fmtTimePtr(t *time.Time) template.HTML {
	if t == nil {
		return "–"
	}
	return fmtTime(*t)
}

// relTime says how long before or after now t is, to the unit an operator
// reads at a glance; past a week, the date.
func relTime(t, now time.Time) string {
	d := now.Sub(t)
	future := d < 0
	if future {
		d = -d
	}
	var s string
	switch {
	case d < 5*time.Second && !future:
		return "just now"
	case d < time.Minute:
		s = fmt.Sprintf("%d s", int(d.Seconds()))
	case d < time.Hour:
		s = fmt.Sprintf("%d min", int(d.Minutes()))
	case d < 48*time.Hour:
		s = fmt.Sprintf("%d h", int(d.Hours()))
	case d < 7*24*time.Hour:
		s = fmt.Sprintf("%d days", int(d.Hours()/24))
	default:
		return t.UTC().Format("2 Jan 2006")
	}
	if future {
		return "in " + s
	}
	return s + " ago"
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
	// GroupPattern is the failure group's pattern when the filter names
	// one by fingerprint (read from its first job).
	GroupPattern string
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
	if f.Fingerprint != "" && len(jobs) > 0 {
		data.GroupPattern, _ = store.FailureGroupOf(jobs[0])
	}
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
	s.renderPage(w, r, code, s.pages.index, &data, true)
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

	// Took is the current run's duration, "" before it started; Running:
	// it has not ended, Took is so far.
	Took    string
	Running bool
	// Permanent: the run failed for good because of the request itself; a
	// retry fails again unless the job changes, so the page offers the
	// re-run form first.
	Permanent bool
	// Retried is what an operator's last retry of this run then did; nil
	// when it was never retried.
	Retried *retryOutcome
	// Rerun is the re-run form's input (kept when a re-run is refused),
	// RerunError why it was refused; Provider is INSIGHTS_PROVIDER.
	Rerun      rerunForm
	RerunError string
	Provider   string
	// Due is when a waiting run is due; nil once it runs or has ended.
	Due *time.Time
}

// retryOutcome is what a retried run did after the operator's retry: the
// job's state read now, never the retry's own answer.
type retryOutcome struct {
	At time.Time
	// State: waiting (not picked up yet), running, completed,
	// failed-again, cancelled.
	State string
	Text  string
}

// retryOutcomeOf reads what the run did since it was retried at j.RetriedAt.
func retryOutcomeOf(j *store.Job) *retryOutcome {
	if j.RetriedAt == nil {
		return nil
	}
	o := &retryOutcome{At: *j.RetriedAt}
	switch {
	case j.Status == tasks.StatusCompleted:
		o.State, o.Text = "completed", "the run then completed"
	case j.Status == tasks.StatusCancelled:
		o.State, o.Text = "cancelled", "the run was then cancelled"
	case j.Status == tasks.StatusFailed && j.Failure != nil && j.Failure.At.After(*j.RetriedAt):
		o.State, o.Text = "failed-again", "the run then failed again"
	case j.Status == tasks.StatusFailed:
		o.State, o.Text = "waiting", "the run is waiting for a worker"
	default:
		o.State, o.Text = "running", "the run is "+j.Status
	}
	return o
}

// rerunForm is the re-run form's fields as typed.
type rerunForm struct {
	FromStep, CustomPrompt, ContextWindowDays, MaxIterations, ModelOverride string
}

// runDuration is the current run's duration: from its first step's start
// (steps kept from an earlier run aside) to its completion, else its last
// step's end; running: the run is live, measured to now.
func runDuration(j *store.Job, now time.Time) (d time.Duration, running, ok bool) {
	var start, end time.Time
	for _, st := range j.Steps {
		if st.ReusedFrom != "" || st.StartedAt.IsZero() {
			continue
		}
		if start.IsZero() || st.StartedAt.Before(start) {
			start = st.StartedAt
		}
		if st.FinishedAt.After(end) {
			end = st.FinishedAt
		}
	}
	if start.IsZero() {
		return 0, false, false
	}
	switch {
	case tasks.Live(j.Status):
		end, running = now, true
	case j.Status == tasks.StatusCompleted && j.CompletedAt != nil && j.CompletedAt.After(end):
		end = *j.CompletedAt
	}
	if end.Before(start) {
		return 0, running, false
	}
	return end.Sub(start), running, true
}

var markdown = goldmark.New(goldmark.WithExtensions(extension.GFM))

// renderMarkdown turns the result's markdown into HTML; goldmark leaves out
// raw HTML (it is not configured WithUnsafe), so the output is safe.
func renderMarkdown(md string) template.HTML {
	var buf bytes.Buffer
	if err := markdown.Convert([]byte(md), &buf); err != nil {
		return template.HTML("<pre>" + template.HTMLEscapeString(md) + "</pre>")
	}
	return template.HTML(severityMarkers.Replace(buf.String())) //nolint:gosec // goldmark escapes and drops raw HTML; the markers are constants
}

// severityMarkers turn the report's 🔴/🟡/🟢 (docs/DESIGN.md section 9)
// into labelled CSS markers: without an emoji font those render as empty
// boxes, and a colour alone tells a colour-blind reader nothing.
var severityMarkers = strings.NewReplacer(
	"🔴", `<span class="sev sev-critical">critical</span>`,
	"🟡", `<span class="sev sev-warning">warning</span>`,
	"🟢", `<span class="sev sev-ok">ok</span>`,
)

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

// jobPage is GET /jobs/{jobId}: the result first, then the steps as a
// timeline, the runs, the progress and the event's asynq state, from one
// read of the job (ops.Job).
func (s *Server) jobPage(w http.ResponseWriter, r *http.Request) {
	d, ok := s.pageJobDetail(w, r, r.PathValue("jobId"))
	if !ok {
		return
	}
	data := s.buildJobPage(r, d)
	s.renderPage(w, r, http.StatusOK, s.pages.job, data, data.Streams)
}

// pageJobDetail reads job id for display (ops.Job), or answers with the
// error page (false).
func (s *Server) pageJobDetail(w http.ResponseWriter, r *http.Request, id string) (*ops.JobDetail, bool) {
	d, err := s.ops.Job(r.Context(), id)
	switch {
	case errors.Is(err, ops.ErrNoStore):
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", "MongoDB is not configured.")
		return nil, false
	case errors.Is(err, ops.ErrNotFound):
		s.pageError(w, r, http.StatusNotFound, "Job not found", "There is no job "+id+".")
		return nil, false
	case err != nil:
		s.pageError(w, r, http.StatusServiceUnavailable, "MongoDB unavailable", err.Error())
		return nil, false
	}
	return d, true
}

// buildJobPage is the job page's data for a job read for display.
func (s *Server) buildJobPage(r *http.Request, d *ops.JobDetail) *jobPage {
	job := d.Job
	data := &jobPage{Title: "Job " + job.ID, Job: job, Live: tasks.Live(job.Status), Breaker: s.openBreaker(r.Context()),
		Notice: pageNotices[r.URL.Query().Get("notice")], Error: s.pageErrorOf(r, job.ID), Provider: s.cfg.Provider,
		Rerun: rerunForm{FromStep: tasks.StepProcessInsights}}
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
	if dur, running, ok := runDuration(job, time.Now()); ok {
		data.Took, data.Running = fmtDuration(dur.Milliseconds()), running
	}
	switch job.Status {
	case tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusRetrying:
		data.Due = job.ProcessAt
	}
	data.Permanent = job.Status == tasks.StatusFailed && job.Failure != nil && permanentKind(job.Failure.Kind)
	data.Retried = retryOutcomeOf(job)
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
	markEdits(data.Runs)
	return data
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

// The notices a job page shows after one of its buttons: ?notice= names
// one by its key. The page never shows the parameter's own text, so a link
// cannot put words of its choosing ("session expired: sign in at …") in
// the service's notice box.
const (
	noticeCancelled = "cancelled"
	noticeRerun     = "rerun"
)

var pageNotices = map[string]string{
	noticeCancelled: "Job cancelled.",
	noticeRerun:     "Re-run started: a new run of this job (see Runs below).",
}

// pageErrorMAC signs the error text an action's redirect carries
// (?error=&sig=), for this job and these credentials: the page shows the
// text only when the service itself wrote it.
func (s *Server) pageErrorMAC(r *http.Request, jobID, msg string) string {
	return s.csrfToken(r, "page-error\x00"+jobID+"\x00"+msg)
}

// pageErrorOf is the action error the job page's URL carries, when this
// service signed it; "" otherwise.
func (s *Server) pageErrorOf(r *http.Request, jobID string) string {
	q := r.URL.Query()
	msg, sig := q.Get("error"), q.Get("sig")
	if msg == "" || sig == "" {
		return ""
	}
	if subtle.ConstantTimeCompare([]byte(sig), []byte(s.pageErrorMAC(r, jobID, msg))) != 1 {
		return ""
	}
	return msg
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
		// No notice: the page says what the retried run then did
		// (retryOutcome), read from the job on every load.
		return "", nil
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
		return noticeCancelled, nil
	})
}

// pageAction runs a job page's button: do returns the key of the notice
// to show (pageNotices; "" for none), or an error, shown signed.
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
	notice, err := do(job)
	if err != nil {
		msg := strings.TrimSpace(err.Error())
		http.Redirect(w, r, target+"?"+url.Values{"error": {msg}, "sig": {s.pageErrorMAC(r, job.ID, msg)}}.Encode(), http.StatusSeeOther)
		return
	}
	if notice == "" {
		http.Redirect(w, r, target, http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, target+"?notice="+url.QueryEscape(notice), http.StatusSeeOther)
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
	Request     tasks.Request
	// Edits are the request fields this run changed from the run before
	// it ("customPrompt “…”"), shown beside a re-run.
	Edits []string
}

// markEdits sets each run's Edits against the run before it (runs are
// newest first).
func markEdits(runs []runRow) {
	for i := 0; i+1 < len(runs); i++ {
		a, b := runs[i].Request.WithDefaults(), runs[i+1].Request.WithDefaults()
		var out []string
		if a.CustomPrompt != b.CustomPrompt {
			p := a.CustomPrompt
			if p == "" {
				p = "(none)"
			}
			out = append(out, "customPrompt “"+shortText(p, 120)+"”")
		}
		if a.ContextWindowDays != b.ContextWindowDays {
			out = append(out, fmt.Sprintf("contextWindowDays %d (was %d)", a.ContextWindowDays, b.ContextWindowDays))
		}
		if a.MaxIterations != b.MaxIterations {
			out = append(out, fmt.Sprintf("maxIterations %d (was %d)", a.MaxIterations, b.MaxIterations))
		}
		if a.ModelOverride != b.ModelOverride {
			out = append(out, "modelOverride “"+a.ModelOverride+"”")
		}
		runs[i].Edits = out
	}
}

// shortText cuts s to n runes with an ellipsis.
func shortText(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
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
	r := runRow{EventID: j.EventID, Current: true, Status: j.Status, RerunOf: j.RerunOf, Steps: runSteps(j.Steps), Request: j.Request}
	if j.Error != nil && j.Status != tasks.StatusCompleted {
		r.Error = *j.Error
	}
	return r
}

func endedRun(p *store.RunRecord) runRow {
	r := runRow{EventID: p.EventID, Status: p.Status, RerunOf: p.RerunOf, EndedAt: p.EndedAt, Steps: runSteps(p.Steps), Request: p.Request}
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

// rerunPage is POST /jobs/{jobId}/rerun (the Re-run form). A refused
// re-run answers the job page itself (422) with the form as it was typed
// and why, so nothing typed is lost.
func (s *Server) rerunPage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("jobId")
	if !s.checkCSRF(r, "rerun:"+id) {
		s.pageError(w, r, http.StatusForbidden, "Refused", "The form's token is missing or stale: reload the job page and try again.")
		return
	}
	job, ok := s.pageJob(w, r, id)
	if !ok {
		return
	}
	form := rerunForm{FromStep: r.PostFormValue("fromStep"), CustomPrompt: r.PostFormValue("customPrompt"),
		ContextWindowDays: r.PostFormValue("contextWindowDays"), MaxIterations: r.PostFormValue("maxIterations"),
		ModelOverride: r.PostFormValue("modelOverride")}
	res, req, err := s.rerunFromForm(r, job, form)
	if err != nil {
		d, ok := s.pageJobDetail(w, r, id)
		if !ok {
			return
		}
		data := s.buildJobPage(r, d)
		data.Rerun, data.RerunError = form, strings.TrimSpace(err.Error())
		s.renderPage(w, r, http.StatusUnprocessableEntity, s.pages.job, data, data.Streams)
		return
	}
	s.audit(r, store.AuditEntry{Action: "rerun", Target: job.ID, Filter: req, Detail: rerunDetail(res) + "; job page"})
	http.Redirect(w, r, "/jobs/"+url.PathEscape(id)+"?notice="+noticeRerun, http.StatusSeeOther)
}

// rerunFromForm starts the re-run the form asks for.
func (s *Server) rerunFromForm(r *http.Request, job *store.Job, form rerunForm) (*ops.RerunResult, ops.RerunRequest, error) {
	req := ops.RerunRequest{FromStep: form.FromStep}
	if form.CustomPrompt != "" {
		req.CustomPrompt = &form.CustomPrompt
	}
	if form.ModelOverride != "" {
		req.ModelOverride = &form.ModelOverride
	}
	for _, f := range []struct {
		name, v string
		dst     **int
	}{{"contextWindowDays", form.ContextWindowDays, &req.ContextWindowDays}, {"maxIterations", form.MaxIterations, &req.MaxIterations}} {
		if f.v != "" {
			n, err := strconv.Atoi(f.v)
			if err != nil {
				return nil, req, fmt.Errorf("%s: must be a whole number, got %q", f.name, f.v)
			}
			*f.dst = &n
		}
	}
	res, err := s.ops.Rerun(r.Context(), job.ID, req)
	return res, req, err
}
