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
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// postEvent is POST /api/events: the event filter and every range check
// at the door (422 naming the field).
func (s *Server) postEvent(w http.ResponseWriter, r *http.Request) {
	s.postEnvelope(w, r, false)
}

// postNetlifySend is POST …/async-workloads/send, the BMS app's older
// path: the same body and answer as /api/events, but a value out of range
// fails the job in its validate step, where the app's poll reads it.
func (s *Server) postNetlifySend(w http.ResponseWriter, r *http.Request) {
	s.postEnvelope(w, r, true)
}

func (s *Server) postEnvelope(w http.ResponseWriter, r *http.Request, checkAtRun bool) {
	body, ok := s.readSendBody(w, r)
	if !ok {
		return
	}
	send, err := tasks.ParseEnvelope(body)
	if err != nil {
		writeSendError(w, err)
		return
	}
	send.CheckAtRun = checkAtRun
	res, err := s.send(r, send)
	if err != nil {
		s.writeSendFailure(w, r, err)
		return
	}
	code := http.StatusAccepted
	if res.SendStatus == "duplicate" {
		code = http.StatusOK
	}
	writeJSON(w, code, res)
}

// readSendBody reads a send's body, at most maxBodyBytes, or answers the
// error (false).
func (s *Server) readSendBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	if s.cfg.Client == nil {
		s.writeErr(w, r, ops.ErrNoClient)
		return nil, false
	}
	tooLarge := func() {
		writeError(w, http.StatusRequestEntityTooLarge, "request body is over the limit of "+strconv.Itoa(maxBodyBytes)+" bytes (500 KB)", "")
	}
	if r.ContentLength > maxBodyBytes {
		// Refused before a byte of the body is read.
		tooLarge()
		return nil, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			tooLarge()
			return nil, false
		}
		writeError(w, http.StatusBadRequest, "read body: "+err.Error(), "")
		return nil, false
	}
	return body, true
}

// send sends one event through the producer client, within sendTimeout.
func (s *Server) send(r *http.Request, send *tasks.Send) (*tasks.SendResult, error) {
	ctx, cancel := context.WithTimeout(r.Context(), sendTimeout)
	defer cancel()
	return s.cfg.Client.Send(ctx, send)
}

// writeSendFailure answers a send the client refused (422) or could not
// record (503: nothing was accepted).
func (s *Server) writeSendFailure(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, tasks.ErrInvalidEvent) {
		writeSendError(w, err)
		return
	}
	s.unavailable(w, r, "the event could not be recorded and was not accepted", err)
}

func writeSendError(w http.ResponseWriter, err error) {
	field := tasks.FieldOf(err)
	if errors.Is(err, tasks.ErrUnknownEvent) {
		field = "eventName"
	}
	writeError(w, sendErrorCode(err), err.Error(), field)
}

// apiJob reads the route's job for an API answer, or answers the error
// (false): 503 without MongoDB, 404 for an unknown job.
func (s *Server) apiJob(w http.ResponseWriter, r *http.Request) (*store.Job, bool) {
	if s.cfg.Store == nil {
		s.writeErr(w, r, ops.ErrNoStore)
		return nil, false
	}
	id := r.PathValue("jobId")
	job, err := s.cfg.Store.GetJob(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		writeError(w, http.StatusNotFound, "job "+id+" not found", "")
		return nil, false
	}
	if err != nil {
		s.writeErr(w, r, storeErr(err))
		return nil, false
	}
	return job, true
}

