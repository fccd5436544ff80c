package web

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// sseMsg is one message of an event stream: an event, or a comment.
type sseMsg struct {
	name, id, data string
	comment        string
}

// liveStream reads GET /jobs/{jobId}/live as a browser's EventSource
// would.
type liveStream struct {
	t      *testing.T
	res    *http.Response
	cancel context.CancelFunc
	msgs   chan sseMsg
	// end receives how the body ended: nil for a clean end, an error for
	// a cut one (the chunked body not terminated).
	end   chan error
	ended bool
}

// openLive opens jobID's live stream on server base (the env's own when
// empty), with header pairs hdr, and checks the stream's headers.
func (e *env) openLive(base, jobID string, hdr ...string) *liveStream {
	e.t.Helper()
	return e.openLiveAs(base, jobID, authBasic, hdr...)
}

// openLiveAs is openLive as user a (authBasic, authViewer).
func (e *env) openLiveAs(base, jobID string, a auth, hdr ...string) *liveStream {
	e.t.Helper()
	if base == "" {
		base = e.ts.URL
	}
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, "GET", base+"/jobs/"+jobID+"/live", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	if a == authViewer {
		req.SetBasicAuth(ViewerUser, testViewerPassword)
	} else {
		req.SetBasicAuth(AdminUser, testPassword)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "since" {
			req.URL.RawQuery = "since=" + hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatalf("open live stream: %v", err)
	}
	s := &liveStream{t: e.t, res: res, cancel: cancel, msgs: make(chan sseMsg, 100), end: make(chan error, 1)}
	e.t.Cleanup(s.close)
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(res.Body)
		e.t.Fatalf("live stream: %d %s", res.StatusCode, b)
	}
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"} {
		if got := res.Header.Get(k); got != want {
			e.t.Fatalf("live stream header %s: %q, want %q", k, got, want)
		}
	}
	go s.read()
	return s
}

func (s *liveStream) read() {
	sc := bufio.NewScanner(s.res.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var m sseMsg
	for sc.Scan() {
		line := sc.Text()
		field, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch {
		case line == "":
			if m != (sseMsg{}) {
				s.msgs <- m
			}
			m = sseMsg{}
		case field == "":
			s.msgs <- sseMsg{comment: value}
		case field == "event":
			m.name = value
		case field == "id":
			m.id = value
		case field == "data":
			m.data += value
		}
	}
	s.end <- sc.Err()
	close(s.msgs)
}

func (s *liveStream) close() {
	s.cancel()
	s.res.Body.Close()
}

// next returns the next message within d; false when the stream ended.
func (s *liveStream) next(d time.Duration) (sseMsg, bool) {
	s.t.Helper()
	select {
	case m, ok := <-s.msgs:
		if !ok {
			s.ended = true
		}
		return m, ok
	case <-time.After(d):
		s.t.Fatalf("no message from the live stream within %v", d)
	}
	return sseMsg{}, false
}

// event returns the next event (comments and the retry field skipped)
// within d, decoded.
func (s *liveStream) event(d time.Duration) (sseMsg, *LiveEvent) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		m, ok := s.next(time.Until(deadline))
		if !ok {
			s.t.Fatalf("the live stream ended (%v) where an event was due", <-s.end)
		}
		if m.name == "" {
			continue
		}
		var ev LiveEvent
		if err := json.Unmarshal([]byte(m.data), &ev); err != nil {
			s.t.Fatalf("event %s: data is not a LiveEvent: %v\n%s", m.name, err, m.data)
		}
		return m, &ev
	}
}

// ends checks that the stream ends cleanly within d with no more events.
func (s *liveStream) ends(d time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(d)
	for {
		m, ok := s.next(time.Until(deadline))
		if !ok {
			if err := <-s.end; err != nil {
				s.t.Fatalf("the stream was cut: %v", err)
			}
			return
		}
		if m.name != "" {
			s.t.Fatalf("event %s (id %s) after the last one: %s", m.name, m.id, m.data)
		}
	}
}

// pushProgress appends progress events to jobID's current run through the
// store, as a worker's step does, with more fields to set.
func (e *env) pushProgress(jobID string, set bson.D, evs ...store.ProgressEvent) {
	e.t.Helper()
	if err := e.store.SaveCheckpoint(context.Background(), store.Checkpoint{Job: e.job(jobID), Set: set, Push: evs}); err != nil {
		e.t.Fatalf("push progress to %s: %v", jobID, err)
	}
}

