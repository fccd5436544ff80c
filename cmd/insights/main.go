// Command insights is the BMS insights workloads service: serve (API,
// dashboard and worker), trigger, status, demo and healthcheck. The
// benchmark is a command of its own, cmd/insights-bench.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/bmsview/insights/internal/config"
)

// usageError is bad input: exit 2 with a message naming the flag.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

const usage = `usage: insights <command> [flags]

commands:
  serve [--role all|api|worker] [--demo]   run the API, dashboard and worker
  trigger --system-id ID --data FILE|- [...] send generate-insights
  status EVENT_ID [--server URL]           show an event's state and its job
  demo [--server URL]                      seed demo systems and send demo events
  healthcheck [--path /readyz]             GET /healthz of the local server (container HEALTHCHECK)

Run "insights <command> -h" for the flags of a command.
`

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		tuneGC()
		err = serve(ctx, args[1:], stdout, stderr)
	case "trigger":
		err = trigger(ctx, args[1:], stdin, stdout, stderr)
	case "status":
		err = status(ctx, args[1:], stdout, stderr)
	case "demo":
		err = demo(ctx, args[1:], stdout, stderr)
	case "healthcheck":
		err = healthcheck(ctx, args[1:], stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "insights: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, errHelp) {
		return 0
	}
	// Errors quote what they could not use (a URL that does not parse, a
	// driver's message): never a password or token of the environment.
	msg := config.Redact(err.Error(), config.Secrets(nil))
	fmt.Fprintln(stderr, "insights:", msg)
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

var errHelp = errors.New("help")

// defaultGOGC is the garbage collector's target for serve (and
// cmd/insights-bench) when GOGC is not set. Each workflow decodes and
// encodes its job document several times (FerretDB runs in-process when
// embedded), so the collector ran often on a small live heap: measured on 2
// cores, 400 gave about 20 % more workflows/s than Go's 100, for a heap up
// to 5× the live one.
const defaultGOGC = 400

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
}

// newLogger is the service's log as LOG_LEVEL and LOG_FORMAT ask.
func newLogger(w io.Writer, cfg *config.Config) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // config allows only slog's names
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
