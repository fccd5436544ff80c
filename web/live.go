package web

// The job page's live stream: GET /jobs/{jobId}/live, server-sent events
// (docs/api.md). FerretDB has no change streams, so each stream reads its
// job about once a second and sends an event only when the job changed.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// liveTiming paces and bounds a live stream.
type liveTiming struct {
	// poll is how often the stream reads its job.
	poll time.Duration
	// keepAlive is how often a comment is sent, so that proxies and the
	// browser keep an idle stream open.
	keepAlive time.Duration
	// max ends a stream: a browser's EventSource reconnects by itself
	// (with Last-Event-ID), so no stream holds a connection for ever.
	max time.Duration
	// retry is the reconnection delay the stream asks of EventSource.
	retry time.Duration
}

var defaultLiveTiming = liveTiming{poll: time.Second, keepAlive: 15 * time.Second, max: 10 * time.Minute, retry: 2 * time.Second}

// The live stream's event names.
const (
	liveEventJob = "job" // the job changed
	liveEventEnd = "end" // the last event: nothing more to wait for
)

// LiveEvent is the data of one event of a job's live stream.
type LiveEvent struct {
	JobID   string `json:"jobId"`
	EventID string `json:"eventId"`
	Status  string `json:"status"`
	// Live is false in the last event (end): the run ended and its chain
	// was sent, or the job was deleted (Deleted).
	Live      bool      `json:"live"`
	Deleted   bool      `json:"deleted,omitempty"`
	UpdatedAt time.Time `json:"updatedAt"`
	Attempts  int       `json:"attempts"`
	// ProgressCount is the number of progress events of the run (the
	// event's id); Progress holds those from index ProgressFrom on, the
	// ones the client has not been sent.
	ProgressCount int            `json:"progressCount"`
	ProgressFrom  int            `json:"progressFrom"`
	Progress      []LiveProgress `json:"progress"`
	// Steps are the workflow's steps in order; a step that has not run is
	// "pending" with 0 runs.
	Steps                 []LiveStep     `json:"steps"`
	PartialInsightsLength int            `json:"partialInsightsLength"`
	Waiting               *store.Waiting `json:"waiting,omitempty"`
	Error                 *string        `json:"error,omitempty"`
}

// LiveProgress is a progress event with its place in the run and its
// human line (as the BMS app's status route words it).
type LiveProgress struct {
	Index int `json:"index"`
	store.ProgressEvent
	Text string `json:"text"`
}

// LiveStep is one step's state in a live event.
type LiveStep struct {
	Name       string `json:"name"`
	Status     string `json:"status"` // completed | failed | sleeping | pending
	Runs       int    `json:"runs"`
	Attempt    int    `json:"attempt"`
	DurationMs int64  `json:"durationMs"`
	Error      string `json:"error,omitempty"`
}

// streams reports whether a job's page has something left to wait for:
// its run is live, or it completed and send-completion has yet to send
// the chain's follow-up (then the page shows the chain once reloaded).
func streams(j *store.Job) bool {
	if tasks.Live(j.Status) {
		return true
	}
	_, sent := j.Steps[tasks.StepSendCompletion]
	return j.Status == tasks.StatusCompleted && !sent && j.Steps[tasks.StepStoreResults].Status == store.StepCompleted
}

// liveEventOf is the event telling of job, with its progress from index
// from on.
func liveEventOf(job *store.Job, from int) *LiveEvent {
	n := len(job.Progress)
	from = min(max(from, 0), n)
	ev := &LiveEvent{JobID: job.ID, EventID: job.EventID, Status: job.Status, Live: streams(job), UpdatedAt: job.UpdatedAt,
		Attempts: job.Attempts, ProgressCount: n, ProgressFrom: from, Progress: make([]LiveProgress, 0, n-from),
		PartialInsightsLength: partialLength(job.PartialInsights), Waiting: job.Waiting, Error: job.Error}
	for i := from; i < n; i++ {
		ev.Progress = append(ev.Progress, LiveProgress{Index: i, ProgressEvent: job.Progress[i], Text: stageOf(job.Progress[i])})
	}
	for _, name := range tasks.Steps {
		st, ok := job.Steps[name]
		if !ok {
			ev.Steps = append(ev.Steps, LiveStep{Name: name, Status: "pending"})
			continue
		}
		ev.Steps = append(ev.Steps, LiveStep{Name: name, Status: st.Status, Runs: st.Runs, Attempt: st.Attempt,
			DurationMs: st.DurationMs, Error: st.Error})
	}
	return ev
}

// partialLength is the length of the app's partialInsights: characters of
// a text, bytes of the JSON of anything else.
func partialLength(v any) int {
	switch p := v.(type) {
	case nil:
		return 0
	case string:
		return utf8.RuneCountInString(p)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return 0
	}
	return len(b)
}

// liveSince is the number of progress events the client has: its
// Last-Event-ID (a reconnecting EventSource sends the last id it got),
// else ?since= (the count the page was rendered with), else 0.
func liveSince(r *http.Request) (int, error) {
	v, field := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if v == "" {
		v, field = r.URL.Query().Get("since"), "since"
	}
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, &httpError{code: http.StatusUnprocessableEntity, field: field,
			msg: field + " must be a count of progress events (an integer ≥ 0), got " + strconv.Quote(v)}
	}
	return n, nil
}

