// Package loadtest measures our durable six-step workflow the way
// ../shared/peers measures River, BullMQ and asynq (insights-bench's row
// "ours"): N generate-insights
// events are sent first (timed apart), then the worker is started and timed
// until the last run's insights-completed follow-up has stored its
// lastInsights. Every step's checkpoint is durable before the next step
// starts. A second, paced phase measures the time from send to completed.
package loadtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// Store kinds.
const (
	StoreEmbedded = "embedded" // FerretDB on SQLite in this process: the zero-config default
	StorePostgres = "postgres" // FerretDB in this process over the PostgreSQL at Options.PostgresURL
)

// Name is our row's name for a store kind.
func Name(store string) string {
	switch store {
	case StoreEmbedded:
		return "ours, FerretDB SQLite (embedded)"
	case StorePostgres:
		return "ours, FerretDB over PostgreSQL"
	}
	return "ours, store " + store
}

// Options configure Run.
type Options struct {
	// N workflows in the throughput phase. 0: 2000.
	N int
	// Concurrency of the worker. 0: 20.
	Concurrency int
	// RedisURL: its database is FLUSHED first. Empty: redis://127.0.0.1:6379/13.
	RedisURL string
	// Store: StoreEmbedded (default) or StorePostgres.
	Store string
	// PostgresURL for StorePostgres. Empty: DefaultPostgresURL.
	PostgresURL string
	// Latency events sent, paced, after the throughput phase. 0: N/5 (at
	// least 100); -1: none.
	Latency int
}

// Result is one measured run.
type Result struct {
	Name    string
	N       int
	Elapsed time.Duration
	// PerSec is workflows per second: N over Elapsed.
	PerSec float64
	// WritesPerWorkflow counts documents written (insert, update and
	// delete statements) per workflow in the throughput phase, and
	// RoundTripsPerWorkflow the commands sent to MongoDB.
	WritesPerWorkflow, RoundTripsPerWorkflow float64
	// P50 and P99 of send → lastInsights stored, from the paced phase, sent
	// at half the throughput phase's rate.
	P50, P99 time.Duration
	// JobBytes is the mean BSON size of a completed job document: what each
	// of its updates rewrites on FerretDB at the end of a workflow.
	JobBytes float64
}

