package web

import (
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// failureRow is one group of the failures page with its links.
type failureRow struct {
	FailureGroup
	// Permanent: the kind says a retry fails again unless the job changes.
	Permanent bool
	// JobsURL and RetryURL are the group's jobs and its bulk retry's dry
	// run (built here from encoded values, so trusted as URLs).
	JobsURL  template.URL
	RetryURL template.URL
}

type failuresPage struct {
	pageChrome
	Title     string
	Filter    filterInput
	Filtered  bool
	Error     string
	Total     int
	Groups    []failureRow
	Kinds     []string
	StepNames []string
	// Jobs are the failed jobs the filter selects, a page of them newest
	// first; Older and Newer page through all of them.
	Jobs         []*store.Job
	Older, Newer string
}

// failedPerPage is how many failed jobs the failures page lists at once.
const failedPerPage = 50

// failuresPage is GET /failures: every failed job in MongoDB grouped by
// kind, step and message, each group with links to its jobs and a bulk
// retry, then the failed jobs themselves, paged, however old.
func (s *Server) failuresPage(w http.ResponseWriter, r *http.Request) {
	in := filterFromQuery(r.URL.Query())
	in.Status, in.Message = "", ""
	data := failuresPage{Title: "Failures", Filter: in, Kinds: failureKinds, StepNames: tasks.Steps, Groups: []failureRow{}}
	data.Filtered = len(in.values()) > 0
	f, err := in.filter("")
	code := http.StatusOK
	if err != nil {
		data.Error, code = err.Error(), http.StatusUnprocessableEntity
		f = store.JobFilter{}
	}
	out, err := s.failureGroups(r.Context(), f)
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
		return
	}
	data.Total = out.Total
	for _, g := range out.Groups {
		group := in
		group.Status, group.FailureKind, group.Step, group.Fingerprint = tasks.StatusFailed, g.Kind, g.Step, g.Fingerprint
		v := group.values()
		jobs := v.Encode()
		v.Set("action", ops.BulkRetry)
		v.Set("dryRun", "1")
		data.Groups = append(data.Groups, failureRow{FailureGroup: g, Permanent: permanentKind(g.Kind),
			JobsURL: template.URL("/?" + jobs), RetryURL: template.URL("/bulk?" + v.Encode())}) //nolint:gosec // encoded above
	}
	offset, _ := strconv.Atoi(r.URL.Query().Get("offset"))
	f.Status, f.Limit, f.Offset = tasks.StatusFailed, failedPerPage, max(offset, 0)
	if data.Jobs, err = s.cfg.Store.ListJobs(r.Context(), f); err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
		return
	}
	page := func(offset int) string {
		v := in.values()
		v.Set("offset", strconv.Itoa(offset))
		return "/failures?" + v.Encode() + "#failed-jobs"
	}
	if len(data.Jobs) == failedPerPage {
		data.Older = page(f.Offset + failedPerPage)
	}
	if f.Offset > 0 {
		data.Newer = page(max(f.Offset-failedPerPage, 0))
	}
	s.render(w, r, code, s.pages.failures, &data)
}

// permanentKind reports a failure kind that a retry cannot cure: the
// request itself was refused (handlers.DoNotRetry), so the same run fails
// again unless the job changes (a re-run with edited fields).
func permanentKind(kind string) bool { return kind == store.KindBusiness }

type bulkPage struct {
	pageChrome
	Title     string
	Action    string
	Filter    filterInput
	Actions   []string
	Statuses  []string
	Kinds     []string
	StepNames []string
	Error     string
	// All: the form's "every job" box, which an empty filter needs.
	All     bool
	Counted bool
	Matched int
	CanAct  bool
	CSRF    string
	// Hidden are the filter's fields for the confirm form.
	Hidden map[string]string
	Recent []*store.BulkOp
	// Sample is a few of the matched jobs, newest first, with their
	// messages; Permanent counts the matched jobs that failed for good
	// (a retry fails them again unless they change).
	Sample    []*store.Job
	Permanent int64
}

// bulkSample is how many matched jobs a dry run shows.
const bulkSample = 5

// bulkPage is GET /bulk: the bulk action form; with dryRun=1 it counts the
// jobs the filter selects and offers to act on them.
func (s *Server) bulkPage(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Store == nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", "MongoDB is not configured.")
		return
	}
	q := r.URL.Query()
	data := bulkPage{Title: "Bulk actions", Action: q.Get("action"), Filter: filterFromQuery(q), All: q.Get("all") != "", Actions: ops.BulkActions,
		Statuses: jobStatuses, Kinds: failureKinds, StepNames: tasks.Steps, CanAct: mayAct(r), Hidden: map[string]string{}}
	if data.Action == "" {
		data.Action = ops.BulkRetry
	}
	code := http.StatusOK
	if q.Get("dryRun") != "" {
		f, err := data.Filter.filter("")
		switch {
		case err != nil:
			data.Error, code = err.Error(), http.StatusUnprocessableEntity
		case !slices.Contains(ops.BulkActions, data.Action):
			data.Error, code = "action must be one of "+strings.Join(ops.BulkActions, ", "), http.StatusUnprocessableEntity
		case f.Empty() && !data.All:
			data.Error, code = "No filter: choose at least one, or tick “every job” to act on all of them.", http.StatusUnprocessableEntity
		default:
			n, err := s.ops.CountBulk(r.Context(), f)
			if err != nil {
				s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
				return
			}
			data.Counted, data.Matched = true, n
			if n > 0 {
				sf := f
				sf.Limit = bulkSample
				if data.Sample, err = s.cfg.Store.ListJobs(r.Context(), sf); err != nil {
					s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
					return
				}
			}
			if data.Action == ops.BulkRetry && n > 0 && (f.FailureKind == "" || permanentKind(f.FailureKind)) {
				pf := f
				pf.FailureKind, pf.Status = store.KindBusiness, tasks.StatusFailed
				if f.Status == "" || f.Status == tasks.StatusFailed {
					if data.Permanent, err = s.cfg.Store.CountJobs(r.Context(), pf); err != nil {
						s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
						return
					}
				}
			}
			for k, v := range data.Filter.values() {
				data.Hidden[k] = v[0]
			}
			if data.All {
				data.Hidden["all"] = "1"
			}
			data.CSRF = s.csrfToken(r, "bulk")
		}
	}
	recent, err := s.cfg.Store.ListBulkOps(r.Context(), false, 20)
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
		return
	}
	data.Recent = recent
	s.render(w, r, code, s.pages.bulk, &data)
}

