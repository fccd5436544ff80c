// Package web is the HTTP side of the service (docs/DESIGN.md section 8): the
// REST API for events and jobs, the Netlify-compatible aliases, the asynqmon
// dashboard at /monitoring/, the job pages, health, readiness and
// Prometheus metrics, all behind one authentication check.
package web

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// Registry is where metrics are registered and what /metrics serves; a
// *prometheus.Registry is one.
type Registry interface {
	prometheus.Registerer
	prometheus.Gatherer
}

// Config holds the server's dependencies. Each field says what happens
// when it is left unset.
type Config struct {
	// Store is the MongoDB store: job documents for the API and the pages.
	// Nil: every route that reads or writes jobs answers 503.
	Store *store.Store
	// Client sends events (POST /api/events and its alias) and re-enqueues
	// a failed job whose task Redis no longer has (ops.Config.Client). It
	// must be built with Store as its JobStore so that the job is recorded
	// before its task is enqueued. Nil: those routes answer 503.
	Client *tasks.Client
	// Inspector reads and changes asynq tasks (event state, retry, cancel,
	// queue metrics). Nil: those routes answer 503 and /metrics has no
	// queue gauges.
	Inspector *asynq.Inspector
	// RedisConnOpt is the Redis of asynqmon. Nil: /monitoring/ answers 503.
	RedisConnOpt asynq.RedisConnOpt
	// APIToken is accepted as "Authorization: Bearer <token>": one token,
	// or several separated by commas, each valid (a key rotating). Empty:
	// no bearer token is accepted.
	APIToken string
	// AdminPassword is the HTTP Basic password of user "admin". Empty: no
	// Basic credentials are accepted. With both credentials empty every
	// route but /healthz and /readyz answers 401.
	AdminPassword string
	// ViewerPassword is VIEWER_PASSWORD, the HTTP Basic password of user
	// "viewer", who may only read: GET and HEAD on every route (the API,
	// the pages, /metrics, asynqmon in its read-only mode); anything else
	// is 403. Empty: there is no viewer.
	ViewerPassword string
	// CORSOrigins are the browser origins allowed to call /api/ and the
	// Netlify aliases ("*" allows any). Empty: no CORS headers at all.
	CORSOrigins []string
	// Operator runs the event operations (status, retry, cancel, re-runs,
	// bulk actions) and builds the job as the API and the pages show it
	// (its MaxRetries is the maxRetry reported, its Decrypt opens stored
	// encrypted values). Build it on Store, Inspector and Client; it stays
	// the caller's to close. Nil: one on Store, Inspector and Client alone
	// (a retry budget of 0, values shown as stored), closed by Close.
	Operator *ops.Operator
	// Metrics is the registry /metrics serves; the queue collector (tasks
	// per queue and state, dead-lettered tasks) and the HTTP request
	// counter are registered on it. Pass the registry given to NewMetrics
	// so the worker's step and job metrics are served too. Nil: a new
	// registry with the Go and process collectors.
	Metrics Registry
	// Breaker is the model provider's circuit breaker (GET /api/breaker,
	// POST /api/breaker/reset). Nil: those routes answer 503.
	Breaker *flow.Breaker
	// Provider is INSIGHTS_PROVIDER, for the job page's re-run form: it
	// says whether an edited customPrompt is used. Empty: unknown.
	Provider string
	// Ready reports readiness for /readyz. Nil: MongoDB answers a ping
	// (Store) and Redis answers (Inspector).
	Ready func(ctx context.Context) error
	// LiveStreamsPerUser and LiveStreamsMax cap the job pages' open live
	// streams (GET /jobs/{jobId}/live) of one user (admin, viewer, the API
	// token) and of the whole server; a stream beyond is answered 429.
	// 0: DefaultLiveStreamsPerUser, DefaultLiveStreamsMax; < 0: no cap.
	LiveStreamsPerUser int
	LiveStreamsMax     int
	// Logger. Nil: slog.Default().
	Logger *slog.Logger
}

