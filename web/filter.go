package web

import (
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

var jobStatuses = []string{tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusProcessing, tasks.StatusRetrying,
	tasks.StatusCompleted, tasks.StatusFailed, tasks.StatusCancelled}

// failureKinds are the failure kinds a filter names.
var failureKinds = []string{store.KindTransient, store.KindRateLimit, store.KindBusiness, store.KindInternal, store.KindUnknown}

// fingerprintRE is a failure group's fingerprint (store.Fingerprint).
var fingerprintRE = regexp.MustCompile(`^[0-9a-f]{16}$`)

// filterInput is a job filter as a request spells it: query parameters
// (the job list, the pages) or the JSON `filter` of a bulk action.
type filterInput struct {
	Status      string `json:"status"`
	FailureKind string `json:"failureKind"`
	Step        string `json:"step"`
	SystemID    string `json:"systemId"`
	Message     string `json:"message"`
	Fingerprint string `json:"fingerprint"`
	From        string `json:"from"`
	To          string `json:"to"`
}

func filterFromQuery(q url.Values) filterInput {
	return filterInput{Status: q.Get("status"), FailureKind: q.Get("failureKind"), Step: q.Get("step"),
		SystemID: q.Get("systemId"), Message: q.Get("message"), Fingerprint: q.Get("fingerprint"), From: q.Get("from"), To: q.Get("to")}
}

// filter checks every field and returns the store's filter; a bad value is
// a 422 naming the field, prefix + its name ("filter.status").
func (in filterInput) filter(prefix string) (store.JobFilter, error) {
	bad := func(field, format string, args ...any) error {
		e := errorf(http.StatusUnprocessableEntity, "%s: "+format, append([]any{prefix + field}, args...)...)
		e.field = prefix + field
		return e
	}
	f := store.JobFilter{Status: in.Status, FailureKind: in.FailureKind, Step: in.Step, SystemID: in.SystemID, Message: in.Message,
		Fingerprint: in.Fingerprint}
	if f.Status != "" && !slices.Contains(jobStatuses, f.Status) {
		return f, bad("status", "must be one of %s, got %q", strings.Join(jobStatuses, ", "), f.Status)
	}
	if f.FailureKind != "" && !slices.Contains(failureKinds, f.FailureKind) {
		return f, bad("failureKind", "must be one of %s, got %q", strings.Join(failureKinds, ", "), f.FailureKind)
	}
	if (f.FailureKind != "" || f.Step != "" || f.Message != "" || f.Fingerprint != "") && f.Status != "" && f.Status != tasks.StatusFailed {
		return f, bad("status", "must be %s or empty with a failure kind, step or message (they select failed jobs only), got %q", tasks.StatusFailed, f.Status)
	}
	if f.Step != "" && !slices.Contains(tasks.Steps, f.Step) {
		return f, bad("step", "must be one of %s, got %q", strings.Join(tasks.Steps, ", "), f.Step)
	}
	if f.Fingerprint != "" && !fingerprintRE.MatchString(f.Fingerprint) {
		return f, bad("fingerprint", "must be a failure group's fingerprint, 16 hex digits (GET /api/failures), got %q", f.Fingerprint)
	}
	if f.SystemID != "" && !tasks.ValidID(f.SystemID) {
		return f, bad("systemId", "must match [A-Za-z0-9._:-]{1,128}")
	}
	for _, t := range []struct {
		name, v string
		dst     **time.Time
	}{{"from", in.From, &f.From}, {"to", in.To, &f.To}} {
		if t.v == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, t.v)
		if err != nil {
			return f, bad(t.name, "must be an RFC 3339 time such as 2026-12-01T00:00:00Z, got %q", t.v)
		}
		*t.dst = &at
	}
	if f.From != nil && f.To != nil && !f.From.Before(*f.To) {
		return f, bad("to", "must be after from")
	}
	return f, nil
}

// values is the filter as query parameters (links between pages).
func (in filterInput) values() url.Values {
	v := url.Values{}
	for k, x := range map[string]string{"status": in.Status, "failureKind": in.FailureKind, "step": in.Step,
		"systemId": in.SystemID, "message": in.Message, "fingerprint": in.Fingerprint, "from": in.From, "to": in.To} {
		if x != "" {
			v.Set(k, x)
		}
	}
	return v
}

const (
	defaultLimit = 50
	maxLimit     = 500
)

// parseJobFilter reads the job list's query: the filter, limit and offset;
// a bad value is a 422 naming the parameter.
func parseJobFilter(r *http.Request) (store.JobFilter, error) {
	q := r.URL.Query()
	f, err := filterFromQuery(q).filter("")
	f.Limit = defaultLimit
	if err != nil {
		return f, err
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return f, &httpError{code: http.StatusUnprocessableEntity, field: "limit", msg: "limit must be an integer 1–500, got " + strconv.Quote(v)}
		}
		f.Limit = min(n, maxLimit)
	}
	if v := q.Get("offset"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return f, &httpError{code: http.StatusUnprocessableEntity, field: "offset", msg: "offset must be an integer ≥ 0, got " + strconv.Quote(v)}
		}
		f.Offset = n
	}
	return f, nil
}