// getJob is GET /api/jobs/{jobId}.
func (s *Server) getJob(w http.ResponseWriter, r *http.Request) {
	job, ok := s.apiJob(w, r)
	if !ok {
		return
	}
	id := job.ID
	var err error
	view := &JobView{Job: s.ops.View(job)}
	if s.cfg.Inspector != nil {
		// Redis down or slow must not hide the job MongoDB has: the field
		// is left out and the failure logged.
		if view.FollowUpTask, err = s.ops.FollowUp(r.Context(), job); err != nil {
			s.log.Warn("job view without its follow-up", "jobId", id, "err", err)
		}
	}
	runs, err := s.cfg.Store.PreviousRuns(r.Context(), job, jobViewRuns)
	if err != nil {
		s.log.Warn("job view without its ended runs", "jobId", id, "err", err)
	}
	for _, run := range runs {
		view.Runs = append(view.Runs, s.ops.RunView(run))
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
	// Runs are the job's ended runs, newest first (at most jobViewRuns),
	// each with its finalInsights (decrypted): a new send or a re-run of
	// the job replaces the job's result, never loses it. Left out when
	// there are none or MongoDB did not answer.
	Runs []*store.RunRecord `json:"runs,omitempty"`
}

// jobViewRuns is how many ended runs the job view carries.
const jobViewRuns = 20

// JobList is the answer of GET /api/jobs.
type JobList struct {
	Jobs  []*store.Job `json:"jobs"`
	Count int          `json:"count"`
	Limit int          `json:"limit"`
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

// FailureGroup is the failed jobs with one failure kind, step and
// fingerprint (their messages alike but for ids, times and numbers),
// counted over every failed job in MongoDB, with the newest few as they
// failed.
type FailureGroup struct {
	store.FailureGroup
	Examples []FailureExample `json:"examples"`
}

// FailureExample is one failed job of a group, with its own message.
type FailureExample struct {
	JobID    string    `json:"jobId"`
	EventID  string    `json:"eventId"`
	SystemID string    `json:"systemId"`
	Queue    string    `json:"queue"`
	Step     string    `json:"step,omitempty"`
	Message  string    `json:"message"`
	FailedAt time.Time `json:"failedAt"`
}

// Failures is the answer of GET /api/failures.
type Failures struct {
	// Total is every failed job the filter selects, however old: the
	// failures are read from MongoDB, not from asynq's archive, which
	// drops the oldest.
	Total  int            `json:"total"`
	Groups []FailureGroup `json:"groups"`
}

const failureExamples = 5

// failureGroups groups the failed jobs f selects by failure kind, step and
// fingerprint, the largest groups first, each with examples among the
// newest failed jobs.
func (s *Server) failureGroups(ctx context.Context, f store.JobFilter) (*Failures, error) {
	if s.cfg.Store == nil {
		return nil, ops.ErrNoStore
	}
	groups, err := s.cfg.Store.FailureGroups(ctx, f)
	if err != nil {
		return nil, storeErr(err)
	}
	out := &Failures{Groups: make([]FailureGroup, 0, len(groups))}
	type key struct{ kind, step, fp string }
	idx := map[key]int{}
	for i, g := range groups {
		out.Groups = append(out.Groups, FailureGroup{FailureGroup: g, Examples: []FailureExample{}})
		idx[key{g.Kind, g.Step, g.Fingerprint}] = i
		out.Total += g.Count
	}
	f.Status, f.Limit, f.Offset = tasks.StatusFailed, maxLimit, 0
	jobs, err := s.cfg.Store.ListJobs(ctx, f)
	if err != nil {
		return nil, storeErr(err)
	}
	sort.SliceStable(jobs, func(a, b int) bool { return failedAt(jobs[a]).After(failedAt(jobs[b])) })
	for _, j := range jobs {
		k, msg := key{kind: store.KindUnknown}, "(no error recorded)"
		if fl := j.Failure; fl != nil {
			k.kind, k.step, msg = fl.Kind, fl.Step, fl.Message
		} else if j.Error != nil {
			msg = *j.Error // failed by the app's own workload
		}
		_, k.fp = store.FailureGroupOf(j)
		i, ok := idx[k]
		if !ok || len(out.Groups[i].Examples) == failureExamples {
			continue
		}
		out.Groups[i].Examples = append(out.Groups[i].Examples, FailureExample{JobID: j.ID, EventID: j.EventID,
			SystemID: j.SystemID, Queue: j.Queue, Step: k.step, Message: msg, FailedAt: failedAt(j)})
	}
	for i := range out.Groups {
		if ex := out.Groups[i].Examples; len(ex) > 0 {
			out.Groups[i].Message = ex[0].Message // the newest failure's, as the examples order them
		}
	}
	return out, nil
}

func failedAt(j *store.Job) time.Time { return j.FailedAt() }

// failures is GET /api/failures.
func (s *Server) failures(w http.ResponseWriter, r *http.Request) {
	f, err := parseJobFilter(r)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	out, err := s.failureGroups(r.Context(), f)
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
		s.writeErr(w, r, outage.Wrap(outage.Redis, err))
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
	// What was reset, for the audit trail (a failed read says nothing).
	detail := ""
	if st, err := s.cfg.Breaker.State(r.Context()); err == nil {
		detail = fmt.Sprintf("was %s, %d failures", st.State, st.Failures)
	}
	if err := s.cfg.Breaker.Reset(r.Context()); err != nil {
		s.writeErr(w, r, outage.Wrap(outage.Redis, err))
		return
	}
	s.audit(r, store.AuditEntry{Action: "breaker-reset", Target: "breaker", Detail: detail})
	s.breaker(w, r)
}
