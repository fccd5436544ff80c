package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

const (
	testToken    = "test-token-0123456789"
	testPassword = "test-password-9876"
	testRetries  = 3
	// testViewerPassword is VIEWER_PASSWORD where envOptions.viewer is set.
	testViewerPassword = "test-viewer-5555"
)

// failSwitch fails process-insights with handlers.DoNotRetry while set (for
// the jobs it names, or all when the set is empty), with a plain (retried)
// error instead when retryable is set, and can block a step until its
// context ends.
type failSwitch struct {
	on        atomic.Bool
	retryable atomic.Bool
	block     atomic.Bool
	// named: the refusal's message names the job, as real messages do
	// ("job orphan-3 is missing its request").
	named atomic.Bool
	mu    sync.Mutex
	jobs  map[string]bool
}

func (f *failSwitch) set(on bool, jobIDs ...string) {
	f.mu.Lock()
	f.jobs = map[string]bool{}
	for _, j := range jobIDs {
		f.jobs[j] = true
	}
	f.mu.Unlock()
	f.on.Store(on)
}

func (f *failSwitch) hook(ctx context.Context, r *handlers.Attempt, step string) error {
	if step != tasks.StepProcessInsights {
		return nil
	}
	if f.block.Load() {
		<-ctx.Done()
		return ctx.Err()
	}
	if !f.on.Load() {
		return nil
	}
	f.mu.Lock()
	hit := len(f.jobs) == 0 || f.jobs[r.Job.ID]
	f.mu.Unlock()
	if hit && f.retryable.Load() {
		return errors.New("analysis failed: the provider is unavailable")
	}
	if hit && f.named.Load() {
		return handlers.DoNotRetry(fmt.Errorf("job %s: analysis refused: the snapshot's cell data is inconsistent", r.Job.ID))
	}
	if hit {
		return handlers.DoNotRetry(errors.New("analysis refused: the snapshot's cell data is inconsistent"))
	}
	return nil
}

type env struct {
	// breaker is the server's circuit breaker (threshold 2, cool-down 1 h).
	breaker   *flow.Breaker
	t         *testing.T
	redis     asynq.RedisConnOpt
	store     *store.Store
	client    *tasks.Client
	inspector *asynq.Inspector
	registry  *prometheus.Registry
	metrics   *Metrics
	server    *Server
	ts        *httptest.Server
	fail      *failSwitch
	systems   *testenv.Systems
	// maxRetries is the job's budget of the server and the worker.
	maxRetries int
	// bodyRead counts the bytes handlers read of request bodies.
	bodyRead atomic.Int64
}

type envOptions struct {
	worker  bool
	decrypt func(any) (any, error)
	cors    []string
	ready   func(context.Context) error
	store   *store.Store
	// viewer sets VIEWER_PASSWORD (testViewerPassword): a viewer exists.
	viewer bool
	// maxRetries is MAX_RETRIES. 0: testRetries.
	maxRetries int
}

