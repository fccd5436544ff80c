package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"time"

	"github.com/bmsview/insights/internal/loadtest"
)

// bench measures our durable workflow and the peers of ../shared/peers in
// one run and prints one markdown table.
func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("bench", stderr)
	n := fs.Int("n", 2000, "workflows per measurement")
	c := fs.Int("c", 20, "worker concurrency (each peer queue gets the same)")
	peersDir := fs.String("peers", "../shared/peers", "directory of the peer benchmarks (river/, bullmq/, asynqnoop/)")
	storeKind := fs.String("store", "both", "our store: embedded, postgres or both")
	pgURL := fs.String("postgres", "postgres://postgres:pg@127.0.0.1:5432/postgres", "PostgreSQL for FerretDB over PostgreSQL")
	riverDSN := fs.String("river-dsn", "postgres://postgres:pg@127.0.0.1:5432/riverbench", "River's PostgreSQL database")
	redisURL := fs.String("redis", "redis://127.0.0.1:6379/13", "Redis for our workflow; this database is FLUSHED")
	rounds := fs.Int("rounds", 1, "rounds; each row shows its median")
	skipPeers := fs.Bool("skip-peers", false, "measure ours only")
	verbose := fs.Bool("v", false, "show the peers' build and run output")
	if err := parseFlags(fs, args); err != nil {
		return err
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
	var log io.Writer = io.Discard
	if *verbose {
		log = stderr
	}
	var all [][]loadtest.Result
	for r := range *rounds {
		var round []loadtest.Result
		for _, k := range kinds {
			fmt.Fprintf(stderr, "round %d: ours on %s...\n", r+1, k)
			res, err := loadtest.Run(ctx, loadtest.Options{N: *n, Concurrency: *c, RedisURL: *redisURL, Store: k, PostgresURL: *pgURL})
			res.Err = err
			round = append(round, res)
		}
		if !*skipPeers {
			fmt.Fprintf(stderr, "round %d: peers...\n", r+1)
			round = append(round, loadtest.RunPeers(ctx, loadtest.PeerOptions{Dir: *peersDir, N: *n, Concurrency: *c, RiverDSN: *riverDSN, Log: log})...)
		}
		all = append(all, round)
	}
	host, _ := os.Hostname()
	fmt.Fprintf(stdout, "%s, %d CPUs, %s, n=%d, c=%d, rounds=%d (median)\n\n", host, runtime.NumCPU(), time.Now().UTC().Format(time.RFC3339), *n, *c, *rounds)
	loadtest.WriteTable(stdout, loadtest.Median(all))
	return nil
}
