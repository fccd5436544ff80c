package web

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// postEvent is POST /api/events and POST …/async-workloads/send.
func (s *Server) postEvent(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Client == nil {
		s.writeErr(w, r, ops.ErrNoClient)
		return
	}
	tooLarge := func() {
		writeError(w, http.StatusRequestEntityTooLarge, "request body is over the limit of "+strconv.Itoa(maxBodyBytes)+" bytes (500 KB)", "")
	}
	if r.ContentLength > maxBodyBytes {
		// Refused before a byte of the body is read.
		tooLarge()
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			tooLarge()
			return
		}
		writeError(w, http.StatusBadRequest, "read body: "+err.Error(), "")
		return
	}
	send, err := tasks.ParseEnvelope(body)
	if err != nil {
		writeSendError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), sendTimeout)
	defer cancel()
	res, err := s.cfg.Client.Send(ctx, send)
	if err != nil {
		if errors.Is(err, tasks.ErrInvalidEvent) {
			writeSendError(w, err)
			return
		}
		s.log.Warn("send failed", "err", err)
		writeError(w, http.StatusServiceUnavailable, "the event could not be recorded and was not accepted: "+err.Error(), "")
		return
	}
	code := http.StatusAccepted
	if res.SendStatus == "duplicate" {
		code = http.StatusOK
	}
	writeJSON(w, code, res)
}

func writeSendError(w http.ResponseWriter, err error) {
	field := tasks.FieldOf(err)
	switch {
	case errors.Is(err, tasks.ErrMalformed):
		writeError(w, http.StatusBadRequest, err.Error(), field)
	case errors.Is(err, tasks.ErrUnknownEvent):
		writeError(w, http.StatusBadRequest, err.Error(), "eventName")
	default:
		writeError(w, http.StatusUnprocessableEntity, err.Error(), field)
	}
}

// getJob is GET /api/jobs/{jobId}.
func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Store == nil {
		s.writeErr(w, r, ops.ErrNoStore)
		return
	}
	id := r.PathValue("jobId")
	job, err := s.cfg.Store.GetJob(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "job "+id+" not found", "")
		return
	}
	if err != nil {
		s.writeErr(w, r, storeErr(err))
		return
	}
	view := &JobView{Job: s.ops.View(job)}
	if s.cfg.Inspector != nil {
		// Redis down or slow must not hide the job MongoDB has: the field
		// is left out and the failure logged.
		if view.FollowUpTask, err = s.ops.FollowUp(r.Context(), job); err != nil {
			s.log.Warn("job view without its follow-up", "jobId", id, "err", err)
		}
	}
	writeJSON(w, http.StatusOK, view)
}

// JobView is the answer of GET /api/jobs/{jobId}: the job as ops.View
// shows it, and the chain of its current run.
type JobView struct {
	*store.Job
	// FollowUpTask is the run's insights-completed follow-up as Redis
	// knows it; left out for a job without a run, or when Redis is not
	// configured or did not answer.
	FollowUpTask *ops.FollowUpStatus `json:"followUpTask,omitempty"`
}

// JobList is the answer of GET /api/jobs.
type JobList struct {
	Jobs  []*store.Job `json:"jobs"`
	Count int          `json:"count"`
	Limit int          `json:"limit"`
}

const (
	defaultLimit = 50
	maxLimit     = 500
)

var jobStatuses = []string{tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusProcessing, tasks.StatusRetrying,
	tasks.StatusCompleted, tasks.StatusFailed, tasks.StatusCancelled}

// parseJobFilter reads status, systemId and limit; a bad value is a 422
// naming the parameter.
func parseJobFilter(r *http.Request) (store.JobFilter, error) {
	q := r.URL.Query()
	f := store.JobFilter{Status: q.Get("status"), SystemID: q.Get("systemId"), Limit: defaultLimit}
	if f.Status != "" && !contains(jobStatuses, f.Status) {
		return f, &httpError{code: http.StatusUnprocessableEntity, field: "status",
			msg: "status must be one of queued, scheduled, processing, retrying, completed, failed, cancelled"}
	}
	if f.SystemID != "" && !tasks.ValidID(f.SystemID) {
		return f, &httpError{code: http.StatusUnprocessableEntity, field: "systemId", msg: "systemId must match [A-Za-z0-9._:-]{1,128}"}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return f, &httpError{code: http.StatusUnprocessableEntity, field: "limit", msg: "limit must be an integer 1–500, got " + strconv.Quote(v)}
		}
		f.Limit = min(n, maxLimit)
	}
	return f, nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// listJobs is GET /api/jobs?status=&systemId=&limit=.
