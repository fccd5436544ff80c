package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/tasks"
)

// BenchmarkScale measures, on the embedded FerretDB, what each query of
// the console, the API, bulk actions and the reconciler costs at
// SCALE_JOBS jobs (default 100,000) and 4× as many history records (issue
// 23), per design: "sqlite" (the jobs' SQLite indexes, jobindex.go: what
// the store does), "summary" (a compact summary document per job in a
// collection of its own, found by FerretDB, then the jobs by _id) and, only
// when SCALE_BASELINE=1, "finds" (plain finds, as before: at 100,000 jobs
// they take tens of GB, so run it at 10,000). Each reports ms/op and the
// process's peak heap above its start (FerretDB runs in-process).
//
// The store is built once into SCALE_DIR (default $TMPDIR/insights-scale-N)
// and reused: building 100,000 jobs takes minutes. Benchmarks run only with
// -bench:
//
//	go test -run '^$' -bench BenchmarkScale -benchtime 5x -timeout 60m ./internal/store/
//	SCALE_JOBS=10000 SCALE_BASELINE=1 go test -run '^$' -bench BenchmarkScale -benchtime 3x ./internal/store/
func BenchmarkScale(b *testing.B) {
	if os.Getenv("MONGODB_URI") != "" {
		b.Skip("measures the embedded FerretDB (MONGODB_URI is set)")
	}
	n := 100_000
	if v := os.Getenv("SCALE_JOBS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			b.Fatal(err)
		}
	}
	dir := os.Getenv("SCALE_DIR")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), fmt.Sprintf("insights-scale-%d", n))
	}
	ctx := context.Background()
	m, err := devstack.StartMongo(ctx, dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Close)
	const database = "scale"
	if _, err := os.Stat(filepath.Join(dir, "ready")); err != nil {
		start := time.Now()
		buildScale(b, m, database, n)
		if err := os.WriteFile(filepath.Join(dir, "ready"), nil, 0o600); err != nil {
			b.Fatal(err)
		}
		b.Logf("built %d jobs and %d history records in %s", n, 4*n, time.Since(start).Round(time.Second))
	}
	open := func(indexed bool) *Store {
		cfg := Config{URI: m.URI, Database: database, Prepare: m.Prepare, HistoryWindow: m.HistoryWindow}
		if indexed {
			cfg.SQLite = m.SQLite
		}
		s, err := Open(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close(context.Background()) })
		return s
	}
	start := time.Now()
	indexed := open(true) // creates the indexes on a store built before them
	b.Logf("store opened with its SQLite indexes in %s", time.Since(start).Round(time.Millisecond))
	plain := open(false)

	var probe Job // a failed job, for the lookups
	if err := plain.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: scaleJobID(n - 3)}}).Decode(&probe); err != nil {
		b.Fatal(err)
	}
	sys := bmsgen.Systems()[1].ID
	queries := []struct {
		name string
		run  func(s *Store) error
	}{
		{"home", func(s *Store) error { // GET /: counts, then the newest 50
			if _, err := s.CountByStatus(ctx); err != nil {
				return err
			}
			_, err := s.ListJobs(ctx, JobFilter{Limit: 50})
			return err
		}},
		{"list-failed", func(s *Store) error {
			_, err := s.ListJobs(ctx, JobFilter{Status: tasks.StatusFailed, Limit: 50})
			return err
		}},
		{"list-system", func(s *Store) error {
			_, err := s.ListJobs(ctx, JobFilter{SystemID: sys, Limit: 50})
			return err
		}},
		{"list-offset-10000", func(s *Store) error {
			_, err := s.ListJobs(ctx, JobFilter{Limit: 50, Offset: min(10_000, n-50)})
			return err
		}},
		{"failures", func(s *Store) error { // GET /failures: groups, then a page of failed jobs
			if _, err := s.FailureGroups(ctx, JobFilter{}); err != nil {
				return err
			}
			_, err := s.ListJobs(ctx, JobFilter{Status: tasks.StatusFailed, Limit: 50})
			return err
		}},
		{"job-by-event", func(s *Store) error { // GET /jobs/{id}: its status reads the job by eventId
			_, err := s.GetJobByEvent(ctx, probe.EventID)
			return err
		}},
		{"bulk-dry-run", func(s *Store) error {
			_, err := s.CountJobs(ctx, JobFilter{FailureKind: KindTransient})
			return err
		}},
		{"bulk-select", func(s *Store) error { // the refs a bulk retry of the failed jobs writes
			return s.EachJobRef(ctx, JobFilter{Status: tasks.StatusFailed}, func(JobRef) error { return nil })
		}},
		{"reconciler", func(s *Store) error {
			return s.EachStale(ctx, time.Now().Add(-time.Minute), func(*Job) error { return nil })
		}},
	}
	designs := []struct {
		name string
		s    *Store
		run  func(s *Store, q func(*Store) error, name string) error
	}{
		{"sqlite", indexed, func(s *Store, q func(*Store) error, _ string) error { return q(s) }},
		{"summary", plain, func(s *Store, _ func(*Store) error, name string) error {
			return summaryQuery(ctx, s, name, sys, probe.EventID)
		}},
	}
	if os.Getenv("SCALE_BASELINE") == "1" {
		designs = append(designs, struct {
			name string
			s    *Store
			run  func(s *Store, q func(*Store) error, name string) error
		}{"finds", plain, func(s *Store, q func(*Store) error, _ string) error { return q(s) }})
	}
	for _, d := range designs {
		for _, q := range queries {
			b.Run(d.name+"/"+q.name, func(b *testing.B) {
				if err := d.run(d.s, q.run, q.name); err == errNoSummary {
					b.Skip("not a query of this design")
				}
				peak := watchHeap()
				b.ResetTimer()
				for b.Loop() {
					if err := d.run(d.s, q.run, q.name); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/op")
				b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MB")
			})
		}
	}
}