// Server is the HTTP server's handler set. It is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	mux     *http.ServeMux
	handler http.Handler
	monitor *asynqmon.HTTPHandler
	// monitorRO is asynqmon in read-only mode, served to the viewer: its
	// UI hides the buttons and its API refuses changes.
	monitorRO *asynqmon.HTTPHandler
	csrfKey   []byte
	requests  *prometheus.CounterVec
	pages     *pageTemplates
	// ops runs the event operations and builds the job view; web only
	// maps them to routes. ownOps: New built it, Close closes it.
	ops     *ops.Operator
	ownOps  bool
	cors    map[string]bool
	corsAny bool
	// live paces the job pages' live streams; liveStreams counts the
	// open ones.
	live        liveTiming
	liveStreams atomic.Int64
	// liveHub shares one watcher per followed job among its streams and
	// caps the open streams.
	liveHub *liveHub
	// streamsEnd is closed by EndStreams.
	streamsEnd     chan struct{}
	endStreamsOnce sync.Once
}

// maxBodyBytes is the largest POST /api/events body (500 KB).
const maxBodyBytes = tasks.MaxPayloadBytes

// sendTimeout bounds a send so that an unreachable MongoDB gives a 503
// well within 15 s.
const sendTimeout = 12 * time.Second

// New builds the server from cfg.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, log: cfg.Logger, cors: map[string]bool{}, live: defaultLiveTiming,
		streamsEnd: make(chan struct{})}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.liveHub = newLiveHub(s.log, cfg.LiveStreamsPerUser, cfg.LiveStreamsMax)
	if s.ops = cfg.Operator; s.ops == nil {
		s.ops = ops.New(ops.Config{Store: cfg.Store, Inspector: cfg.Inspector, Client: cfg.Client, Logger: s.log})
		s.ownOps = true
	}
	for _, o := range cfg.CORSOrigins {
		o = strings.TrimRight(strings.TrimSpace(o), "/")
		switch o {
		case "":
		case "*":
			s.corsAny = true
		default:
			s.cors[o] = true
		}
	}
	s.csrfKey = make([]byte, 32)
	_, _ = rand.Read(s.csrfKey)
	if s.cfg.Metrics == nil {
		reg := prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
		s.cfg.Metrics = reg
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "insights_http_requests_total",
		Help: "HTTP requests answered, by route pattern and status code.",
	}, []string{"route", "code"})
	registerOrReuse(s.cfg.Metrics, &s.requests)
	if cfg.Inspector != nil {
		if err := s.cfg.Metrics.Register(&queueCollector{inspector: cfg.Inspector, log: s.log}); err != nil {
			s.log.Warn("queue metrics not registered", "err", err)
		}
	}
	if cfg.Breaker != nil {
		if err := s.cfg.Metrics.Register(&breakerCollector{breaker: cfg.Breaker, log: s.log}); err != nil {
			s.log.Warn("breaker metrics not registered", "err", err)
		}
	}
	s.pages = mustParsePages()
	if cfg.RedisConnOpt != nil {
		s.monitor = newMonitor(cfg.RedisConnOpt, false)
		if cfg.ViewerPassword != "" {
			s.monitorRO = newMonitor(cfg.RedisConnOpt, true)
		}
	}
	s.routes()
	return s
}

// registerOrReuse registers *c on reg, or takes the collector already
// registered under the same description (a second Server on one registry).
func registerOrReuse(reg prometheus.Registerer, c **prometheus.CounterVec) {
	if err := reg.Register(*c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				*c = existing
			}
		}
	}
}

// Handler is the http.Handler of every route.
func (s *Server) Handler() http.Handler { return s.handler }

