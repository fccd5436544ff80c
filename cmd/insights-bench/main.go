// Command insights-bench measures the insights service's durable workflow
// beside the peers of ../shared/peers (raw asynq, BullMQ, River) and prints
// one markdown table. It is a developer's tool, kept out of the product
// binary (cmd/insights), which links none of its packages.
//
//	go run ./cmd/insights-bench -n 2000 -c 20 -rounds 3   # from the repository root
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/cmd/insights-bench/internal/loadtest"
	"github.com/bmsview/insights/cmd/insights-bench/internal/peers"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command: exit 0, 1 when a measurement of ours failed, 2 on bad
// flags (with a message naming the flag).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	tuneGC()
	err := bench(ctx, args, stdout, stderr)
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "insights-bench:", err)
		return 2
	}
	fmt.Fprintln(stderr, "insights-bench:", err)
	return 1
}

// usageError is bad input.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

// defaultGOGC is serve's (cmd/insights) when GOGC is not set, so the worker
// is measured as it runs in the service.
const defaultGOGC = 400

func tuneGC() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGOGC)
	}
}

// bench measures our durable workflow and the peers of ../shared/peers in
// one run and prints one markdown table. Each round runs ours (each store
// kind), then asynq, BullMQ and River tuned; each row shows its median round.
func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("insights-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 2000, "workflows (peers: jobs) per measurement")
	c := fs.Int("c", 20, "worker concurrency (each peer queue gets the same)")
	peersDir := fs.String("peers", "../shared/peers", "directory of the peer benchmarks (river/, bullmq/, asynqnoop/)")
	storeKind := fs.String("store", "both", "our store: embedded, postgres or both")
	pgURL := fs.String("postgres", loadtest.DefaultPostgresURL, "PostgreSQL for FerretDB over PostgreSQL")
	riverDSN := fs.String("river-dsn", "postgres://postgres:pg@127.0.0.1:5432/riverbench", "River's PostgreSQL database")
	redisURL := fs.String("redis", "redis://127.0.0.1:6379/13", "Redis for our workflow; this database is FLUSHED (the peers use this server's databases 11 and 12)")
	rounds := fs.Int("rounds", 1, "rounds; each row shows its median")
	skipPeers := fs.Bool("skip-peers", false, "measure ours only")
	verbose := fs.Bool("v", false, "show the peers' build and run output")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of our measurements (not the peers') to this file")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usagef("%v", err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q (the command takes flags only; -h lists them)", fs.Arg(0))
	}
	var kinds []string
	switch *storeKind {
	case "both":
		kinds = []string{loadtest.StoreEmbedded, loadtest.StorePostgres}
	case loadtest.StoreEmbedded, loadtest.StorePostgres:
		kinds = []string{*storeKind}
	default:
		return usagef("-store %q: want embedded, postgres or both", *storeKind)
	}
	if *n < 1 || *c < 1 || *rounds < 1 {
		return usagef("-n, -c and -rounds must be at least 1")
	}
	// Parsed as loadtest and the peers will use it: the peers get its host.
	ro, err := asynq.ParseRedisURI(*redisURL)
	opt, ok := ro.(asynq.RedisClientOpt)
	if err != nil || !ok {
		return usagef("-redis %q: want redis://host:port/db", *redisURL)
	}

	var runner *peers.Runner
	if !*skipPeers {
		var log io.Writer
		if *verbose {
			log = stderr
		}
		runner, err = peers.NewRunner(peers.Options{Dir: *peersDir, N: *n, Concurrency: *c,
			RiverDSN: *riverDSN, RedisAddr: opt.Addr, Log: log})
		if err != nil {
			return fmt.Errorf("%w (run from the repository root, or set -peers)", err)
		}
		defer runner.Close()
	}

	var prof *os.File
	if *cpuProfile != "" {
		if prof, err = os.Create(*cpuProfile); err != nil {
			return usagef("-cpuprofile: %v", err)
		}
		defer prof.Close()
	}
	var all [][]peers.Row
	for r := range *rounds {
		var round []peers.Row
		for _, k := range kinds {
			fmt.Fprintf(stderr, "round %d/%d: ours on %s...\n", r+1, *rounds, k)
			if prof != nil && r == 0 && k == kinds[0] {
				// The first measurement only: one profile, one store.
				if err := pprof.StartCPUProfile(prof); err != nil {
					return fmt.Errorf("cpuprofile: %w", err)
				}
				round = append(round, ours(ctx, k, *n, *c, *redisURL, *pgURL))
				pprof.StopCPUProfile()
				continue
			}
			round = append(round, ours(ctx, k, *n, *c, *redisURL, *pgURL))
		}
		if runner != nil {
			fmt.Fprintf(stderr, "round %d/%d: asynq, BullMQ, River...\n", r+1, *rounds)
			round = append(round, peers.Rows(runner.RunAll(ctx))...)
		}
		all = append(all, round)
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	host, _ := os.Hostname()
	median := ""
	if *rounds > 1 {
		median = ", each row its median round"
	}
	fmt.Fprintf(stdout, "machine: %s, %d CPUs (%s/%s), %s; n=%d, c=%d, rounds=%d%s\n\n",
		host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, time.Now().UTC().Format(time.RFC3339),
		*n, *c, *rounds, median)
	rows := peers.Median(all)
	peers.WriteTable(stdout, rows)

	var failed []string
	for _, row := range rows[:len(kinds)] {
		if row.Err != nil {
			failed = append(failed, row.Name)
		}
	}
	if len(failed) > 0 {
		return errors.New("not measured: " + strings.Join(failed, "; "))
	}
	return nil
}

// ours runs our workflow once on one store kind.
func ours(ctx context.Context, kind string, n, c int, redisURL, pgURL string) peers.Row {
	res, err := loadtest.Run(ctx, loadtest.Options{N: n, Concurrency: c, RedisURL: redisURL, Store: kind, PostgresURL: pgURL})
	name := loadtest.Name(kind)
	if err != nil {
		return peers.Row{Name: name, Err: err}
	}
	return peers.Row{Name: name, WorkflowsPerSec: res.PerSec, WritesPerWorkflow: res.WritesPerWorkflow, P50: res.P50, P99: res.P99}
}