// bulkPost is POST /bulk: the confirm button of a counted bulk action.
func (s *Server) bulkPost(w http.ResponseWriter, r *http.Request) {
	if !s.checkCSRF(r, "bulk") {
		s.pageError(w, r, http.StatusForbidden, "Refused", "The form's token is missing or stale: count the jobs again and confirm.")
		return
	}
	in := filterFromQuery(r.PostForm)
	all := r.PostFormValue("all") != ""
	back := "/bulk?" + in.values().Encode() + "&action=" + url.QueryEscape(r.PostFormValue("action")) + "&dryRun=1"
	if all {
		back += "&all=1"
	}
	f, err := in.filter("")
	if err != nil {
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	action := r.PostFormValue("action")
	if !slices.Contains(ops.BulkActions, action) {
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	if f.Empty() && !all {
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	op, _, err := s.startBulk(r, action, f, all)
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Bulk action not started", err.Error())
		return
	}
	http.Redirect(w, r, "/bulk/"+url.PathEscape(op.ID), http.StatusSeeOther)
}

// bulkRow is one job of a bulk action's page.
type bulkRow struct {
	store.BulkOutcome
	Status string // the job's now; "" when it is gone
	// Then is what a retried job's run did after the retry (retryOutcome's
	// State and Text); "" for other actions and jobs not retried.
	Then, ThenText string
}

type bulkOpPage struct {
	pageChrome
	Title      string
	Op         *store.BulkOp
	FilterJSON string
	Rows       []bulkRow
	JobCounts  []statusCount
	Live       bool
	// Then counts the retried runs by what they did after the retry
	// (completed, failed-again, running, waiting, cancelled), for a retry;
	// Retry: the action is a retry.
	Retry bool
	Then  []statusCount
}

// bulkPageRows is how many of a bulk action's jobs its page shows, each
// with its status read now.
const bulkPageRows = 200

// thenOrder is the order a retry's outcomes are counted in.
var thenOrder = []string{"completed", "failed-again", "running", "waiting", "cancelled"}

// bulkOpPage is GET /bulk/{bulkId}: the action's progress and its jobs'
// outcomes and statuses now; for a retry, what each retried run then did.
// It refreshes itself while the action or any retried run is under way.
func (s *Server) bulkOpPage(w http.ResponseWriter, r *http.Request) {
	op, outcomes, err := s.ops.GetBulk(r.Context(), r.PathValue("bulkId"), bulkPageRows)
	if errors.Is(err, ops.ErrNotFound) {
		s.pageError(w, r, http.StatusNotFound, "Not found", err.Error())
		return
	}
	if err != nil {
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
		return
	}
	fj, _ := json.Marshal(op.Filter)
	data := bulkOpPage{Title: "Bulk " + op.Action, Op: op, FilterJSON: string(fj), Live: op.Status != store.BulkDone,
		Retry: op.Action == ops.BulkRetry}
	counts, then := map[string]int64{}, map[string]int64{}
	for _, o := range outcomes {
		row := bulkRow{BulkOutcome: o}
		if o.Outcome == store.OutcomePending {
			row.Outcome = ""
		}
		if j, err := s.cfg.Store.GetJob(r.Context(), o.JobID); err == nil {
			row.Status = j.Status
			counts[j.Status]++
			data.Live = data.Live || tasks.Live(j.Status)
			// A retry this action made: the job's retriedAt is from it.
			if data.Retry && o.Outcome == store.OutcomeDone && j.RetriedAt != nil && !j.RetriedAt.Before(op.CreatedAt.Add(-time.Second)) {
				if out := retryOutcomeOf(j); out != nil {
					row.Then, row.ThenText = out.State, out.Text
					then[out.State]++
					data.Live = data.Live || out.State == "waiting" || out.State == "running"
				}
			}
		}
		data.Rows = append(data.Rows, row)
	}
	for _, st := range jobStatuses {
		if counts[st] > 0 {
			data.JobCounts = append(data.JobCounts, statusCount{Status: st, Count: counts[st]})
		}
	}
	for _, st := range thenOrder {
		if then[st] > 0 {
			data.Then = append(data.Then, statusCount{Status: st, Count: then[st]})
		}
	}
	s.render(w, r, http.StatusOK, s.pages.bulkOp, &data)
}