func progress(typ string, data map[string]any) store.ProgressEvent {
	return store.ProgressEvent{Timestamp: time.Now().UTC(), Type: typ, Data: data}
}

func (e *env) waitStreams(n int64) {
	e.t.Helper()
	testenv.WaitFor(e.t, 5*time.Second, "live streams open to be "+itoa(int(n)), func() (bool, error) {
		return e.server.liveStreams.Load() == n, nil
	})
}

// texts are the human lines of an event's progress rows.
func texts(ev *LiveEvent) []string {
	out := []string{}
	for _, p := range ev.Progress {
		out = append(out, p.Text)
	}
	return out
}

// The live stream of a job: its state first, an event for each change
// with only the new progress, Last-Event-ID and ?since= skip what the
// client has, and the last event (end) when a worker has completed the
// run and sent its chain; then the stream ends.
func TestLiveStream(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.server.live = liveTiming{poll: 50 * time.Millisecond, keepAlive: 200 * time.Millisecond, max: time.Minute, retry: 100 * time.Millisecond}
	const jobID = "job-live"
	eventID := e.send(jobID)["eventId"].(string)

	s := e.openLive("", jobID)
	m, ev := s.event(5 * time.Second)
	if m.name != "job" || m.id != "0" || ev.JobID != jobID || ev.EventID != eventID || ev.Status != tasks.StatusQueued || !ev.Live ||
		ev.ProgressCount != 0 || len(ev.Progress) != 0 || len(ev.Steps) != len(tasks.Steps) || ev.Steps[0].Status != "pending" {
		t.Fatalf("first event %s id %s: %s", m.name, m.id, m.data)
	}

	// Two progress events, as process-insights writes them.
	e.pushProgress(jobID, bson.D{{Key: "status", Value: tasks.StatusProcessing}, {Key: "partialInsights", Value: "Cells are bal"}},
		progress("status", map[string]any{"message": "Starting analysis"}),
		progress("tool_call", map[string]any{"toolName": "request_bms_data"}))
	m, ev = s.event(5 * time.Second)
	want := []string{"Starting analysis", "🔧 Fetching BMS historical data..."}
	if m.name != "job" || m.id != "2" || ev.Status != tasks.StatusProcessing || ev.ProgressFrom != 0 || ev.ProgressCount != 2 ||
		strings.Join(texts(ev), "|") != strings.Join(want, "|") || ev.Progress[1].Index != 1 || ev.Progress[1].Type != "tool_call" ||
		ev.PartialInsightsLength != 13 {
		t.Fatalf("after two progress events: %s id %s: %s", m.name, m.id, m.data)
	}
	// A third: only it is sent.
	e.pushProgress(jobID, nil, progress("iteration", map[string]any{"iteration": 2, "maxIterations": 10}))
	m, ev = s.event(5 * time.Second)
	if m.id != "3" || ev.ProgressFrom != 2 || len(ev.Progress) != 1 || ev.Progress[0].Index != 2 || ev.Progress[0].Text != "📈 Analysis iteration 2/10" {
		t.Fatalf("after the third progress event: id %s: %s", m.id, m.data)
	}

	// A reconnect with Last-Event-ID gets only what it has not seen; the
	// header wins over ?since= (the page's count when rendered).
	for _, c := range []struct {
		hdr  []string
		from int
	}{
		{[]string{"Last-Event-ID", "2"}, 2},
		{[]string{"Last-Event-ID", "1", "since", "3"}, 1},
		{[]string{"since", "3"}, 3},
		{[]string{"Last-Event-ID", "99"}, 0}, // a count of another run: all of this one
	} {
		r := e.openLive("", jobID, c.hdr...)
		m, ev := r.event(5 * time.Second)
		if m.name != "job" || m.id != "3" || ev.ProgressFrom != c.from || len(ev.Progress) != 3-c.from {
			t.Fatalf("reconnect with %v: id %s: %s", c.hdr, m.id, m.data)
		}
		r.close()
	}
	// The reconnects' streams stopped when their clients went away.
	e.waitStreams(1)
	e.expectError(e.do("GET", "/jobs/"+jobID+"/live", nil, authBasic, "Last-Event-ID", "x"), http.StatusUnprocessableEntity, "Last-Event-ID")
	e.expectError(e.do("GET", "/jobs/nope/live", nil, authBasic), http.StatusNotFound, "")
	e.expect(e.do("GET", "/jobs/"+jobID+"/live", nil, authNone), http.StatusUnauthorized)

	// Nothing changes: the stream reads the job (4 times between two
	// keep-alives) and sends nothing but keep-alives.
	for keepAlives := 0; keepAlives < 2; {
		m, ok := s.next(5 * time.Second)
		if !ok || m.comment != "keep-alive" {
			t.Fatalf("while nothing changes: %+v (stream open: %v), want keep-alives only", m, ok)
		}
		keepAlives++
	}

	// A worker runs the job: events while it runs, then the last one.
	e.startWorker()
	last := ev
	for deadline := time.Now().Add(20 * time.Second); ; {
		m, ev := s.event(time.Until(deadline))
		if ev.ProgressFrom != ev.ProgressCount-len(ev.Progress) || ev.EventID != eventID {
			t.Fatalf("event %s id %s: progress from %d, %d rows of %d (run %s)", m.name, m.id, ev.ProgressFrom, len(ev.Progress), ev.ProgressCount, ev.EventID)
		}
		if last != nil && ev.ProgressFrom != last.ProgressCount {
			t.Fatalf("event id %s resends or skips progress: from %d after a count of %d", m.id, ev.ProgressFrom, last.ProgressCount)
		}
		if last != nil && ev.UpdatedAt.Equal(last.UpdatedAt) && ev.ProgressCount == last.ProgressCount && ev.Status == last.Status {
			t.Fatalf("event id %s tells of no change: %s", m.id, m.data)
		}
		last = ev
		if m.name == "end" {
			if m.id != itoa(ev.ProgressCount) {
				t.Fatalf("end event id %s, progress count %d", m.id, ev.ProgressCount)
			}
			break
		}
		if m.name != "job" || !ev.Live {
			t.Fatalf("event %s before the end, live %v: %s", m.name, ev.Live, m.data)
		}
	}
	if last.Live || last.Status != tasks.StatusCompleted || last.ProgressCount <= 3 || last.PartialInsightsLength != 0 {
		t.Fatalf("last event: %+v", last)
	}
	for _, st := range last.Steps {
		if st.Status != store.StepCompleted || st.Runs != 1 {
			t.Fatalf("last event's steps %+v, want each completed once (send-completion too: the chain is sent)", last.Steps)
		}
	}
	s.ends(5 * time.Second)
	e.waitStreams(0)

	// A finished job's stream is its last event alone.
	r := e.openLive("", jobID, "Last-Event-ID", itoa(last.ProgressCount))
	if m, ev := r.event(5 * time.Second); m.name != "end" || len(ev.Progress) != 0 || ev.Status != tasks.StatusCompleted {
		t.Fatalf("finished job's stream: %s %s", m.name, m.data)
	}
	r.ends(5 * time.Second)
}

