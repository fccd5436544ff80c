package tasks

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// EventData is the `eventData` of a generate-insights event as producers
// send it (docs/DESIGN.md section 5). Pointers tell "absent" from a zero value so
// that defaults apply only to what was left out.
type EventData struct {
	JobID             string        `json:"jobId,omitempty"`
	SystemID          string        `json:"systemId,omitempty"`
	AnalysisData      *AnalysisData `json:"analysisData,omitempty"`
	CustomPrompt      string        `json:"customPrompt,omitempty"`
	ContextWindowDays *int          `json:"contextWindowDays,omitempty"`
	MaxIterations     *int          `json:"maxIterations,omitempty"`
	FullContextMode   *bool         `json:"fullContextMode,omitempty"`
	// ModelOverride is the Gemini model for this job instead of
	// GEMINI_MODEL ([A-Za-z0-9._-]{1,64}).
	ModelOverride string `json:"modelOverride,omitempty"`
}

// FieldError is a refused value; Field names it as the producer wrote it
// ("eventData.contextWindowDays").
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// ErrInvalidEvent is wrapped by every refusal of the event filter or a
// range check.
var ErrInvalidEvent = errors.New("invalid event")

// Is lets errors.Is(err, ErrInvalidEvent) match a FieldError.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidEvent }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Message: fmt.Sprintf(format, args...)}
}

var (
	idPattern    = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)
	modelPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
)

// ValidID reports whether s is a valid jobId or systemId.
func ValidID(s string) bool { return idPattern.MatchString(s) }

// Validate applies the event filter and every range check. It names the
// field at fault with prefix (for example "eventData.").
func (d *EventData) Validate(prefix string) error {
	if err := d.Filter(prefix); err != nil {
		return err
	}
	// A value sent is checked as sent: an explicit 0 is out of range, not
	// "use the default" (which is what the request's 0 means).
	if v := d.ContextWindowDays; v != nil {
		if err := inRange(prefix+"contextWindowDays", *v, minContextWindow, maxContextWindow); err != nil {
			return err
		}
	}
	if v := d.MaxIterations; v != nil {
		if err := inRange(prefix+"maxIterations", *v, minIterations, maxIterations); err != nil {
			return err
		}
	}
	return d.Request().check(prefix)
}

// Filter applies the event filter alone: a jobId, or both analysisData and
// systemId, with valid ids. An event that passes it can be recorded as a
// job, whose validate step then checks the ranges (the Netlify paths).
func (d *EventData) Filter(prefix string) error {
	if d.JobID == "" && (d.AnalysisData == nil || d.SystemID == "") {
		switch {
		case d.AnalysisData == nil && d.SystemID == "":
			return fieldErr(prefix+"jobId", "required unless both systemId and analysisData are given")
		case d.SystemID == "":
			return fieldErr(prefix+"systemId", "required with analysisData when there is no jobId")
		default:
			return fieldErr(prefix+"analysisData", "required with systemId when there is no jobId")
		}
	}
	if d.JobID != "" && !ValidID(d.JobID) {
		return fieldErr(prefix+"jobId", "must match [A-Za-z0-9._:-]{1,128}")
	}
	if d.SystemID != "" && !ValidID(d.SystemID) {
		return fieldErr(prefix+"systemId", "must match [A-Za-z0-9._:-]{1,128}")
	}
	return CheckSnapshot(prefix+"analysisData", d.AnalysisData) // what a store can hold: snapshot.go
}

// HasRequest reports whether the event carries its own request (rather than
// only a jobId whose stored request is to be used).
func (d *EventData) HasRequest() bool { return d.AnalysisData != nil }

// Request returns the request fields the event sets (defaults apply when
// the run validates them, so a re-send keeps the stored values it omits).
func (d *EventData) Request() *Request {
	r := &Request{
		AnalysisData:  d.AnalysisData,
		CustomPrompt:  d.CustomPrompt,
		ModelOverride: d.ModelOverride,
	}
	if d.ContextWindowDays != nil {
		r.ContextWindowDays = *d.ContextWindowDays
	}
	if d.MaxIterations != nil {
		r.MaxIterations = *d.MaxIterations
	}
	if d.FullContextMode != nil {
		r.FullContextMode = *d.FullContextMode
	}
	return r
}

// Validate checks a run's request as the worker's validate step does, for
// requests that did not pass Client.Send (a job the BMS app stored, a task
// put in Redis by another producer): the snapshot is there, systemID is
// valid and every range holds, with the defaults in place of unset fields.
func (r *Request) Validate(systemID string) error {
	if r == nil || r.AnalysisData == nil {
		return fieldErr("analysisData", "required")
	}
	if !ValidID(systemID) {
		return fieldErr("systemId", "must match [A-Za-z0-9._:-]{1,128}")
	}
	return r.check("")
}

