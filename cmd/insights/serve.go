package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/web"
)

// reconcileEvery is how often live jobs are checked against Redis.
const reconcileEvery = time.Minute

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("serve", stderr)
	role := fs.String("role", "all", "all (API + dashboard + worker), api or worker")
	withDemo := fs.Bool("demo", false, "seed demo systems with history and send demo events")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch *role {
	case "all", "api", "worker":
	default:
		return usagef("--role: want all, api or worker, got %q", *role)
	}
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	// Before anything starts or DATA_DIR is written.
	if err := checkRole(*role, cfg); err != nil {
		return err
	}
	if err := cfg.EnsureCredentials(); err != nil {
		return err
	}
	log := newLogger(stderr, cfg)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// One process on the embedded FerretDB's files, and the port bound
	// before any store or worker starts: a second serve on the same
	// DATA_DIR or HTTP_ADDR stops here with a message, having touched
	// nothing.
	if cfg.EmbeddedMongo() {
		unlock, err := devstack.LockDir(cfg.DataDir)
		if errors.Is(err, devstack.ErrDirInUse) {
			return fmt.Errorf("DATA_DIR %s is %w: another `insights serve` runs on it; stop it, or set DATA_DIR to another directory (and HTTP_ADDR to another port)", cfg.DataDir, err)
		}
		if err != nil {
			return fmt.Errorf("DATA_DIR: %w", err)
		}
		defer unlock()
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("HTTP_ADDR %s: %w (set HTTP_ADDR=:8081 to use another port)", cfg.HTTPAddr, err)
	}
	defer ln.Close()

	a, err := app.Open(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer a.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := web.NewMetrics(reg)

	runAPI, runWorker := *role != "worker", *role != "api"
	var worker *handlers.Worker
	if runWorker {
		engine, err := a.NewEngine()
		if err != nil {
			return err
		}
		if worker, err = a.NewWorker(app.WorkerOptions{Engine: engine, Observer: metrics}); err != nil {
			return err
		}
		if err := worker.Start(); err != nil {
			return fmt.Errorf("worker: %w", err)
		}
		go a.RunReconciler(ctx, reconcileEvery)
		log.Info("worker started", "concurrency", cfg.WorkerConcurrency, "queues", cfg.QueueWeights)
	}

	srv := newHTTPServer(cfg.HTTPAddr)
	var ws *web.Server
	if runAPI {
		operator := a.NewOperator(log)
		// After the server: Close stops its bulk actions, which resume later.
		defer operator.Close()
		ws = web.New(web.Config{Store: a.Store, Client: a.Client, Inspector: a.Inspector, RedisConnOpt: a.Redis,
			APIToken: cfg.APIToken, AdminPassword: cfg.AdminPassword, ViewerPassword: cfg.ViewerPassword,
			CORSOrigins: cfg.CORSOrigins, Operator: operator, Provider: cfg.InsightsProvider,
			LiveStreamsPerUser: cfg.LiveStreamsPerUser, LiveStreamsMax: cfg.LiveStreamsMax,
			Breaker: a.Breaker, Metrics: reg, Ready: a.Ready, Logger: log})
		srv.Handler = ws.Handler()
		go ws.ResumeBulk(ctx, time.Minute)
		// Shutdown waits for open connections: the job pages' live
		// streams end at once (the browsers reconnect).
		srv.RegisterOnShutdown(ws.EndStreams)
	} else {
		// A worker serves health, readiness and (behind the same auth)
		// its step and job metrics; it has no API of its own.
		ws = web.New(web.Config{APIToken: cfg.APIToken, AdminPassword: cfg.AdminPassword, ViewerPassword: cfg.ViewerPassword,
			Metrics: reg, Ready: a.Ready, Logger: log})
		srv.Handler = ws.Handler()
	}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server", "err", err)
			stop()
		}
	}()
	printBanner(stdout, cfg, ln.Addr().String(), *role)
	if *withDemo {
		go func() {
			if err := runDemo(ctx, a, stdout); err != nil {
				log.Error("demo", "err", err)
				return
			}
			log.Info("demo finished")
		}()
	}

	<-ctx.Done()
	log.Info("shutting down: no new tasks; running steps get SHUTDOWN_TIMEOUT", "timeout", cfg.ShutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if worker != nil {
		worker.Shutdown()
	}
	_ = srv.Shutdown(shutdownCtx)
	if ws != nil {
		_ = ws.Close()
	}
	log.Info("stopped")
	return nil
}

// checkRole refuses a split role (api or worker) on an embedded store: each
// process would run its own in-memory Redis or its own FerretDB over
// DATA_DIR, so the api's work would never reach the worker.
func checkRole(role string, cfg *config.Config) error {
	if role == "all" {
		return nil
	}
	var missing []string
	if cfg.EmbeddedRedis() {
		missing = append(missing, "REDIS_URL")
	}
	if cfg.EmbeddedMongo() {
		missing = append(missing, "MONGODB_URI")
	}
	if len(missing) == 0 {
		return nil
	}
	return usagef("--role %s needs a shared Redis and MongoDB: set %s (the embedded stores live inside one process)",
		role, strings.Join(missing, " and "))
}

// newHTTPServer bounds reads and idle connections: a slow or idle client
// cannot hold a connection open for ever (no write limit: asynqmon's pages
// poll).
func newHTTPServer(addr string) *http.Server {
	return &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
}

func printBanner(w io.Writer, cfg *config.Config, addr, role string) {
	host := addr
	if h, p, err := net.SplitHostPort(addr); err == nil && (h == "::" || h == "0.0.0.0" || h == "") {
		host = "localhost:" + p
	}
	fmt.Fprintf(w, "insights %s listening on http://%s/ (dashboard: http://%s/monitoring/)\n", role, host, host)
	for _, name := range cfg.Generated {
		switch name {
		case "API_TOKEN":
			fmt.Fprintf(w, "API_TOKEN=%s   (generated; set API_TOKEN to choose one)\n", cfg.APIToken)
		case "ADMIN_PASSWORD":
			fmt.Fprintf(w, "ADMIN_PASSWORD=%s   (generated; browser login user: admin)\n", cfg.AdminPassword)
		}
	}
	if cfg.ViewerPassword != "" {
		fmt.Fprintln(w, "read-only login: user viewer with VIEWER_PASSWORD")
	}
	if cfg.EmbeddedMongo() && len(cfg.Generated) > 0 {
		fmt.Fprintf(w, "generated credentials are kept in %s\n", cfg.DataDir)
	}
	// Read back from DATA_DIR: shown when generated, never again.
	for _, name := range cfg.Kept {
		fmt.Fprintf(w, "%s: as generated at an earlier start, kept in %s\n", name, filepath.Join(cfg.DataDir, strings.ToLower(name)))
	}
}

func healthcheck(ctx context.Context, args []string, stderr io.Writer) error {
	fs := newFlagSet("healthcheck", stderr)
	path := fs.String("path", "/healthz", "path to GET (/healthz: alive; /readyz: Redis and MongoDB reachable)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	addr := os.Getenv("HTTP_ADDR")
	if addr == "" {
		addr = ":8080"
	}
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+*path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", *path, resp.Status)
	}
	return nil
}
