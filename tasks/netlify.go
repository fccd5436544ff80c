package tasks

// The Netlify router protocol (docs/DESIGN.md section 12): what the BMS
// app's installed client, @netlify/async-workloads 0.0.92, sends. Its
// AsyncWorkloadsClient.send POSTs a JSON array of events to
// /.netlify/functions/async-workloads-router, each with an eventId it made
// itself, a priority on Netlify's -50..50 scale, delayUntil in absolute
// Unix milliseconds and the chain of event names that led to it.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Netlify's internal events, sent through the same client.
const (
	EventRetryFailed  = "awl:retry-failed-events"
	EventDeleteEvents = "awl:delete-events"
)

// Limits of the Netlify client, as its package defines them.
const (
	// EventChainLimit is AWL_EVENT_CHAIN_LIMIT's default: a chain of this
	// many event names is a loop (HTTP 508).
	EventChainLimit = 20
	// MaxDelay is how far ahead delayUntil may be (MAX_DELAY_MS).
	MaxDelay = 31556952000 * time.Millisecond
	// NetlifyPriorityRange bounds a Netlify priority: -50..50, default 0.
	NetlifyPriorityRange = 50
	// HibernateAfter: an event delayed this far ahead is hibernating in
	// Netlify's words, else delayed.
	HibernateAfter = 24 * time.Hour
)

// Netlify's event states (the package's EventState).
const (
	NetlifyPending      = "pending"
	NetlifyDelayed      = "delayed"
	NetlifyProcessing   = "processing"
	NetlifyHibernating  = "hibernating"
	NetlifyDeadLettered = "dead-lettered"
	// NetlifyDone is a run that completed (or was cancelled): Netlify
	// keeps no state for it.
	NetlifyDone = "done"
)

// NetlifyStates lists the states awl:delete-events accepts.
var NetlifyStates = []string{NetlifyPending, NetlifyDelayed, NetlifyProcessing, NetlifyHibernating, NetlifyDeadLettered}

// NetlifyState is a job's state in Netlify's words: its status, and for a
// scheduled or retrying run how far ahead it is due.
func NetlifyState(status string, processAt, now time.Time) string {
	switch status {
	case StatusQueued:
		return NetlifyPending
	case StatusScheduled, StatusRetrying:
		if processAt.Sub(now) >= HibernateAfter {
			return NetlifyHibernating
		}
		return NetlifyDelayed
	case StatusProcessing:
		return NetlifyProcessing
	case StatusFailed:
		return NetlifyDeadLettered
	}
	return NetlifyDone
}

// NetlifyPriority maps a Netlify priority (-50..50, higher first, default
// 0) onto this service's 0..10 and so onto the weighted queues
// (docs/DESIGN.md section 5): 9 and above critical (the app's urgent 10),
// 7–8 high, -9..6 default (the app's 5, and Netlify's default 0, are
// normal work), -10 and below low.
func NetlifyPriority(p int) int {
	switch {
	case p >= UrgentPriority:
		return UrgentPriority
	case p >= 7:
		return p
	case p >= -9:
		return DefaultPriority
	}
	return 1
}

// RouterEvent is one event of the router's JSON array body.
type RouterEvent struct {
	EventName  string          `json:"eventName"`
	Data       json.RawMessage `json:"data"`
	Priority   *float64        `json:"priority"`
	DelayUntil *float64        `json:"delayUntil"`
	EventID    string          `json:"eventId"`
	BaseURL    string          `json:"baseUrl"`
	EventChain []string        `json:"eventChain"`
}

// ErrLoop marks an event whose chain reached EventChainLimit (HTTP 508).
var ErrLoop = fmt.Errorf("event chain at the loop limit of %d events", EventChainLimit)

// ParseRouterBody reads the router's body: a JSON array of events (an
// object alone is taken as an array of one). Errors wrap ErrMalformed.
func ParseRouterBody(body []byte) ([]RouterEvent, error) {
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '{' {
		body = append(append([]byte{'['}, body...), ']')
	}
	var raws []json.RawMessage
	if err := strictDecode(body, &raws, ""); err != nil {
		return nil, &malformed{msg: "the body must be a JSON array of events: " + err.Error()}
	}
	if len(raws) == 0 {
		return nil, &malformed{msg: "the body is an empty array: no event to send", json: true}
	}
	evs := make([]RouterEvent, len(raws))
	for i, raw := range raws {
		if err := strictDecode(raw, &evs[i], fmt.Sprintf("[%d].", i)); err != nil {
			return nil, err
		}
	}
	return evs, nil
}

// Prefix is how this event's fields are named in errors: "[i]." of the
// body array.
func routerPrefix(i int) string { return fmt.Sprintf("[%d].", i) }

