package web

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// bulkWait is how long POST /api/jobs/bulk waits for its action to finish
// before it answers 202 with the action as it stands (it goes on in the
// background; GET /api/jobs/bulk/{bulkId} follows it).
var bulkWait = 20 * time.Second

// bulkBody is the body of POST /api/jobs/bulk.
type bulkBody struct {
	Action string      `json:"action"`
	Filter filterInput `json:"filter"`
	DryRun bool        `json:"dryRun"`
	// All must be true for an empty filter (every job).
	All bool `json:"all"`
}

// dryRunAnswer is a dry run's answer: the count alone.
type dryRunAnswer struct {
	Matched int `json:"matched"`
}

// BulkAnswer is a bulk action as the API shows it; Outcomes is every
// job's outcome so far, in GET /api/jobs/bulk/{bulkId}.
type BulkAnswer struct {
	*store.BulkOp
	Outcomes []store.BulkOutcome `json:"outcomes,omitempty"`
}

// decodeJSON reads a JSON body strictly (unknown fields, trailing data and
// bodies over 500 KB refused).
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errorf(http.StatusRequestEntityTooLarge, "request body is over the limit of 500 KB")
		}
		return errorf(http.StatusBadRequest, "read body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errorf(http.StatusBadRequest, "malformed JSON: %v", err)
	}
	if dec.More() {
		return errorf(http.StatusBadRequest, "malformed JSON: data after the JSON value")
	}
	return nil
}

// bulk is POST /api/jobs/bulk.
func (s *Server) bulk(w http.ResponseWriter, r *http.Request) {
	var body bulkBody
	if err := decodeJSON(w, r, &body); err != nil {
		s.writeErr(w, r, err)
		return
	}
	if !slices.Contains(ops.BulkActions, body.Action) {
		e := errorf(http.StatusUnprocessableEntity, "action: must be one of %s, got %q", strings.Join(ops.BulkActions, ", "), body.Action)
		e.field = "action"
		s.writeErr(w, r, e)
		return
	}
	f, err := body.Filter.filter("filter.")
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	if f.Empty() && !body.All {
		// A dry run too: its count must be of the action that would run.
		s.writeErr(w, r, ops.ErrEmptyFilter)
		return
	}
	if body.DryRun {
		n, err := s.ops.CountBulk(r.Context(), f)
		if err != nil {
			s.writeErr(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, dryRunAnswer{Matched: n})
		return
	}
	op, done, err := s.startBulk(r, body.Action, f, body.All)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	code := http.StatusOK
	select {
	case <-done:
		if op, _, err = s.ops.GetBulk(r.Context(), op.ID, 0); err != nil {
			s.writeErr(w, r, err)
			return
		}
		if op.Status != store.BulkDone {
			code = http.StatusAccepted // stopped by a shutdown: resumed later
		}
	case <-time.After(bulkWait):
		code = http.StatusAccepted
		if cur, _, err := s.ops.GetBulk(r.Context(), op.ID, 0); err == nil {
			op = cur
		}
	case <-r.Context().Done():
		return // the action goes on
	}
	w.Header().Set("Location", "/api/jobs/bulk/"+op.ID)
	writeJSON(w, code, BulkAnswer{BulkOp: op})
}

// startBulk starts a bulk action for the request's user and records it in
// the audit trail with its filter and how many jobs it matched.
func (s *Server) startBulk(r *http.Request, action string, f store.JobFilter, all bool) (*store.BulkOp, <-chan struct{}, error) {
	op, done, err := s.ops.StartBulk(r.Context(), ops.BulkRequest{Action: action, Filter: f, User: userOf(r), All: all})
	if err != nil {
		return nil, nil, err
	}
	s.recordAudit(r, "bulk-"+action, op.ID, f, &op.Matched)
	return op, done, nil
}

// getBulk is GET /api/jobs/bulk/{bulkId}: the action's progress and every
// job's outcome so far.
func (s *Server) getBulk(w http.ResponseWriter, r *http.Request) {
	op, outcomes, err := s.ops.GetBulk(r.Context(), r.PathValue("bulkId"), -1)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, BulkAnswer{BulkOp: op, Outcomes: outcomes})
}

// listBulk is GET /api/jobs/bulk: the recent bulk actions, newest first.
func (s *Server) listBulk(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Store == nil {
		s.writeErr(w, r, ops.ErrNoStore)
		return
	}
	list, err := s.cfg.Store.ListBulkOps(r.Context(), false, 50)
	if err != nil {
		s.writeErr(w, r, storeErr(err))
		return
	}
	if list == nil {
		list = []*store.BulkOp{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"actions": list, "count": len(list)})
}

// rerun is POST /api/jobs/{jobId}/rerun.
func (s *Server) rerun(w http.ResponseWriter, r *http.Request) {
	var body ops.RerunRequest
	if err := decodeJSON(w, r, &body); err != nil {
		s.writeErr(w, r, err)
		return
	}
	jobID := r.PathValue("jobId")
	res, err := s.ops.Rerun(r.Context(), jobID, body)
	if err != nil {
		var fe *tasks.FieldError
		if errors.As(err, &fe) {
			// The body's fields sit at its top level.
			field := strings.TrimPrefix(fe.Field, "eventData.")
			writeError(w, http.StatusUnprocessableEntity, field+": "+fe.Message, field)
			return
		}
		s.writeErr(w, r, err)
		return
	}
	s.audit(r, store.AuditEntry{Action: "rerun", Target: jobID, Filter: body, Detail: rerunDetail(res)})
	writeJSON(w, http.StatusAccepted, res)
}