// check is the range checks a request shares with its event: unset
// fields take their defaults; a field at fault is named with prefix.
func (r *Request) check(prefix string) error {
	d := r.WithDefaults()
	if n := len([]rune(d.CustomPrompt)); n > MaxCustomPromptLen {
		return fieldErr(prefix+"customPrompt", "at most %d characters, got %d", MaxCustomPromptLen, n)
	}
	if err := inRange(prefix+"contextWindowDays", d.ContextWindowDays, minContextWindow, maxContextWindow); err != nil {
		return err
	}
	if err := inRange(prefix+"maxIterations", d.MaxIterations, minIterations, maxIterations); err != nil {
		return err
	}
	if d.ModelOverride != "" && !modelPattern.MatchString(d.ModelOverride) {
		return fieldErr(prefix+"modelOverride", "must match [A-Za-z0-9._-]{1,64}")
	}
	if d.AnalysisData != nil {
		if soc := d.AnalysisData.StateOfCharge; soc != nil && (*soc < 0 || *soc > 100) {
			return fieldErr(prefix+"analysisData.stateOfCharge", "must be 0–100 %%, got %g", *soc)
		}
		if !d.AnalysisData.Measured() {
			return fieldErr(prefix+"analysisData", "holds no measured value: every reading (%s) is absent or null, so there is nothing to analyse",
				strings.Join(bms.MeasuredFields, ", "))
		}
	}
	return nil
}

func inRange(field string, v, lo, hi int) error {
	if v < lo || v > hi {
		return fieldErr(field, "must be %d–%d, got %d", lo, hi, v)
	}
	return nil
}

// Envelope is the body of POST /api/events.
type Envelope struct {
	EventName  string          `json:"eventName"`
	EventData  json.RawMessage `json:"eventData"`
	Priority   *int            `json:"priority,omitempty"`
	DelayUntil json.RawMessage `json:"delayUntil,omitempty"`
}

// ErrMalformed marks a body that is not the JSON the contract asks for
// (HTTP 400); ErrUnknownEvent an eventName this service does not run.
var (
	ErrMalformed    = errors.New("malformed JSON")
	ErrUnknownEvent = errors.New("unknown event name")
)

// Send is one event to send: Client.Send validates it.
type Send struct {
	Data EventData
	// EventID is the sender's own eventId (the Netlify client makes one):
	// the run's eventId and asynq task id. "": Send makes a new UUID. An
	// eventId the service has accepted before never starts a second run.
	EventID  string
	Priority int
	// At is when the run is due; zero means now.
	At time.Time
	// FromStep re-runs the job Data.JobID from that step (Run.FromStep):
	// the steps before it that completed in its previous run are kept.
	// "": a run of every step.
	FromStep string
	// CheckAtRun leaves the range checks to the run's validate step, which
	// fails the job (no retry) with the reason: the Netlify paths, whose
	// app has created its job and polls it, so a refusal at the door would
	// leave that job queued for ever. The event filter still applies.
	CheckAtRun bool
	// Prefix is how the API body spells eventData's fields ("" for
	// "eventData."; the router's "[0].data.").
	Prefix string
}

// Validate applies the event filter and every range check (Client.Send
// calls it); the error names the field as the API body spells it.
func (s *Send) Validate() error {
	prefix := cmp.Or(s.Prefix, "eventData.")
	check := s.Data.Validate
	if s.CheckAtRun {
		check = s.Data.Filter
	}
	if err := check(prefix); err != nil {
		return err
	}
	if s.EventID != "" && !ValidID(s.EventID) {
		return fieldErr(strings.TrimSuffix(prefix, "data.")+"eventId", "must match [A-Za-z0-9._:-]{1,128}")
	}
	if s.FromStep != "" {
		if !slices.Contains(Steps, s.FromStep) {
			return fieldErr("fromStep", "must be one of %s, got %q", strings.Join(Steps, ", "), s.FromStep)
		}
		if s.Data.JobID == "" {
			return fieldErr(prefix+"jobId", "is required to re-run a job from a step")
		}
	}
	if s.Priority < MinPriority || s.Priority > MaxPriority {
		return fieldErr("priority", "must be an integer %d–%d, got %d", MinPriority, MaxPriority, s.Priority)
	}
	return nil
}