// ResumeBulk finishes, now and then every interval until ctx ends, the bulk
// actions a stopped or dead process left unfinished (run it in the API
// process).
func (s *Server) ResumeBulk(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if n, err := s.ops.ResumeBulk(ctx); err != nil {
			s.log.Warn("bulk actions not resumed", "err", err)
		} else if n > 0 {
			s.log.Info("bulk actions resumed", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// EndStreams ends the job pages' live streams and refuses new ones (503),
// since each holds its connection open: http.Server.Shutdown would wait
// for them. Register it with http.Server.RegisterOnShutdown; the browsers
// reconnect, to the next server.
func (s *Server) EndStreams() {
	s.endStreamsOnce.Do(func() { close(s.streamsEnd) })
}

func newMonitor(redis asynq.RedisConnOpt, readOnly bool) *asynqmon.HTTPHandler {
	return asynqmon.New(asynqmon.Options{
		RootPath:         monitorRoot,
		RedisConnOpt:     redis,
		PayloadFormatter: asynqmon.PayloadFormatterFunc(FormatPayload),
		ResultFormatter:  asynqmon.ResultFormatterFunc(FormatResult),
		ReadOnly:         readOnly,
	})
}

// Close releases asynqmon's Redis connections, and stops the bulk actions
// under way (they resume later) of the operator New built. The
// dependencies in Config, Operator among them, are the caller's to close.
func (s *Server) Close() error {
	if s.ownOps {
		s.ops.Close()
	}
	var errs []error
	for _, m := range []*asynqmon.HTTPHandler{s.monitor, s.monitorRO} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

const monitorRoot = "/monitoring"

func (s *Server) routes() {
	mux := http.NewServeMux()
	s.mux = mux

	// Open routes.
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)

	// API.
	mux.Handle("POST /api/events", s.auth(http.HandlerFunc(s.postEvent)))
	mux.Handle("GET /api/events/{eventId}", s.auth(eventRoute(s, s.ops.Status)))
	mux.Handle("POST /api/events/{eventId}/retry", s.auth(http.HandlerFunc(s.retryEvent)))
	mux.Handle("DELETE /api/events/{eventId}", s.auth(http.HandlerFunc(s.cancelEvent)))
	mux.Handle("GET /api/jobs/{jobId}", s.auth(http.HandlerFunc(s.getJob)))
	mux.Handle("GET /api/jobs", s.auth(http.HandlerFunc(s.listJobs)))
	mux.Handle("GET /api/failures", s.auth(http.HandlerFunc(s.failures)))
	mux.Handle("POST /api/jobs/bulk", s.auth(http.HandlerFunc(s.bulk)))
	mux.Handle("GET /api/jobs/bulk", s.auth(http.HandlerFunc(s.listBulk)))
	mux.Handle("GET /api/jobs/bulk/{bulkId}", s.auth(http.HandlerFunc(s.getBulk)))
	mux.Handle("POST /api/jobs/{jobId}/rerun", s.auth(http.HandlerFunc(s.rerun)))
	mux.Handle("GET /api/breaker", s.auth(http.HandlerFunc(s.breaker)))
	mux.Handle("POST /api/breaker/reset", s.auth(http.HandlerFunc(s.breakerReset)))
	mux.Handle("GET /api/audit", s.auth(http.HandlerFunc(s.listAudit)))
	mux.Handle("/api/", s.auth(http.HandlerFunc(s.apiNotFound)))

	// Netlify Async Workloads aliases.
	mux.Handle("POST "+netlifyBase+"/send", s.auth(http.HandlerFunc(s.postNetlifySend)))
	mux.Handle("POST "+RouterPath, s.auth(http.HandlerFunc(s.router)))
	mux.Handle("GET "+netlifyBase+"/events/{eventId}", s.auth(eventRoute(s, s.ops.Status)))
	mux.Handle(netlifyBase+"/", s.auth(http.HandlerFunc(s.apiNotFound)))
	// The BMS app's own status poll, in its shape.
	mux.Handle("GET "+StatusPathBMS, s.auth(http.HandlerFunc(s.bmsStatusRoute)))
	mux.Handle("POST "+StatusPathBMS, s.auth(http.HandlerFunc(s.bmsStatusRoute)))

	// Metrics.
	mux.Handle("GET /metrics", s.auth(promhttp.HandlerFor(s.cfg.Metrics, promhttp.HandlerOpts{})))

	// Dashboard.
	mux.Handle(monitorRoot+"/", s.auth(s.sameOriginUnsafe(selfContainedMonitor(http.HandlerFunc(s.monitoring)))))
	mux.Handle("GET "+monitorRoot, s.auth(http.RedirectHandler(monitorRoot+"/", http.StatusMovedPermanently)))

	// Pages.
	mux.Handle("GET /{$}", s.auth(http.HandlerFunc(s.indexPage)))
	mux.Handle("GET /jobs/{jobId}", s.auth(http.HandlerFunc(s.jobPage)))
	mux.Handle("GET /audit", s.auth(http.HandlerFunc(s.auditPage)))
	mux.Handle("GET /events/{eventId}", s.auth(http.HandlerFunc(s.eventPage)))
	mux.Handle("GET /favicon.ico", http.HandlerFunc(favicon))
	mux.Handle("GET /signout", http.HandlerFunc(s.signOut))
	mux.Handle("GET /signin", http.HandlerFunc(s.signIn))
	mux.Handle("GET /jobs/{jobId}/live", s.auth(http.HandlerFunc(s.jobLive)))
	mux.Handle("POST /jobs/{jobId}/retry", s.auth(s.sameOriginUnsafe(http.HandlerFunc(s.retryPage))))
	mux.Handle("POST /jobs/{jobId}/cancel", s.auth(s.sameOriginUnsafe(http.HandlerFunc(s.cancelPage))))
	mux.Handle("POST /jobs/{jobId}/rerun", s.auth(s.sameOriginUnsafe(http.HandlerFunc(s.rerunPage))))
	mux.Handle("GET /failures", s.auth(http.HandlerFunc(s.failuresPage)))
	mux.Handle("GET /bulk", s.auth(http.HandlerFunc(s.bulkPage)))
	mux.Handle("POST /bulk", s.auth(s.sameOriginUnsafe(http.HandlerFunc(s.bulkPost))))
	mux.Handle("GET /bulk/{bulkId}", s.auth(http.HandlerFunc(s.bulkOpPage)))
	mux.Handle("GET /assets/", s.auth(assetHandler()))
	mux.Handle("/", s.auth(http.HandlerFunc(s.notFoundPage)))

	s.handler = securityHeaders(s.recoverer(s.count(s.corsMiddleware(mux))))
}

// securityHeaders sets, on every answer (asynqmon's, errors and 401s
// included), the headers that keep another site from framing a page
// (clickjacking asynqmon's Delete or Run-all buttons) and a browser from
// sniffing a JSON or text answer into HTML. A handler may set a fuller
// Content-Security-Policy of its own (the job pages do); each of theirs
// keeps frame-ancestors 'none'.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "frame-ancestors 'none'")
		next.ServeHTTP(w, r)
	})
}