// A stream outlives the server's WriteTimeout (which would cut it) and
// ReadTimeout, sends keep-alive comments, and ends, without a last event,
// at its bound (the browser reconnects); a job deleted meanwhile ends it
// with a last event saying so.
func TestLiveStreamTimeouts(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.server.live = liveTiming{poll: 50 * time.Millisecond, keepAlive: 100 * time.Millisecond, max: 2 * time.Second, retry: 100 * time.Millisecond}
	ts := httptest.NewUnstartedServer(e.server.Handler())
	ts.Config.WriteTimeout = 500 * time.Millisecond
	ts.Config.ReadTimeout = 500 * time.Millisecond
	ts.Start()
	t.Cleanup(ts.Close)
	const jobID = "job-live-bound"
	e.send(jobID)

	start := time.Now()
	s := e.openLive(ts.URL, jobID)
	if m, _ := s.event(5 * time.Second); m.name != "job" {
		t.Fatalf("first event %s", m.name)
	}
	// Past both timeouts: keep-alives, and an event for new progress.
	pushed, late, keepAlivesAfter := false, false, 0
	for {
		m, ok := s.next(5 * time.Second)
		if !ok {
			break
		}
		switch {
		case m.comment == "keep-alive":
			if late {
				keepAlivesAfter++
			}
			if !pushed && time.Since(start) > time.Second {
				e.pushProgress(jobID, nil, progress("status", map[string]any{"message": "late"}))
				pushed = true
			}
		case m.name == "job":
			if !pushed || late || m.id != "1" {
				t.Fatalf("event id %s (pushed: %v, seen: %v): %s", m.id, pushed, late, m.data)
			}
			late = true
		case m.name != "":
			t.Fatalf("event %s before the bound: %s", m.name, m.data)
		}
	}
	if err := <-s.end; err != nil {
		t.Fatalf("the stream was cut after %v: %v", time.Since(start), err)
	}
	if took := time.Since(start); took < 2*time.Second || !late || keepAlivesAfter < 3 {
		t.Fatalf("stream ended after %v, the late event seen: %v, %d keep-alives after it; want the bound of 2s, the event and keep-alives after it",
			took, late, keepAlivesAfter)
	}

	// Deleted while watched: the last event says so.
	s = e.openLive(ts.URL, jobID, "Last-Event-ID", "1")
	if m, _ := s.event(5 * time.Second); m.name != "job" {
		t.Fatalf("first event %s", m.name)
	}
	if _, err := e.store.Database().Collection("insights-jobs").DeleteOne(context.Background(), bson.D{{Key: "id", Value: jobID}}); err != nil {
		t.Fatal(err)
	}
	if m, ev := s.event(5 * time.Second); m.name != "end" || !ev.Deleted || ev.Live {
		t.Fatalf("after the delete: %s %s", m.name, m.data)
	}
	s.ends(5 * time.Second)
}