// CheckChain refuses an event whose chain reached the limit (ErrLoop).
func (e *RouterEvent) CheckChain(i int) error {
	if len(e.EventChain) >= EventChainLimit {
		return fmt.Errorf("%s: %w (%s)", routerPrefix(i)+"eventChain", ErrLoop, strings.Join(e.EventChain, " → "))
	}
	return nil
}

// Send turns a generate-insights event of the router into a Send: the
// event filter applies now, the range checks in the run's validate step
// (CheckAtRun); the client's eventId is the run's.
func (e *RouterEvent) Send(i int, now time.Time) (*Send, error) {
	prefix := routerPrefix(i)
	if e.EventName != EventGenerateInsights {
		return nil, fmt.Errorf("%s: %w %q (this service runs %q, %q and %q)", prefix+"eventName", ErrUnknownEvent,
			e.EventName, EventGenerateInsights, EventRetryFailed, EventDeleteEvents)
	}
	if len(e.Data) == 0 || string(e.Data) == "null" {
		return nil, fieldErr(prefix+"data", "required")
	}
	s := &Send{EventID: e.EventID, Priority: DefaultPriority, CheckAtRun: true, Prefix: prefix + "data."}
	if err := parseEventData(e.Data, &s.Data, prefix+"data."); err != nil {
		return nil, err
	}
	if e.EventID == "" {
		return nil, fieldErr(prefix+"eventId", "required (the client makes one per send)")
	}
	if p := e.Priority; p != nil {
		if *p != math.Trunc(*p) || *p < -NetlifyPriorityRange || *p > NetlifyPriorityRange {
			return nil, fieldErr(prefix+"priority", "must be an integer -%d..%d, got %g", NetlifyPriorityRange, NetlifyPriorityRange, *p)
		}
		s.Priority = NetlifyPriority(int(*p))
	}
	if d := e.DelayUntil; d != nil {
		at := time.UnixMilli(int64(*d))
		if at.Sub(now) >= MaxDelay {
			return nil, fieldErr(prefix+"delayUntil", "must be at most a year ahead, got %s", at.UTC().Format(time.RFC3339))
		}
		s.At = at // in the past: due now
	}
	return s, nil
}

// RetryFailedData is the data of awl:retry-failed-events: which
// dead-lettered events to run again (none given: every one).
type RetryFailedData struct {
	EventIDs   []string `json:"eventIds"`
	EventNames []string `json:"eventNames"`
}

// DeleteEventsData is the data of awl:delete-events: the events to delete
// by id, or every event in one of the states.
type DeleteEventsData struct {
	EventIDs []string `json:"eventIds"`
	States   []string `json:"states"`
}

// RetryFailed reads an awl:retry-failed-events event.
func (e *RouterEvent) RetryFailed(i int) (*RetryFailedData, error) {
	var d RetryFailedData
	if err := e.internalData(i, &d); err != nil {
		return nil, err
	}
	for j, n := range d.EventNames {
		if n != EventGenerateInsights && n != EventInsightsCompleted {
			return nil, fieldErr(fmt.Sprintf("%sdata.eventNames[%d]", routerPrefix(i), j), "must be %q or %q, got %q",
				EventGenerateInsights, EventInsightsCompleted, n)
		}
	}
	return &d, checkIDs(routerPrefix(i)+"data.eventIds", d.EventIDs)
}

// DeleteEvents reads an awl:delete-events event. It names what to delete:
// an event with neither ids nor states is refused rather than taken for
// "everything".
func (e *RouterEvent) DeleteEvents(i int) (*DeleteEventsData, error) {
	var d DeleteEventsData
	if err := e.internalData(i, &d); err != nil {
		return nil, err
	}
	prefix := routerPrefix(i) + "data."
	if len(d.EventIDs) == 0 && len(d.States) == 0 {
		return nil, fieldErr(prefix+"eventIds", "eventIds or states is required: name the events to delete")
	}
	for j, st := range d.States {
		if !slices.Contains(NetlifyStates, st) {
			return nil, fieldErr(fmt.Sprintf("%sstates[%d]", prefix, j), "must be one of %s, got %q", strings.Join(NetlifyStates, ", "), st)
		}
	}
	return &d, checkIDs(prefix+"eventIds", d.EventIDs)
}

func (e *RouterEvent) internalData(i int, v any) error {
	if len(e.Data) == 0 || string(e.Data) == "null" {
		return nil
	}
	return strictDecode(e.Data, v, routerPrefix(i)+"data.")
}

func checkIDs(field string, ids []string) error {
	for j, id := range ids {
		if !ValidID(id) {
			return fieldErr(fmt.Sprintf("%s[%d]", field, j), "must match [A-Za-z0-9._:-]{1,128}")
		}
	}
	return nil
}