// ParseEnvelope reads an event as the HTTP API receives it: strict JSON,
// strict types, the event name, nulls as absent and empty ids refused. It
// does not apply the event filter or the ranges: Client.Send does, once.
// Errors wrap ErrMalformed, ErrUnknownEvent or ErrInvalidEvent (a
// *FieldError naming the field).
func ParseEnvelope(body []byte) (*Send, error) {
	var env Envelope
	if err := strictDecode(body, &env, ""); err != nil {
		return nil, err
	}
	if env.EventName == "" {
		return nil, &malformed{field: "eventName", msg: "required", json: true}
	}
	if env.EventName != EventGenerateInsights {
		return nil, fmt.Errorf("%w %q (this service accepts %q)", ErrUnknownEvent, env.EventName, EventGenerateInsights)
	}
	if len(env.EventData) == 0 || string(env.EventData) == "null" {
		return nil, fieldErr("eventData", "required")
	}
	s := &Send{Priority: DefaultPriority}
	if err := parseEventData(env.EventData, &s.Data, "eventData."); err != nil {
		return nil, err
	}
	if env.Priority != nil {
		s.Priority = *env.Priority
	}
	if len(env.DelayUntil) > 0 && string(env.DelayUntil) != "null" {
		at, err := parseDelayUntil(env.DelayUntil)
		if err != nil {
			return nil, err
		}
		s.At = at
	}
	return s, nil
}

// parseEventData decodes an event's data as the API reads it: strict
// types, nulls as absent, empty ids refused; fields named with prefix.
func parseEventData(raw json.RawMessage, d *EventData, prefix string) error {
	if err := strictDecode(raw, d, prefix); err != nil {
		return err
	}
	// null is the same as absent (the BMS app sends nulls), but an empty
	// id is a value, and refused.
	var ids struct{ JobID, SystemID *string }
	if err := json.Unmarshal(raw, &ids); err == nil {
		if ids.JobID != nil && *ids.JobID == "" {
			return fieldErr(prefix+"jobId", "must not be empty")
		}
		if ids.SystemID != nil && *ids.SystemID == "" {
			return fieldErr(prefix+"systemId", "must not be empty")
		}
	}
	return nil
}

// parseDelayUntil reads an RFC 3339 string, or Unix milliseconds as a JSON
// number or numeric string.
func parseDelayUntil(raw json.RawMessage) (time.Time, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return time.Time{}, fieldErr("delayUntil", "not JSON: %v", err)
	}
	switch x := v.(type) {
	case json.Number:
		return unixMillis(x.String())
	case string:
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil {
			return t, nil
		}
		if t, err := unixMillis(x); err == nil {
			return t, nil
		}
		return time.Time{}, fieldErr("delayUntil", "want RFC 3339 or Unix milliseconds, got %q", x)
	}
	return time.Time{}, fieldErr("delayUntil", "want RFC 3339 string or Unix milliseconds")
}

func unixMillis(s string) (time.Time, error) {
	ms, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil {
		return time.Time{}, fieldErr("delayUntil", "want Unix milliseconds as an integer, got %s", s)
	}
	return time.UnixMilli(ms), nil
}

// malformed is a body refused with 400: broken JSON, or (json) JSON of the
// wrong shape, whose message must not call it broken.
type malformed struct {
	field, msg string
	json       bool
}

func (m *malformed) Error() string {
	if m.json {
		return m.field + ": " + m.msg
	}
	if m.field == "" {
		return ErrMalformed.Error() + ": " + m.msg
	}
	return ErrMalformed.Error() + ": " + m.field + ": " + m.msg
}
func (m *malformed) Unwrap() error { return ErrMalformed }

// Field names the field at fault ("" when it is the body as a whole).
func (m *malformed) Field() string { return m.field }

// strictDecode decodes one JSON value with nothing after it. A wrong type is
// a FieldError (422) naming the field; broken JSON is malformed (400).
func strictDecode(b []byte, v any, prefix string) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			field := te.Field
			if field == "" {
				return &malformed{field: strings.TrimSuffix(prefix, "."), msg: "must be a JSON object"}
			}
			return fieldErr(prefix+field, "must be %s, got %s", jsonKind(te.Type), te.Value)
		}
		return &malformed{msg: err.Error()}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &malformed{msg: "unexpected data after the JSON value"}
	}
	return nil
}

// FieldOf returns the field an error names, or "".
func FieldOf(err error) string {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	var m *malformed
	if errors.As(err, &m) {
		return m.field
	}
	return ""
}

// jsonKind names a Go type as the JSON value it decodes from, for messages
// a sender reads ("a number", not "float64").
func jsonKind(t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "a JSON value"
}