const netlifyBase = "/.netlify/functions/async-workloads"

func (s *Server) monitoring(w http.ResponseWriter, r *http.Request) {
	if s.monitor == nil {
		writeError(w, http.StatusServiceUnavailable, "the dashboard is not configured (no Redis connection)", "")
		return
	}
	if !mayAct(r) {
		// The viewer (auth lets it send only GET and HEAD).
		if s.monitorRO == nil {
			writeError(w, http.StatusForbidden, "the read-only dashboard is not configured", "")
			return
		}
		if r.URL.Path == redisInfoPath {
			s.viewerRedisInfo(w, r)
			return
		}
		s.monitorRO.ServeHTTP(w, r)
		return
	}
	if r.Method == http.MethodPost && strings.Contains(r.URL.Path, "/archived_tasks") {
		if err := s.resetArchivedBudgets(r); err != nil {
			s.writeErr(w, r, err)
			return
		}
	}
	if readOnlyMethod(r.Method) || r.Method == http.MethodOptions {
		s.monitor.ServeHTTP(w, r)
		return
	}
	s.auditedMonitor(w, r)
}

// resetArchivedBudgets: asynqmon's Run (one archived task, a batch, or all
// of a queue's) is an operator starting those runs again, so their jobs get
// their full retry budget back (ops) before asynqmon moves the tasks. This
// reads which tasks from asynqmon's route and body.
func (s *Server) resetArchivedBudgets(r *http.Request) error {
	if s.cfg.Store == nil || s.cfg.Inspector == nil {
		return nil // no jobs to reset: asynqmon works on its own
	}
	rest := strings.TrimPrefix(r.URL.Path, monitorRoot+"/api/queues/")
	queue, action, ok := strings.Cut(rest, "/archived_tasks")
	if !ok || queue == "" {
		return nil
	}
	switch {
	case strings.HasPrefix(action, "/") && strings.HasSuffix(action, ":run"):
		return s.ops.ResetBudgets(r.Context(), strings.TrimSuffix(strings.TrimPrefix(action, "/"), ":run"))
	case action == ":batch_run":
		b, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes))
		if err != nil {
			return errorf(http.StatusBadRequest, "read body: %v", err)
		}
		r.Body = io.NopCloser(bytes.NewReader(b))
		var body struct {
			TaskIDs []string `json:"task_ids"`
		}
		_ = json.Unmarshal(b, &body)
		return s.ops.ResetBudgets(r.Context(), body.TaskIDs...)
	case action == ":run_all":
		return s.ops.ResetArchivedBudgets(r.Context(), queue)
	}
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyz is /readyz: it names the store that is down, never the cause's
// text (addresses, driver messages), which goes to the log.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	check := s.cfg.Ready
	if check == nil {
		check = s.defaultReady
	}
	if err := check(ctx); err != nil {
		if s.cfg.Ready != nil {
			s.log.Warn("readiness: not ready", "err", err)
		}
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": readyReason(err)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// readyReasons are the reasons defaultReady gives, shown as they are.
var readyReasons = map[string]bool{"unreachable": true, "not configured": true, "no answer": true}

// readyReason keeps of a readiness error only which stores it names: the
// checks (defaultReady, the service's app.Ready) prefix each store's error
// with "redis: " or "mongodb: ", one a line as errors.Join writes them.
func readyReason(err error) string {
	var out []string
	for _, line := range strings.Split(err.Error(), "\n") {
		name, why, _ := strings.Cut(line, ": ")
		if name != "redis" && name != "mongodb" {
			continue
		}
		if !readyReasons[why] {
			why = "unreachable"
		}
		out = append(out, name+": "+why)
	}
	if len(out) == 0 {
		return "unavailable"
	}
	return strings.Join(out, "\n")
}

func (s *Server) defaultReady(ctx context.Context) error {
	var errs []error
	if s.cfg.Store == nil {
		errs = append(errs, errors.New("mongodb: not configured"))
	} else if err := s.cfg.Store.Ping(ctx); err != nil {
		s.log.Warn("readiness: MongoDB does not answer", "err", err)
		errs = append(errs, errors.New("mongodb: unreachable"))
	}
	if s.cfg.Inspector == nil {
		errs = append(errs, errors.New("redis: not configured"))
	} else {
		done := make(chan error, 1)
		go func() { _, err := s.cfg.Inspector.Queues(); done <- err }()
		select {
		case err := <-done:
			if err != nil {
				s.log.Warn("readiness: Redis does not answer", "err", err)
				errs = append(errs, errors.New("redis: unreachable"))
			}
		case <-ctx.Done():
			errs = append(errs, errors.New("redis: no answer"))
		}
	}
	return errors.Join(errs...)
}

func (s *Server) apiNotFound(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotFound, "no route "+r.Method+" "+r.URL.Path, "")
}

// recoverer turns a panic into a 500 with a JSON error (http.ErrAbortHandler
// is passed on).
func (s *Server) recoverer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				s.log.Error("panic in handler", "path", r.URL.Path, "panic", v)
				writeError(w, http.StatusInternalServerError, "internal error", "")
			}
		}()
		next.ServeHTTP(w, r)
	})
}

// statusRecorder remembers the status code for the request counter.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *statusRecorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func (s *Server) count(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		route := r.Pattern
		if route == "" {
			_, route = s.mux.Handler(r)
		}
		if strings.HasPrefix(route, monitorRoot) {
			route = monitorRoot + "/"
		}
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		s.requests.WithLabelValues(route, itoa(rec.code)).Inc()
	})
}
