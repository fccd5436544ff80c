package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
)

// auditTimeout bounds the write of one audit entry.
const auditTimeout = 5 * time.Second

// recordAudit records an operator action that has been done: who (the
// request's user), what (action), on what (target), and for a bulk action
// its filter and how many it touched. A failure to record is logged, never
// answered: the action stands.
func (s *Server) recordAudit(r *http.Request, action, target string, filter any, count *int) {
	s.audit(r, store.AuditEntry{Action: action, Target: target, Filter: filter, Count: count})
}

// audit is recordAudit with every field of the entry; At and User are
// filled from the request.
func (s *Server) audit(r *http.Request, e store.AuditEntry) {
	e.At, e.User = time.Now().UTC(), userOf(r)
	log := s.log.With("user", e.User, "action", e.Action, "target", e.Target)
	log.Info("operator action", "detail", e.Detail)
	if s.cfg.Store == nil {
		log.Warn("operator action not audited: MongoDB is not configured")
		return
	}
	// The client may be gone once the action is done; its record is not.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), auditTimeout)
	defer cancel()
	if err := s.cfg.Store.RecordAudit(ctx, e); err != nil {
		log.Error("operator action not audited", "err", err)
	}
}

// AuditList is the answer of GET /api/audit.
type AuditList struct {
	Entries []store.AuditEntry `json:"entries"`
	Count   int                `json:"count"`
}

// parseAuditQuery reads limit, user and action; a bad limit is a 422
// naming it, as on GET /api/jobs.
func parseAuditQuery(r *http.Request) (store.AuditQuery, error) {
	q := r.URL.Query()
	aq := store.AuditQuery{User: q.Get("user"), Action: q.Get("action"), Limit: store.DefaultAuditLimit}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return aq, &httpError{code: http.StatusUnprocessableEntity, field: "limit",
				msg: "limit must be an integer 1–" + strconv.Itoa(store.MaxAuditLimit) + ", got " + strconv.Quote(v)}
		}
		aq.Limit = min(n, store.MaxAuditLimit)
	}
	return aq, nil
}

// auditEntries reads the entries the request's query selects.
func (s *Server) auditEntries(r *http.Request) (store.AuditQuery, []store.AuditEntry, error) {
	q, err := parseAuditQuery(r)
	if err != nil {
		return q, nil, err
	}
	if s.cfg.Store == nil {
		return q, nil, ops.ErrNoStore
	}
	list, err := s.cfg.Store.ListAudit(r.Context(), q)
	if err != nil {
		return q, nil, storeErr(err)
	}
	return q, list, nil
}

// listAudit is GET /api/audit?limit=&user=&action=: operator actions,
// newest first.
func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	_, list, err := s.auditEntries(r)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, AuditList{Entries: list, Count: len(list)})
}

// auditRow is one entry on the audit page.
type auditRow struct {
	store.AuditEntry
	FilterJSON string
	// Links are the entry's targets as pages: the job, the bulk action,
	// the task in asynqmon (built here from escaped parts).
	Links []auditLink
	// Result is a bulk action's progress or outcome, read now.
	Result string
}

// auditLink is one link of an audit entry.
type auditLink struct {
	Text string
	URL  string
}

// auditLinks are the pages of what an entry acted on: a retry or cancel
// names an event (its job through /events/), a re-run a job, a bulk
// action its own page, an asynqmon action a queue or queue/task.
func auditLinks(e store.AuditEntry) []auditLink {
	t := e.Target
	switch {
	case t == "" || t == "breaker":
		return nil
	case e.Action == "retry" || e.Action == "cancel":
		return []auditLink{{"job", "/events/" + url.PathEscape(t)}}
	case e.Action == "rerun":
		return []auditLink{{"job", "/jobs/" + url.PathEscape(t)}}
	case strings.HasPrefix(e.Action, "bulk-"):
		return []auditLink{{"bulk action", "/bulk/" + url.PathEscape(t)}}
	case strings.HasPrefix(e.Action, "asynqmon:"):
		queue, rest, _ := strings.Cut(t, "/")
		if !strings.HasSuffix(e.Action, "-task") {
			return []auditLink{{"queue", monitorRoot + "/queues/" + url.PathEscape(queue)}}
		}
		id := rest
		if i := strings.LastIndex(rest, "/"); i >= 0 {
			id = rest[i+1:] // queue/group/id
		}
		return []auditLink{{"job", "/events/" + url.PathEscape(id)},
			{"task", monitorRoot + "/queues/" + url.PathEscape(queue) + "/tasks/" + url.PathEscape(id)}}
	}
	return nil
}