func newEnv(t *testing.T, o envOptions) *env {
	t.Helper()
	e := &env{t: t, redis: testenv.Redis(t), store: o.store, fail: &failSwitch{}, systems: &testenv.Systems{},
		maxRetries: o.maxRetries}
	if e.maxRetries == 0 {
		e.maxRetries = testRetries
	}
	if e.store == nil {
		e.store = testenv.Store(t)
	}
	e.client = tasks.NewClient(e.redis, tasks.ClientConfig{Jobs: e.store})
	e.inspector = asynq.NewInspector(e.redis)
	t.Cleanup(func() { e.client.Close(); e.inspector.Close() })
	e.registry = prometheus.NewRegistry()
	e.metrics = NewMetrics(e.registry)
	rdb := e.redis.MakeRedisClient().(redis.UniversalClient)
	t.Cleanup(func() { rdb.Close() })
	e.breaker = flow.NewBreaker(rdb, flow.BreakerConfig{Name: "test", Failures: 2, Cooldown: time.Hour})
	viewerPassword := ""
	if o.viewer {
		viewerPassword = testViewerPassword
	}
	operator := ops.New(ops.Config{Store: e.store, Inspector: e.inspector, Client: e.client, MaxRetries: e.maxRetries,
		Decrypt: o.decrypt, Logger: testenv.Logger()})
	e.server = New(Config{Store: e.store, Client: e.client, Inspector: e.inspector, RedisConnOpt: e.redis, Breaker: e.breaker,
		APIToken: testToken, AdminPassword: testPassword, ViewerPassword: viewerPassword, CORSOrigins: o.cors,
		Operator: operator, Metrics: e.registry, Ready: o.ready, Logger: testenv.Logger()})
	t.Cleanup(func() { e.server.Close(); operator.Close() })
	h := e.server.Handler()
	e.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cr := &countingReader{r: r.Body}
		r.Body = cr
		defer func() { e.bodyRead.Add(cr.n) }()
		if os.Getenv("TEST_LOG") != "" && r.Method != "GET" {
			t.Logf("request %s %s origin=%q sec-fetch-site=%q", r.Method, r.URL.Path, r.Header.Get("Origin"), r.Header.Get("Sec-Fetch-Site"))
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(e.ts.Close)
	if o.worker {
		e.startWorker()
	}
	return e
}

func (e *env) startWorker() {
	t := e.t
	w, err := handlers.NewWorker(e.redis, handlers.WorkerConfig{
		Runner: handlers.RunnerConfig{Store: e.store, MaxRetries: e.maxRetries,
			Backoff: []time.Duration{time.Second}, TransientDelay: time.Second, RateLimitDelay: time.Second,
			Observer: e.metrics, Hook: e.fail.hook},
		Insights:      handlers.InsightsConfig{Engine: testenv.Engine{}},
		Completed:     handlers.CompletedConfig{Systems: e.systems, MaxRetries: e.maxRetries},
		Server:        handlers.ServerOptions{Concurrency: 4, ShutdownTimeout: 3 * time.Second},
		Logger:        testenv.Logger(),
		AsynqLogLevel: asynq.FatalLevel,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
}

type countingReader struct {
	r io.ReadCloser
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

type auth int

const (
	authNone auth = iota
	authBearer
	authBasic
	// authViewer is HTTP Basic viewer:testViewerPassword.
	authViewer
)

type resp struct {
	code   int
	header http.Header
	body   []byte
}

func (r *resp) json(t *testing.T) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response is not a JSON object (%d): %v\n%s", r.code, err, r.body)
	}
	return m
}

func (e *env) do(method, path string, body any, a auth, hdr ...string) *resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	case io.Reader:
		rd = b
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.ts.URL+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	switch a {
	case authBearer:
		req.Header.Set("Authorization", "Bearer "+testToken)
	case authBasic:
		req.SetBasicAuth(AdminUser, testPassword)
	case authViewer:
		req.SetBasicAuth(ViewerUser, testViewerPassword)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	if body != nil && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return &resp{code: res.StatusCode, header: res.Header, body: b}
}

func (e *env) expect(r *resp, code int) {
	e.t.Helper()
	if r.code != code {
		e.t.Fatalf("status %d, want %d: %s", r.code, code, r.body)
	}
}

// expectError checks an error answer: its code, JSON {error, field}.
func (e *env) expectError(r *resp, code int, field string) map[string]any {
	e.t.Helper()
	e.expect(r, code)
	m := r.json(e.t)
	if s, _ := m["error"].(string); s == "" {
		e.t.Fatalf("error answer without an error message: %s", r.body)
	}
	if got, _ := m["field"].(string); got != field {
		e.t.Fatalf("field %q, want %q: %s", got, field, r.body)
	}
	return m
}

func eventBody(jobID string, extra ...any) map[string]any {
	data := map[string]any{"systemId": "sys-1", "analysisData": testenv.Snapshot()}
	if jobID != "" {
		data["jobId"] = jobID
	}
	b := map[string]any{"eventName": tasks.EventGenerateInsights, "eventData": data}
	for i := 0; i+1 < len(extra); i += 2 {
		b[extra[i].(string)] = extra[i+1]
	}
	return b
}

// send posts an event and returns the answer's fields.
func (e *env) send(jobID string, extra ...any) map[string]any {
	e.t.Helper()
	r := e.do("POST", "/api/events", eventBody(jobID, extra...), authBearer)
	e.expect(r, http.StatusAccepted)
	return r.json(e.t)
}

func (e *env) job(jobID string) *store.Job {
	e.t.Helper()
	return testenv.Job(e.t, e.store, jobID)
}

func (e *env) waitStatus(jobID, status string, within time.Duration) *store.Job {
	e.t.Helper()
	return testenv.WaitJob(e.t, e.store, jobID, within, status, func(j *store.Job) bool { return j.Status == status })
}

// waitDone waits for a job's run to end completed, follow-up sent.
func (e *env) waitDone(jobID string) *store.Job {
	e.t.Helper()
	return testenv.WaitJob(e.t, e.store, jobID, 20*time.Second, "done", func(j *store.Job) bool {
		return j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	})
}

func (e *env) waitTask(queue, id string, within time.Duration, state asynq.TaskState) {
	e.t.Helper()
	testenv.WaitTask(e.t, e.inspector, queue, id, within, testenv.InState(state))
}

func (e *env) waitGone(queue, id string, within time.Duration) {
	e.t.Helper()
	testenv.WaitFor(e.t, within, "task "+id+" gone", func() (bool, error) {
		_, err := e.inspector.GetTaskInfo(queue, id)
		return errors.Is(err, asynq.ErrTaskNotFound), nil
	})
}

// proxy forwards TCP connections to target until closed; closing it
// drops every connection, which is how a test takes MongoDB away.
type proxy struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	// hung: bytes are no longer forwarded and new connections go nowhere,
	// like a server that stopped answering.
	hung atomic.Bool
}

// hang stops forwarding without closing anything.
func (p *proxy) hang() { p.hung.Store(true) }

func (p *proxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if p.hung.Load() {
			return // dropped on the floor; the conns are closed at cleanup
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				dst.Close()
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func newProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			p.mu.Unlock()
			if p.hung.Load() {
				continue // accepted, never answered
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, u)
			p.mu.Unlock()
			go p.pipe(u, c)
			go p.pipe(c, u)
		}
	}()
	t.Cleanup(p.close)
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// proxiedStore opens a store on a fresh database of its own, reached
// through a proxy the test can close or hang to take MongoDB away. The
// store keeps its own default deadline (store.DefaultOpTimeout).
func proxiedStore(t *testing.T) (*store.Store, *proxy) {
	t.Helper()
	u, err := url.Parse(testenv.MongoURI(t))
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, u.Host)
	u.Host = p.addr()
	st, err := store.Open(context.Background(), store.Config{URI: u.String(), Database: testenv.DBName(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close(context.Background()) })
	return st, p
}

func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}
