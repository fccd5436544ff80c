package web

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
)

// EventStatus is the answer of GET /api/events/{eventId}, built by ops.
type EventStatus = ops.EventStatus

// eventRoute serves op (an ops.Operator method) on the path's eventId:
// GET /api/events/{eventId} and its alias (Status). The operation is ops';
// web only answers it.
func eventRoute[T any](s *Server, op func(context.Context, string) (T, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		res, err := op(r.Context(), r.PathValue("eventId"))
		if err != nil {
			s.writeErr(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
}

// retryEvent is POST /api/events/{eventId}/retry, audited as "retry".
func (s *Server) retryEvent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("eventId")
	res, err := s.ops.Retry(r.Context(), id)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Action: "retry", Target: id, Detail: retryDetail(res)})
	writeJSON(w, http.StatusOK, res)
}

// cancelEvent is DELETE /api/events/{eventId}, audited as "cancel".
func (s *Server) cancelEvent(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("eventId")
	res, err := s.ops.Cancel(r.Context(), id)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Action: "cancel", Target: id, Detail: cancelDetail(res)})
	writeJSON(w, http.StatusOK, res)
}

// retryDetail says what a retry did, for the audit trail.
func retryDetail(res *ops.RetryResult) string {
	return fmt.Sprintf("job %s: %s (%s → %s)", res.JobID, res.Action, cmp.Or(res.PreviousState, "gone"), res.State)
}

// cancelDetail says what a cancel did, for the audit trail.
func cancelDetail(res *ops.CancelResult) string {
	return fmt.Sprintf("job %s: %s (task was %s)", res.JobID, res.Status, cmp.Or(res.PreviousState, "gone"))
}

// httpError is an error with the answer it calls for: web's own checks (a
// query parameter, a body it cannot read).
type httpError struct {
	code  int
	msg   string
	field string
}

func (e *httpError) Error() string { return e.msg }

func errorf(code int, format string, args ...any) *httpError {
	return &httpError{code: code, msg: fmt.Sprintf(format, args...)}
}

// writeErr answers err, the one place an error becomes a status code: an
// httpError's own code, 404 and 409 for ops' not found and conflict, 503
// for a store or Redis not configured, and 503 for anything else (a store
// or Redis failure: the answer names the store, the log has the detail).
func (s *Server) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	switch {
	case errors.As(err, &he):
		writeError(w, he.code, he.msg, he.field)
	case errors.Is(err, ops.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error(), "")
	case errors.Is(err, ops.ErrConflict):
		writeError(w, http.StatusConflict, err.Error(), "")
	case errors.Is(err, ops.ErrEmptyFilter):
		writeError(w, http.StatusUnprocessableEntity, "filter: "+err.Error(), "filter")
	case errors.Is(err, ops.ErrNoStore), errors.Is(err, ops.ErrNoRedis), errors.Is(err, ops.ErrNoClient):
		writeError(w, http.StatusServiceUnavailable, err.Error(), "")
	default:
		s.unavailable(w, r, "service unavailable", err)
	}
}

// storeErr marks a failure of web's own MongoDB reads (jobs, failures) as
// ops marks its own: MongoDB's outage.
func storeErr(err error) error { return outage.Wrap(outage.MongoDB, err) }

// unavailable answers 503 for err, a failure of a store, with what it
// means for the caller (what) and the store that is down, never err's
// text (addresses, driver and SQL messages), which goes to the log.
func (s *Server) unavailable(w http.ResponseWriter, r *http.Request, what string, err error) {
	writeError(w, http.StatusServiceUnavailable, s.unavailableMsg(r, what, err), "")
}

// unavailableMsg is unavailable's message; it logs err.
func (s *Server) unavailableMsg(r *http.Request, what string, err error) string {
	s.log.Warn("request failed: store unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
	down, ok := outage.Of(err)
	if !ok {
		down = s.downStores(r.Context())
	}
	verb := " is"
	if strings.Contains(down, " and ") {
		verb = " are"
	}
	return what + ": " + down + verb + " unavailable; try again later"
}

// downStores names the stores the readiness check finds down, for an
// error that does not say which store failed; "a store" when it finds
// none down (the failure has passed).
func (s *Server) downStores(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	check := s.cfg.Ready
	if check == nil {
		check = s.defaultReady
	}
	err := check(ctx)
	if err == nil {
		return "a store"
	}
	var names []string
	for _, line := range strings.Split(readyReason(err), "\n") {
		switch name, _, _ := strings.Cut(line, ": "); name {
		case "redis":
			names = append(names, outage.Redis)
		case "mongodb":
			names = append(names, outage.MongoDB)
		}
	}
	if len(names) == 0 {
		return "a store"
	}
	return strings.Join(names, " and ")
}