type auditPage struct {
	pageChrome
	Title        string
	Rows         []auditRow
	User, Action string
	Limit        int
	Error        string
}

// auditPage is GET /audit: the audit trail as a table.
func (s *Server) auditPage(w http.ResponseWriter, r *http.Request) {
	q, list, err := s.auditEntries(r)
	data := &auditPage{Title: "Audit trail", User: q.User, Action: q.Action, Limit: q.Limit}
	code := http.StatusOK
	if err != nil {
		var he *httpError
		if !errors.As(err, &he) {
			s.pageError(w, r, http.StatusServiceUnavailable, "MongoDB unavailable", err.Error())
			return
		}
		data.Error, code = he.msg, he.code
	}
	bulks := map[string]*store.BulkOp{}
	if s.cfg.Store != nil && slices.ContainsFunc(list, func(e store.AuditEntry) bool { return strings.HasPrefix(e.Action, "bulk-") }) {
		if recent, err := s.cfg.Store.ListBulkOps(r.Context(), false, 200); err == nil {
			for _, op := range recent {
				bulks[op.ID] = op
			}
		}
	}
	for _, e := range list {
		row := auditRow{AuditEntry: e, Links: auditLinks(e)}
		if op := bulks[e.Target]; op != nil && strings.HasPrefix(e.Action, "bulk-") {
			state := op.Status
			if state == store.BulkDone {
				state = "finished"
			}
			row.Result = fmt.Sprintf("%s: %d done · %d failed · %d skipped of %d", state, op.Done, op.Failed, op.Skipped, op.Matched)
		}
		if e.Filter != nil {
			if b, err := json.Marshal(e.Filter); err == nil {
				row.FilterJSON = string(b)
			}
		}
		data.Rows = append(data.Rows, row)
	}
	s.render(w, r, code, s.pages.audit, data)
}

// auditedMonitor serves a state-changing asynqmon call by an operator and
// records it once asynqmon answered 2xx. The answer is seen through a
// recorder that keeps its start: asynqmon's batch and "all" actions say
// there how many tasks they touched.
func (s *Server) auditedMonitor(w http.ResponseWriter, r *http.Request) {
	rec := &monitorRecorder{statusRecorder: statusRecorder{ResponseWriter: w}}
	s.monitor.ServeHTTP(rec, r)
	code := rec.code
	if code == 0 {
		code = http.StatusOK
	}
	if code/100 != 2 || !strings.HasPrefix(r.URL.Path, monitorRoot+"/api/") {
		return
	}
	e := asynqmonAction(r.Method, strings.TrimPrefix(r.URL.Path, monitorRoot+"/api/"))
	e.Count, e.Filter, e.Detail = monitorOutcome(rec.body.Bytes())
	s.audit(r, e)
}

// maxAuditedBody is how much of asynqmon's answer is kept for the audit.
const maxAuditedBody = 64 << 10

// monitorRecorder is a statusRecorder that also keeps the start of the body.
type monitorRecorder struct {
	statusRecorder
	body bytes.Buffer
}

func (m *monitorRecorder) Write(b []byte) (int, error) {
	if room := maxAuditedBody - m.body.Len(); room > 0 {
		m.body.Write(b[:min(len(b), room)])
	}
	return m.statusRecorder.Write(b)
}