// The chain: GET /api/jobs/{jobId} carries the follow-up of the run
// (followUpTask) and the job page shows it (Chain): not sent yet while the
// run is live, then the follow-up's state once sent, gone once Redis has
// lost it. A live job's page loads live.js, a finished one no script.
func TestChain(t *testing.T) {
	e := newEnv(t, envOptions{})
	const jobID = "job-chain"
	eventID := e.send(jobID)["eventId"].(string)
	taskID := tasks.FollowUpTaskIDPrefix + eventID

	view := func() (map[string]any, map[string]any) {
		t.Helper()
		r := e.do("GET", "/api/jobs/"+jobID, nil, authBearer)
		e.expect(r, http.StatusOK)
		j := r.json(t)
		for _, k := range []string{"jobId", "status", "steps", "progress", "eventId", "attempts", "systemId", "analysisData"} {
			if _, ok := j[k]; !ok {
				t.Fatalf("job view lacks %s: %s", k, r.body)
			}
		}
		f, _ := j["followUpTask"].(map[string]any)
		if f == nil || f["taskId"] != taskID || f["queue"] != tasks.QueueLow || f["eventName"] != tasks.EventInsightsCompleted {
			t.Fatalf("followUpTask %v, want task %s on queue low", j["followUpTask"], taskID)
		}
		return j, f
	}
	page := func() string {
		t.Helper()
		r := e.do("GET", "/jobs/"+jobID, nil, authBasic)
		e.expect(r, http.StatusOK)
		return string(r.body)
	}
	chainState := regexp.MustCompile(`id="chain-state" data-state="([a-z]+)"><span class="badge[^"]*">([^<]+)</span>`)

	// Queued: not sent yet; the page follows the stream.
	if _, f := view(); f["state"] != ops.FollowUpUnsent || f["completedAt"] != nil {
		t.Fatalf("queued job's followUpTask %v, want unsent", f)
	}
	r := e.do("GET", "/jobs/"+jobID, nil, authBasic)
	body := string(r.body)
	if m := chainState.FindStringSubmatch(body); m == nil || m[1] != "unsent" || m[2] != "not sent yet" || strings.Contains(body, `id="chain-link"`) {
		t.Fatalf("queued job's Chain: %v\n%s", m, body)
	}
	for _, want := range []string{`<section class="chain" id="chain">`, `<noscript><meta http-equiv="refresh" content="2"></noscript>`,
		`<script src="/assets/live.js" defer></script>`, `data-src="/jobs/` + jobID + `/live?since=0"`, `data-event-id="` + eventID + `"`, "updates live"} {
		if !strings.Contains(body, want) {
			t.Fatalf("live job page lacks %s:\n%s", want, body)
		}
	}
	if csp := r.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe") {
		t.Fatalf("live job page's policy %q: want script-src 'self' and nothing unsafe", csp)
	}
	if strings.Contains(body, "<script>") || regexp.MustCompile(`<script[^>]*>[^<]`).MatchString(body) {
		t.Fatalf("inline script on the page")
	}
	r = e.do("GET", "/assets/live.js", nil, authBasic)
	e.expect(r, http.StatusOK)
	if ct := r.header.Get("Content-Type"); !strings.Contains(ct, "javascript") || !strings.Contains(string(r.body), "EventSource") {
		t.Fatalf("live.js served as %q: %.200s", ct, r.body)
	}

	// Completed, its follow-up handled.
	e.startWorker()
	e.waitDone(jobID)
	e.waitTask(tasks.QueueLow, taskID, 20*time.Second, asynq.TaskStateCompleted)
	j, f := view()
	if f["state"] != "completed" || f["completedAt"] == nil || f["enqueuedAt"] == nil || f["retried"] != 0.0 || f["maxRetry"] != float64(testRetries) || f["lastError"] != nil {
		t.Fatalf("completed job's followUpTask %v", f)
	}
	if fu, _ := j["followUp"].(map[string]any); fu["eventId"] != taskID {
		t.Fatalf("the job's own followUp %v is kept beside followUpTask", j["followUp"])
	}
	r = e.do("GET", "/jobs/"+jobID, nil, authBasic)
	body = string(r.body)
	if m := chainState.FindStringSubmatch(body); m == nil || m[1] != "completed" || m[2] != "completed" {
		t.Fatalf("completed job's Chain: %v\n%s", m, body)
	}
	for _, want := range []string{`<code id="chain-task">` + taskID + `</code>`, `id="chain-link" href="/monitoring/queues/low/tasks/` + taskID + `"`,
		`id="chain-completed"`, `id="chain-retried">0 / 3</dd>`} {
		if !strings.Contains(body, want) {
			t.Fatalf("completed job's page lacks %s:\n%s", want, body)
		}
	}
	if strings.Contains(body, "live.js") || strings.Contains(body, `http-equiv="refresh"`) || strings.Contains(body, `id="live"`) {
		t.Fatalf("a finished job's page still follows the job")
	}
	if csp := r.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'none'") {
		t.Fatalf("finished job page's policy %q: want script-src 'none'", csp)
	}

	// Redis lost it (or its retention passed).
	if err := e.inspector.DeleteTask(tasks.QueueLow, taskID); err != nil {
		t.Fatal(err)
	}
	if _, f := view(); f["state"] != ops.FollowUpGone {
		t.Fatalf("followUpTask %v, want gone", f)
	}
	if m := chainState.FindStringSubmatch(page()); m == nil || m[1] != "gone" || m[2] != "gone from Redis" {
		t.Fatalf("Chain after the task was deleted: %v", m)
	}

	// Without Redis the job view is the job alone; the page says why.
	bare := New(Config{Store: e.store, APIToken: testToken, AdminPassword: testPassword, Logger: testenv.Logger()})
	t.Cleanup(func() { bare.Close() })
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/api/jobs/"+jobID, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	bare.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK || strings.Contains(rec.Body.String(), "followUpTask") {
		t.Fatalf("job view without Redis: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	req = httptest.NewRequest("GET", "/jobs/"+jobID, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	bare.Handler().ServeHTTP(rec, req)
	if !strings.Contains(rec.Body.String(), "Redis is not configured") {
		t.Fatalf("job page without Redis does not say why the chain is unknown:\n%s", rec.Body)
	}
}