func (s *Server) listJobs(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Store == nil {
		s.writeErr(w, r, ops.ErrNoStore)
		return
	}
	f, err := parseJobFilter(r)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	jobs, err := s.cfg.Store.ListJobs(r.Context(), f)
	if err != nil {
		s.writeErr(w, r, storeErr(err))
		return
	}
	out := JobList{Jobs: make([]*store.Job, 0, len(jobs)), Limit: f.Limit}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, s.ops.View(j))
	}
	out.Count = len(out.Jobs)
	writeJSON(w, http.StatusOK, out)
}

// FailureGroup is failed jobs with one error kind and message.
type FailureGroup struct {
	Kind     string           `json:"kind"`
	Message  string           `json:"message"`
	Step     string           `json:"step,omitempty"`
	Count    int              `json:"count"`
	NewestAt time.Time        `json:"newestAt"`
	Examples []FailureExample `json:"examples"`
}

// FailureExample is one failed job of a group.
type FailureExample struct {
	JobID    string    `json:"jobId"`
	EventID  string    `json:"eventId"`
	SystemID string    `json:"systemId"`
	Queue    string    `json:"queue"`
	Step     string    `json:"step,omitempty"`
	FailedAt time.Time `json:"failedAt"`
}

// Failures is the answer of GET /api/failures.
type Failures struct {
	Total  int            `json:"total"`
	Groups []FailureGroup `json:"groups"`
	// Truncated: only the newest failed jobs were grouped.
	Truncated bool `json:"truncated"`
}

const failureExamples = 5

// failureGroups groups failed jobs by error kind and message, the largest
// groups first, each with its newest examples.
func (s *Server) failureGroups(ctx context.Context) (*Failures, error) {
	if s.cfg.Store == nil {
		return nil, ops.ErrNoStore
	}
	jobs, err := s.cfg.Store.ListJobs(ctx, store.JobFilter{Status: tasks.StatusFailed, Limit: maxLimit})
	if err != nil {
		return nil, storeErr(err)
	}
	type key struct{ kind, msg string }
	idx := map[key]int{}
	out := &Failures{Groups: []FailureGroup{}, Truncated: len(jobs) >= maxLimit}
	sort.SliceStable(jobs, func(a, b int) bool { return failedAt(jobs[a]).After(failedAt(jobs[b])) })
	for _, j := range jobs {
		k := key{kind: store.KindInternal, msg: "(no error recorded)"}
		step := ""
		if f := j.Failure; f != nil {
			k = key{kind: f.Kind, msg: f.Message}
			step = f.Step
		} else if j.Error != nil {
			k.msg = *j.Error // failed by the app's own workload
		}
		i, ok := idx[k]
		if !ok {
			i = len(out.Groups)
			idx[k] = i
			out.Groups = append(out.Groups, FailureGroup{Kind: k.kind, Message: k.msg, Step: step, NewestAt: failedAt(j), Examples: []FailureExample{}})
		}
		g := &out.Groups[i]
		g.Count++
		if len(g.Examples) < failureExamples {
			g.Examples = append(g.Examples, FailureExample{JobID: j.ID, EventID: j.EventID, SystemID: j.SystemID,
				Queue: j.Queue, Step: step, FailedAt: failedAt(j)})
		}
		out.Total++
	}
	sort.SliceStable(out.Groups, func(a, b int) bool {
		if out.Groups[a].Count != out.Groups[b].Count {
			return out.Groups[a].Count > out.Groups[b].Count
		}
		return out.Groups[a].NewestAt.After(out.Groups[b].NewestAt)
	})
	return out, nil
}

func failedAt(j *store.Job) time.Time { return j.FailedAt() }

// failures is GET /api/failures.
func (s *Server) failures(w http.ResponseWriter, r *http.Request) {
	out, err := s.failureGroups(r.Context())
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

var errNoBreaker = errorf(http.StatusServiceUnavailable, "the circuit breaker is not configured")

// breaker is GET /api/breaker: the model provider's breaker as every worker
// sees it.
func (s *Server) breaker(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Breaker == nil {
		s.writeErr(w, r, errNoBreaker)
		return
	}
	st, err := s.cfg.Breaker.State(r.Context())
	if err != nil {
		s.writeErr(w, r, fmt.Errorf("Redis: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, st)
}

// breakerReset is POST /api/breaker/reset: close the breaker by hand (the
// provider is known to be back); it answers the state after.
func (s *Server) breakerReset(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Breaker == nil {
		s.writeErr(w, r, errNoBreaker)
		return
	}
	if err := s.cfg.Breaker.Reset(r.Context()); err != nil {
		s.writeErr(w, r, fmt.Errorf("Redis: %w", err))
		return
	}
	s.log.Info("circuit breaker reset by an operator")
	s.breaker(w, r)
}