// asynqmonAction names an asynqmon API call (path after /monitoring/api/)
// for the audit trail: "asynqmon:" and the operation, its object and the
// tasks' state, the target the queue (and task):
//
//	POST   queues/q:pause                        asynqmon:pause-queue            q
//	DELETE queues/q                              asynqmon:delete-queue           q
//	POST   queues/q/archived_tasks/id:run        asynqmon:run-archived-task      q/id
//	DELETE queues/q/pending_tasks/id             asynqmon:delete-pending-task    q/id
//	POST   queues/q/retry_tasks:batch_run        asynqmon:batch-run-retry-tasks  q
//	DELETE queues/q/completed_tasks:delete_all   asynqmon:delete-all-completed-tasks q
//
// (aggregating tasks: the target is q/group[/id]). A path of another shape
// is named by its method and path.
func asynqmonAction(method, path string) store.AuditEntry {
	fallback := store.AuditEntry{Action: "asynqmon:" + strings.ToLower(method), Target: path}
	rest, ok := strings.CutPrefix(path, "queues/")
	if !ok {
		return fallback
	}
	segs := strings.Split(rest, "/")
	last := len(segs) - 1
	var op string
	segs[last], op, _ = strings.Cut(segs[last], ":")
	if op == "" {
		op = strings.ToLower(method) // DELETE of a queue or a task
	}
	op = strings.ReplaceAll(op, "_", "-")
	target := []string{segs[0]}
	segs = segs[1:]
	if len(segs) >= 2 && segs[0] == "groups" {
		target = append(target, segs[1])
		segs = segs[2:]
	}
	switch {
	case len(segs) == 0:
		return store.AuditEntry{Action: "asynqmon:" + op + "-queue", Target: target[0]}
	case !strings.HasSuffix(segs[0], "_tasks") || len(segs) > 2:
		return fallback
	}
	state := strings.TrimSuffix(segs[0], "_tasks")
	if len(segs) == 2 {
		return store.AuditEntry{Action: "asynqmon:" + op + "-" + state + "-task", Target: strings.Join(append(target, segs[1]), "/")}
	}
	return store.AuditEntry{Action: "asynqmon:" + op + "-" + state + "-tasks", Target: strings.Join(target, "/")}
}

// monitorOutcome reads asynqmon's answer to a batch or "all" action: how
// many tasks it touched (deleted, scheduled, archived or the ids done),
// the ids done as the filter, and the ids it could not do as the detail.
// Other answers (none, or a single task's) give nothing.
func monitorOutcome(body []byte) (count *int, filter any, detail string) {
	var out map[string]json.RawMessage
	if json.Unmarshal(body, &out) != nil {
		return nil, nil, ""
	}
	for _, k := range []string{"deleted", "scheduled", "archived"} {
		var n int
		if json.Unmarshal(out[k], &n) == nil && out[k] != nil {
			return &n, nil, ""
		}
	}
	var done, failed []string
	for k, v := range out {
		var ids []string
		if json.Unmarshal(v, &ids) != nil || !strings.HasSuffix(k, "_ids") {
			continue
		}
		if k == "error_ids" || k == "failed_ids" {
			failed = append(failed, ids...)
		} else {
			done = append(done, ids...)
		}
	}
	if done == nil && failed == nil {
		return nil, nil, ""
	}
	n := len(done)
	if len(failed) > 0 {
		detail = "not done: " + strings.Join(failed, ", ")
	}
	return &n, map[string]any{"taskIds": append([]string{}, done...)}, detail
}

// eventPage is GET /events/{eventId}: the page of the event's job (the
// audit trail's links name events), else the task in asynqmon.
func (s *Server) eventPage(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("eventId")
	st, err := s.ops.Status(r.Context(), id)
	switch {
	case errors.Is(err, ops.ErrNotFound):
		s.pageError(w, r, http.StatusNotFound, "Event not found",
			"Neither MongoDB nor Redis knows event "+id+" any more (a later run of its job replaced it, or it was deleted).")
	case err != nil:
		s.pageError(w, r, http.StatusServiceUnavailable, "Unavailable", err.Error())
	case st.JobID != "":
		http.Redirect(w, r, "/jobs/"+url.PathEscape(st.JobID), http.StatusSeeOther)
	case st.State != nil:
		http.Redirect(w, r, monitorRoot+"/queues/"+url.PathEscape(st.Queue)+"/tasks/"+url.PathEscape(id), http.StatusSeeOther)
	default:
		s.pageError(w, r, http.StatusNotFound, "Event not found", "Event "+id+" has no job and no task.")
	}
}

// rerunDetail says what a re-run started, for the audit trail.
func rerunDetail(res *ops.RerunResult) string {
	d := "new run " + res.EventID + " from " + res.FromStep
	if len(res.Reused) > 0 {
		d += ", keeping " + strings.Join(res.Reused, ", ")
	}
	return d
}