// On shutdown the streams end at once (http.Server.Shutdown would wait for
// them) and new ones are refused; the browsers reconnect elsewhere.
func TestLiveStreamShutdown(t *testing.T) {
	e := newEnv(t, envOptions{})
	e.server.live = liveTiming{poll: 50 * time.Millisecond, keepAlive: time.Minute, max: time.Minute, retry: 100 * time.Millisecond}
	srv := httptest.NewUnstartedServer(e.server.Handler())
	srv.Config.RegisterOnShutdown(e.server.EndStreams) // as `insights serve` does
	srv.Start()
	const jobID = "job-live-shutdown"
	e.send(jobID)

	s := e.openLive(srv.URL, jobID)
	if m, _ := s.event(5 * time.Second); m.name != "job" {
		t.Fatalf("first event %s", m.name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := srv.Config.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a stream open: %v after %v", err, time.Since(start))
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("shutdown took %v with a stream open", took)
	}
	s.ends(5 * time.Second) // no end event: the job is still live
	e.waitStreams(0)
	e.expectError(e.do("GET", "/jobs/"+jobID+"/live", nil, authBasic), http.StatusServiceUnavailable, "")
}

// Streams of one job share one watcher: 30 pages following a job cost the
// store one read a poll, not 30, and each page still gets each change;
// once the pages leave, no watcher is left reading.
func TestLiveStreamsShareOneRead(t *testing.T) {
	e := newEnv(t, envOptions{})
	const poll = 50 * time.Millisecond
	e.server.live = liveTiming{poll: poll, keepAlive: time.Minute, max: time.Minute, retry: 100 * time.Millisecond}
	e.server.liveHub = newLiveHub(testenv.Logger(), -1, -1)
	const jobID, other = "job-live-shared", "job-live-other"
	e.send(jobID)
	e.send(other)
	const n = 30
	var streams []*liveStream
	for range n {
		s := e.openLive("", jobID)
		if m, _ := s.event(5 * time.Second); m.name != "job" {
			t.Fatalf("first event %s", m.name)
		}
		streams = append(streams, s)
	}
	o := e.openLive("", other)
	o.event(5 * time.Second)
	e.waitStreams(n + 1)

	e.pushProgress(jobID, nil, progress("status", map[string]any{"message": "shared"}))
	for i, s := range streams {
		if m, ev := s.event(5 * time.Second); m.name != "job" || ev.ProgressCount != 1 || ev.Progress[0].Text != "shared" {
			t.Fatalf("stream %d: %s %s", i, m.name, m.data)
		}
	}
	start, before := time.Now(), e.server.liveHub.storeReads()
	// 20 reads: two followed jobs, one read a poll each, take about ten
	// polls; a read per stream (31) would take less than one.
	const reads = 20
	testenv.WaitFor(t, 10*time.Second, "20 store reads", func() (bool, error) {
		return e.server.liveHub.storeReads()-before >= reads, nil
	})
	if took, want := time.Since(start), (reads/2-2)*poll; took < want {
		t.Fatalf("%d store reads in %v with %d streams on one job and 1 on another: more than one read a poll per job (want ≥ %v)",
			reads, took, n+1, want)
	}
	for _, s := range streams {
		s.close()
	}
	o.close()
	e.waitStreams(0)
	// The last page gone, the watchers stop reading.
	testenv.WaitFor(t, 5*time.Second, "no watcher left", func() (bool, error) {
		e.server.liveHub.mu.Lock()
		defer e.server.liveHub.mu.Unlock()
		return len(e.server.liveHub.watchers) == 0, nil
	})
}

// A user may hold LiveStreamsPerUser streams and the server LiveStreamsMax;
// one more is answered 429 (JSON, Retry-After), and a closed stream frees
// its place.
func TestLiveStreamCaps(t *testing.T) {
	e := newEnv(t, envOptions{viewer: true})
	e.server.live = liveTiming{poll: 50 * time.Millisecond, keepAlive: time.Minute, max: time.Minute, retry: 100 * time.Millisecond}
	e.server.liveHub = newLiveHub(testenv.Logger(), 2, 3)
	const jobID = "job-live-caps"
	e.send(jobID)
	a1, a2 := e.openLive("", jobID), e.openLive("", jobID)
	e.waitStreams(2)
	r := e.do("GET", "/jobs/"+jobID+"/live", nil, authBasic)
	e.expectError(r, http.StatusTooManyRequests, "")
	if !strings.Contains(string(r.body), "user admin") || r.header.Get("Retry-After") == "" {
		t.Fatalf("admin's third stream: %s (Retry-After %q)", r.body, r.header.Get("Retry-After"))
	}
	// Another user has places of its own, up to the server's cap.
	v := e.openLiveAs("", jobID, authViewer)
	e.waitStreams(3)
	r = e.do("GET", "/jobs/"+jobID+"/live", nil, authViewer)
	e.expectError(r, http.StatusTooManyRequests, "")
	if !strings.Contains(string(r.body), "on this server") {
		t.Fatalf("fourth stream on the server: %s", r.body)
	}
	a1.close()
	e.waitStreams(2)
	a3 := e.openLive("", jobID)
	e.waitStreams(3)
	for _, s := range []*liveStream{a2, a3, v} {
		s.close()
	}
	e.waitStreams(0)
}
