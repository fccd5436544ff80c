package web

// The Netlify router (docs/DESIGN.md section 12): where the BMS app's
// installed @netlify/async-workloads client sends, as it sends to Netlify.

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// RouterPath is the Netlify client's send route.
const RouterPath = "/.netlify/functions/async-workloads-router"

// RouterAnswer is the router's answer: each event's outcome, in the order
// sent. The Netlify client reads only the status code; people and other
// clients read this.
type RouterAnswer struct {
	Events []RouterOutcome `json:"events"`
	// Error and Field name the first event refused, when one was.
	Error string `json:"error,omitempty"`
	Field string `json:"field,omitempty"`
}

// RouterOutcome is one event's outcome.
type RouterOutcome struct {
	EventID    string `json:"eventId,omitempty"`
	EventName  string `json:"eventName"`
	SendStatus string `json:"sendStatus"` // succeeded | duplicate | refused | failed
	JobID      string `json:"jobId,omitempty"`
	Queue      string `json:"queue,omitempty"`
	State      string `json:"state,omitempty"`
	Error      string `json:"error,omitempty"`
	Field      string `json:"field,omitempty"`
	// Result is what an internal event (awl:...) did.
	Result *ops.InternalResult `json:"result,omitempty"`
}

// router is POST /.netlify/functions/async-workloads-router?events=…&client-context=….
// Every event of the array is checked and sent or refused on its own: 202
// when all were accepted (sent or duplicates), 508 when one's chain is at
// the loop limit, else the first refusal's 4xx (or 503 when a store
// failed), naming the event and the field.
func (s *Server) router(w http.ResponseWriter, r *http.Request) {
	body, ok := s.readSendBody(w, r)
	if !ok {
		return
	}
	evs, err := tasks.ParseRouterBody(body)
	if err != nil {
		writeSendError(w, err)
		return
	}
	if q := r.URL.Query().Get("events"); q != "" {
		// The client names the events in the query too (Netlify routes by
		// it); names that disagree with the body are a broken request.
		var names []string
		if json.Unmarshal([]byte(q), &names) != nil || !slices.Equal(names, eventNames(evs)) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("events: the query names %s, the body %q", q, eventNames(evs)), "events")
			return
		}
	}
	now := time.Now()
	ans := RouterAnswer{Events: make([]RouterOutcome, len(evs))}
	code := http.StatusAccepted
	for i := range evs {
		out, c := s.routeOne(r, &evs[i], i, now)
		ans.Events[i] = out
		if c != http.StatusAccepted && (code == http.StatusAccepted || c == http.StatusLoopDetected) {
			code, ans.Error, ans.Field = c, out.Error, out.Field
		}
	}
	writeJSON(w, code, ans)
}

func eventNames(evs []tasks.RouterEvent) []string {
	names := make([]string, len(evs))
	for i, e := range evs {
		names[i] = e.EventName
	}
	return names
}

// routeOne sends or runs one event of the router's array and says how it
// went, with the status code its refusal calls for (202 when accepted).
func (s *Server) routeOne(r *http.Request, ev *tasks.RouterEvent, i int, now time.Time) (RouterOutcome, int) {
	out := RouterOutcome{EventID: ev.EventID, EventName: ev.EventName}
	refuse := func(code int, err error) (RouterOutcome, int) { return out.refused(code, err) }
	if err := ev.CheckChain(i); err != nil {
		out.Field = fmt.Sprintf("[%d].eventChain", i)
		out.SendStatus, out.Error = "refused", err.Error()
		return out, http.StatusLoopDetected
	}
	switch ev.EventName {
	case tasks.EventRetryFailed, tasks.EventDeleteEvents:
		return s.routeInternal(r, ev, i, out)
	}
	send, err := ev.Send(i, now)
	if err != nil {
		return refuse(sendErrorCode(err), err)
	}
	res, err := s.send(r, send)
	if err != nil {
		if errors.Is(err, tasks.ErrInvalidEvent) {
			return refuse(http.StatusUnprocessableEntity, err)
		}
		return refuse(http.StatusServiceUnavailable, errors.New(s.unavailableMsg(r, "the event could not be recorded and was not accepted", err)))
	}
	out.EventID, out.SendStatus, out.JobID, out.Queue, out.State = res.EventID, res.SendStatus, res.JobID, res.Queue, res.State
	return out, http.StatusAccepted
}

// routeInternal runs one of Netlify's internal events, audited as the
// caller's action (the token's, for the app's client).
func (s *Server) routeInternal(r *http.Request, ev *tasks.RouterEvent, i int, out RouterOutcome) (RouterOutcome, int) {
	refuse := func(err error) (RouterOutcome, int) {
		code := sendErrorCode(err)
		var he *httpError
		switch {
		case errors.Is(err, ops.ErrNoStore), errors.Is(err, ops.ErrNoRedis):
			code = http.StatusServiceUnavailable
		case errors.As(err, &he):
			code = he.code
		case !errors.Is(err, tasks.ErrInvalidEvent) && !errors.Is(err, tasks.ErrMalformed):
			code = http.StatusServiceUnavailable
			err = errors.New(s.unavailableMsg(r, ev.EventName+" failed", err)) // the store's text only logged
		}
		return out.refused(code, err)
	}
	if !mayAct(r) {
		return refuse(errorf(http.StatusForbidden, "%s changes events: the viewer may only read", ev.EventName))
	}
	var (
		res    *ops.InternalResult
		filter any
		err    error
	)
	switch ev.EventName {
	case tasks.EventRetryFailed:
		var d *tasks.RetryFailedData
		if d, err = ev.RetryFailed(i); err != nil {
			return refuse(err)
		}
		filter = d
		res, err = s.ops.RetryFailedEvents(r.Context(), userOf(r), d)
	case tasks.EventDeleteEvents:
		var d *tasks.DeleteEventsData
		if d, err = ev.DeleteEvents(i); err != nil {
			return refuse(err)
		}
		filter = d
		res, err = s.ops.DeleteEvents(r.Context(), d)
	}
	if err != nil {
		return refuse(err)
	}
	n := res.Matched
	s.audit(r, store.AuditEntry{Action: ev.EventName, Target: cmp.Or(ev.EventID, ev.EventName), Filter: filter, Count: &n,
		Detail: internalDetail(res)})
	out.SendStatus, out.Result = "succeeded", res
	return out, http.StatusAccepted
}

// refused is o refused with err, answered with code: "failed" when a
// store failed (503; sending again may work), else "refused".
func (o RouterOutcome) refused(code int, err error) (RouterOutcome, int) {
	o.SendStatus, o.Error, o.Field = "refused", err.Error(), tasks.FieldOf(err)
	if code == http.StatusServiceUnavailable {
		o.SendStatus = "failed"
	}
	return o, code
}

// internalDetail says what an internal event did, for the audit trail.
func internalDetail(res *ops.InternalResult) string {
	d := fmt.Sprintf("matched %d: %d done, %d skipped, %d failed", res.Matched, res.Done, res.Skipped, res.Failed)
	if res.BulkID != "" {
		d += " (bulk retry " + res.BulkID + ")"
	}
	if len(res.Errors) > 0 {
		d += "; " + strings.Join(res.Errors, "; ")
	}
	return d
}

// sendErrorCode is the status writeSendError gives err.
func sendErrorCode(err error) int {
	if errors.Is(err, tasks.ErrMalformed) || errors.Is(err, tasks.ErrUnknownEvent) {
		return http.StatusBadRequest
	}
	return http.StatusUnprocessableEntity
}