// Run runs the benchmark on a database of its own, dropped at the end.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.N <= 0 {
		o.N = 2000
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 20
	}
	if o.RedisURL == "" {
		o.RedisURL = "redis://127.0.0.1:6379/13"
	}
	if o.Store == "" {
		o.Store = StoreEmbedded
	}
	if o.PostgresURL == "" {
		o.PostgresURL = DefaultPostgresURL
	}
	if o.Latency == 0 {
		o.Latency = max(o.N/5, 100)
	}
	res := Result{Name: Name(o.Store), N: o.N}
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))

	var scfg store.Config
	switch o.Store {
	case StoreEmbedded:
		dir, err := os.MkdirTemp("", "insights-bench-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		m, err := devstack.StartMongo(ctx, dir, quiet)
		if err != nil {
			return res, err
		}
		defer m.Close()
		scfg = store.Config{URI: m.URI, Prepare: m.Prepare, Sync: m.Sync, Checkpoint: m.Checkpoint, HistoryWindow: m.HistoryWindow, SQLite: m.SQLite}
	case StorePostgres:
		f, prepare, err := startPostgres(ctx, o.PostgresURL, quiet)
		if err != nil {
			return res, err
		}
		defer f.Close()
		scfg = store.Config{URI: f.URI, Prepare: prepare}
	default:
		return res, fmt.Errorf("loadtest: store %q: want %s or %s", o.Store, StoreEmbedded, StorePostgres)
	}

	var writes, trips atomic.Int64
	counting := atomic.Bool{}
	scfg.Database = fmt.Sprintf("bench_%d", time.Now().UnixNano()%1e9)
	scfg.Monitor = &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
		if counting.Load() {
			trips.Add(1)
			writes.Add(statements(e))
		}
	}}
	st, err := store.Open(ctx, scfg)
	if err != nil {
		return res, err
	}
	defer func() { _ = st.Database().Drop(context.Background()); _ = st.Close(context.Background()) }()

	ropt, err := asynq.ParseRedisURI(o.RedisURL)
	if err != nil {
		return res, fmt.Errorf("loadtest: RedisURL: %w", err)
	}
	rc, ok := ropt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return res, errors.New("loadtest: unexpected redis client")
	}
	defer rc.Close()
	if err := rc.FlushDB(ctx).Err(); err != nil {
		return res, fmt.Errorf("loadtest: flush %s: %w", o.RedisURL, err)
	}

	done := &completions{Store: st, at: map[string]time.Time{}}
	producer := tasks.NewClient(ropt, tasks.ClientConfig{Jobs: st})
	defer producer.Close()
	worker := handlers.NewWorkerFromRedisClient(rc, handlers.WorkerConfig{
		Runner:        handlers.RunnerConfig{Store: st, MaxRetries: 3},
		Insights:      handlers.InsightsConfig{Engine: insights.NewRules(st)},
		Completed:     handlers.CompletedConfig{Systems: done},
		Server:        handlers.ServerOptions{Concurrency: o.Concurrency},
		Logger:        quiet,
		AsynqLogLevel: asynq.FatalLevel,
	})

	// The systems exist before their insights, as they do in use.
	systems := bmsgen.Systems()
	for _, sys := range systems {
		if err := st.UpsertSystem(ctx, sys); err != nil {
			return res, err
		}
	}
	snap := bmsgen.Snapshot(systems[0], 1, time.Now())
	send := func(i int) (string, error) {
		r, err := producer.TriggerInsights(ctx, tasks.EventData{JobID: fmt.Sprintf("bench-%d", i), SystemID: systems[i%len(systems)].ID, AnalysisData: &snap})
		if err != nil {
			return "", err
		}
		return r.EventID, nil
	}

	for i := range o.N {
		if _, err := send(i); err != nil {
			return res, fmt.Errorf("loadtest: send: %w", err)
		}
	}
	counting.Store(true)
	start := time.Now()
	if err := worker.Start(); err != nil {
		return res, err
	}
	defer worker.Shutdown()
	if err := done.wait(ctx, o.N, 10*time.Minute); err != nil {
		return res, err
	}
	res.Elapsed = time.Since(start)
	if res.JobBytes, err = meanJobBytes(ctx, st); err != nil {
		return res, err
	}
	counting.Store(false)
	res.PerSec = float64(o.N) / res.Elapsed.Seconds()
	res.WritesPerWorkflow = float64(writes.Load()) / float64(o.N)
	res.RoundTripsPerWorkflow = float64(trips.Load()) / float64(o.N)

	if o.Latency > 0 {
		interval := time.Duration(float64(time.Second) / (res.PerSec / 2))
		sent := map[string]time.Time{}
		tick := time.NewTicker(interval)
		for i := range o.Latency {
			<-tick.C
			t := time.Now()
			id, err := send(o.N + i)
			if err != nil {
				tick.Stop()
				return res, fmt.Errorf("loadtest: send: %w", err)
			}
			sent[id] = t
		}
		tick.Stop()
		if err := done.wait(ctx, o.N+o.Latency, 10*time.Minute); err != nil {
			return res, err
		}
		lat := make([]time.Duration, 0, len(sent))
		done.mu.Lock()
		for id, t := range sent {
			lat = append(lat, done.at[id].Sub(t))
		}
		done.mu.Unlock()
		slices.Sort(lat)
		res.P50, res.P99 = lat[len(lat)*50/100], lat[min(len(lat)*99/100, len(lat)-1)]
	}
	return res, nil
}

// stmtField is where each write command carries its documents.
var stmtField = map[string]string{"insert": "documents", "update": "updates", "delete": "deletes"}

// statements counts the documents a write command writes.
func statements(e *event.CommandStartedEvent) int64 {
	if e.CommandName == "findAndModify" {
		return 1
	}
	f, ok := stmtField[e.CommandName]
	if !ok {
		return 0
	}
	if v, err := e.Command.LookupErr(f); err == nil {
		if a, ok := v.ArrayOK(); ok {
			vals, _ := a.Values()
			return int64(len(vals))
		}
	}
	return 1
}

// completions stores lastInsights as the service does and records when
// each run's follow-up did so.
type completions struct {
	*store.Store
	mu sync.Mutex
	at map[string]time.Time // eventId → lastInsights stored
}

func (c *completions) SetLastInsights(ctx context.Context, systemID string, v map[string]any) error {
	if err := c.Store.SetLastInsights(ctx, systemID, v); err != nil {
		return err
	}
	id, _ := v["eventId"].(string)
	c.mu.Lock()
	if _, seen := c.at[id]; !seen {
		c.at[id] = time.Now()
	}
	c.mu.Unlock()
	return nil
}

func (c *completions) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.at)
}

func (c *completions) wait(ctx context.Context, n int, within time.Duration) error {
	deadline := time.Now().Add(within)
	for c.count() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("loadtest: %d of %d workflows completed within %s", c.count(), n, within)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(2 * time.Millisecond)
	}
	return nil
}

// meanJobBytes is the mean BSON size of (up to 50) job documents.
func meanJobBytes(ctx context.Context, st *store.Store) (float64, error) {
	cur, err := st.Database().Collection(store.JobsCollection).Find(ctx, bson.D{}, options.Find().SetLimit(50))
	if err != nil {
		return 0, fmt.Errorf("loadtest: job sizes: %w", err)
	}
	defer cur.Close(ctx)
	var n, total int
	for cur.Next(ctx) {
		n++
		total += len(cur.Current)
	}
	if n == 0 {
		return 0, cur.Err()
	}
	return float64(total) / float64(n), cur.Err()
}