// sseWriter writes a stream's events, each flushed at once.
type sseWriter struct {
	w  http.ResponseWriter
	rc *http.ResponseController
	// writeTimeout is the server's WriteTimeout (0: none). It bounds the
	// whole response from the request's start, which would cut a stream:
	// each write gets a deadline of its own instead.
	writeTimeout time.Duration
}

func (sw *sseWriter) write(b []byte) error {
	if sw.writeTimeout > 0 {
		if err := sw.rc.SetWriteDeadline(time.Now().Add(sw.writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
	}
	if _, err := sw.w.Write(b); err != nil {
		return err
	}
	return sw.rc.Flush()
}

// event writes one event: its name, id and JSON data (one line: JSON
// escapes newlines in strings).
func (sw *sseWriter) event(name string, id int, data any) error {
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString("event: " + name + "\nid: " + strconv.Itoa(id) + "\ndata: ")
	buf.Write(b)
	buf.WriteString("\n\n")
	return sw.write(buf.Bytes())
}

// jobLive is GET /jobs/{jobId}/live: the job's changes as server-sent
// events. The first event tells the job as it is, with the progress events
// after the client's count; then one for each change; the last one (end)
// when it has nothing left to wait for. The stream also ends when the
// client goes away, after liveTiming.max and on EndStreams (the client
// reconnects). Every stream of one job shares one watcher (livehub.go),
// which reads the job once a poll; a user may hold LiveStreamsPerUser
// streams and the server LiveStreamsMax (429 beyond).
func (s *Server) jobLive(w http.ResponseWriter, r *http.Request) {
	select {
	case <-s.streamsEnd:
		writeError(w, http.StatusServiceUnavailable, "the server is shutting down", "")
		return
	default:
	}
	if s.cfg.Store == nil {
		s.writeErr(w, r, ops.ErrNoStore)
		return
	}
	since, err := liveSince(r)
	if err != nil {
		s.writeErr(w, r, err)
		return
	}
	release, err := s.liveHub.acquire(userOf(r))
	if err != nil {
		w.Header().Set("Retry-After", "30")
		s.writeErr(w, r, err)
		return
	}
	defer release()
	id := r.PathValue("jobId")
	timing := s.live
	watcher, leave, err := s.liveHub.watch(id, func() (*store.Job, error) {
		// Not the request's own context: streams that come meanwhile
		// wait for this read, whether or not its client stays.
		return s.cfg.Store.GetJob(context.WithoutCancel(r.Context()), id)
	}, s.cfg.Store, timing.poll)
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, "job "+id+" not found", "")
		return
	case err != nil:
		s.writeErr(w, r, storeErr(err))
		return
	}
	defer leave()
	job, gone, changes := watcher.latest()
	if gone { // deleted between the watcher's reads
		writeError(w, http.StatusNotFound, "job "+id+" not found", "")
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), timing.max)
	defer cancel()

	sw := &sseWriter{w: w, rc: http.NewResponseController(w)}
	if srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server); ok {
		sw.writeTimeout = srv.WriteTimeout
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx would buffer the stream
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	s.liveStreams.Add(1)
	defer s.liveStreams.Add(-1)
	if err := sw.write([]byte("retry: " + strconv.Itoa(int(timing.retry.Milliseconds())) + "\n\n")); err != nil {
		return
	}

	log := s.log.With("jobId", id)
	// What the client has: the run (a new run starts its progress afresh),
	// its progress count and the job's last update.
	eventID, count, updated, status := job.EventID, since, time.Time{}, ""
	if count > len(job.Progress) {
		count = 0 // the count of another run
	}
	send := func(j *store.Job) (more bool) {
		if j.EventID != eventID {
			eventID, count = j.EventID, 0
		}
		ev := liveEventOf(j, count)
		name := liveEventJob
		if !ev.Live {
			name = liveEventEnd
		}
		if err := sw.event(name, ev.ProgressCount, ev); err != nil {
			log.Debug("live stream: client gone", "err", err)
			return false
		}
		count, updated, status = ev.ProgressCount, j.UpdatedAt, j.Status
		return ev.Live
	}
	if !send(job) {
		return
	}

	keepAlive := time.NewTicker(timing.keepAlive)
	defer keepAlive.Stop()
	for {
		select {
		case <-ctx.Done():
			return // the client went away, or the bound: EventSource reconnects
		case <-s.streamsEnd:
			return // the server shuts down
		case <-keepAlive.C:
			if err := sw.write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
		case <-changes:
			var cur *store.Job
			var gone bool
			cur, gone, changes = watcher.latest()
			if gone {
				_ = sw.event(liveEventEnd, count, &LiveEvent{JobID: id, EventID: eventID, Deleted: true,
					Progress: []LiveProgress{}, Steps: []LiveStep{}})
				return
			}
			if cur.UpdatedAt.Equal(updated) && len(cur.Progress) == count && cur.Status == status && cur.EventID == eventID {
				continue
			}
			if !send(cur) {
				return
			}
		}
	}
}