// watchHeap samples the live heap every millisecond until the returned
// func is called, which gives its peak above the heap at the start.
func watchHeap() func() uint64 {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() uint64 { metrics.Read(sample); return sample[0].Value.Uint64() }
	base := read()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if v := read(); v > base && v-base > peak.Load() {
					peak.Store(v - base)
				}
			}
		}
	}()
	return func() uint64 { close(stop); <-done; return peak.Load() }
}

const summaryCollection = "insights-jobs-summary"

var errNoSummary = fmt.Errorf("no summary query")

// summaryQuery is design B: the query on the summary collection (small
// documents, still decoded whole by FerretDB for any filter), then the
// jobs by _id.
func summaryQuery(ctx context.Context, s *Store, name, sys, eventID string) error {
	coll := s.db.Collection(summaryCollection)
	page := func(q bson.D) error {
		cur, err := coll.Find(ctx, q, options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}}).SetLimit(50).SetProjection(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			return err
		}
		var ids []struct {
			ID string `bson:"_id"`
		}
		if err := cur.All(ctx, &ids); err != nil {
			return err
		}
		for _, id := range ids {
			if _, err := s.fetchJob(ctx, docKey{id: id.ID, typ: "string"}); err != nil {
				return err
			}
		}
		return nil
	}
	switch name {
	case "home":
		cur, err := coll.Aggregate(ctx, bson.A{bson.D{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$status"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}}})
		if err != nil {
			return err
		}
		var rows []bson.M
		if err := cur.All(ctx, &rows); err != nil {
			return err
		}
		return page(bson.D{})
	case "list-failed":
		return page(bson.D{{Key: "status", Value: tasks.StatusFailed}})
	case "list-system":
		return page(bson.D{{Key: "systemId", Value: sys}})
	case "job-by-event":
		var r struct {
			ID string `bson:"_id"`
		}
		if err := coll.FindOne(ctx, bson.D{{Key: "eventId", Value: eventID}}).Decode(&r); err != nil {
			return err
		}
		_, err := s.fetchJob(ctx, docKey{id: r.ID, typ: "string"})
		return err
	case "bulk-dry-run":
		_, err := coll.CountDocuments(ctx, bson.D{{Key: "status", Value: tasks.StatusFailed}, {Key: "failure.kind", Value: KindTransient}})
		return err
	}
	return errNoSummary
}

func scaleJobID(i int) string { return fmt.Sprintf("scale-%07d", i) }

// buildScale writes n jobs shaped as the workflow leaves them (the
// snapshot, every step's checkpoint with its output, the progress events,
// finalInsights: about 10 KB each), over a year, mostly completed, every
// 12th failed (four kinds, a few messages), every 50th live; their summary
// documents (design B); and 4n history records of the systems.
func buildScale(b *testing.B, m *devstack.Mongo, database string, n int) {
	ctx := context.Background()
	s, err := Open(ctx, Config{URI: m.URI, Database: database, Prepare: m.Prepare})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(ctx)
	systems := bmsgen.Systems()
	for _, sys := range systems {
		if err := s.UpsertSystem(ctx, sys); err != nil {
			b.Fatal(err)
		}
	}
	now := time.Now().UTC()
	snap := bmsgen.Snapshot(systems[0], 1, now)
	result, err := insights.NewRules(s).Generate(ctx, insights.Request{SystemID: systems[0].ID, Snapshot: snap,
		ContextWindowDays: tasks.DefaultContextWindow, MaxIterations: tasks.DefaultMaxIterations, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	final := NewFinalInsights(result)
	kinds := []string{KindTransient, KindRateLimit, KindBusiness, KindInternal}
	start := now.Add(-365 * 24 * time.Hour)
	jobs, sums := make([]any, 0, 500), make([]any, 0, 500)
	for i := range n {
		at := start.Add(time.Duration(i) * (365 * 24 * time.Hour) / time.Duration(n))
		run := tasks.Run{EventID: fmt.Sprintf("ev-%07d", i), JobID: scaleJobID(i), SystemID: systems[i%len(systems)].ID,
			Request: &tasks.Request{AnalysisData: &snap}, Priority: tasks.DefaultPriority, Queue: tasks.QueueFor(tasks.DefaultPriority), ProcessAt: at}
		j := newJobDoc(run, tasks.StatusCompleted, at)
		j.Attempts, j.UpdatedAt = 1, at.Add(40*time.Second)
		for k, name := range tasks.Steps {
			var out any = bson.D{{Key: "ok", Value: true}, {Key: "step", Value: name}}
			if name == tasks.StepProcessInsights {
				out = result
			}
			j.Steps[name] = StepState{Status: StepCompleted, Runs: 1, Attempt: 1, StartedAt: at.Add(time.Duration(k) * time.Second),
				FinishedAt: at.Add(time.Duration(k+1) * time.Second), DurationMs: 1000, Output: out}
			j.Progress = append(j.Progress, ProgressEvent{Timestamp: at, Type: insights.ProgressStatus,
				Data: map[string]any{"message": "Step " + name + " started", "step": name, "attempt": 1}})
		}
		switch {
		case i%50 == 7 && i > n-2000: // live, recently
			j.Status, j.Steps = tasks.StatusScheduled, map[string]StepState{}
		case i%12 == 1:
			kind := kinds[(i/12)%len(kinds)]
			msg := fmt.Sprintf("model provider answered %d", 500+(i/48)%4)
			j.Status, j.Error = tasks.StatusFailed, &msg
			j.Failures = 3
			j.Failure = &Failure{Kind: kind, Message: msg, Step: tasks.StepProcessInsights, At: j.UpdatedAt}
			delete(j.Steps, tasks.StepStoreResults)
			delete(j.Steps, tasks.StepSendCompletion)
		default:
			j.FinalInsights, j.CompletedAt = final, &j.UpdatedAt
			j.FollowUp = &FollowUp{EventID: tasks.FollowUpTaskIDPrefix + run.EventID, EnqueuedAt: j.UpdatedAt}
		}
		jobs = append(jobs, j)
		sum := bson.D{{Key: "_id", Value: j.ID}, {Key: "status", Value: j.Status}, {Key: "systemId", Value: j.SystemID},
			{Key: "eventId", Value: j.EventID}, {Key: "createdAt", Value: j.CreatedAt}, {Key: "updatedAt", Value: j.UpdatedAt}}
		if j.Failure != nil {
			sum = append(sum, bson.E{Key: "failure", Value: bson.D{{Key: "kind", Value: j.Failure.Kind}, {Key: "step", Value: j.Failure.Step}, {Key: "message", Value: j.Failure.Message}}})
		}
		sums = append(sums, sum)
		if len(jobs) == cap(jobs) || i == n-1 {
			if _, err := s.jobs.InsertMany(ctx, jobs); err != nil {
				b.Fatal(err)
			}
			if _, err := s.db.Collection(summaryCollection).InsertMany(ctx, sums); err != nil {
				b.Fatal(err)
			}
			jobs, sums = jobs[:0], sums[:0]
		}
	}
	// 4n history records, split over the systems, one every 5 minutes.
	per := 4 * n / len(systems)
	for k, sys := range systems {
		to := now
		from := to.Add(-time.Duration(per) * 5 * time.Minute)
		var batch []bms.Record
		err := bmsgen.Stream(sys, int64(k), from, to, 5*time.Minute, func(r bms.Record) error {
			batch = append(batch, r)
			if len(batch) == 5000 {
				err := s.InsertHistory(ctx, batch)
				batch = batch[:0]
				return err
			}
			return nil
		})
		if err == nil {
			err = s.InsertHistory(ctx, batch)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
