package store_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
)

// BenchmarkHistoryEngine100k: 100,000 history records (one a minute) in the
// store (embedded FerretDB unless MONGODB_URI is set). "drain" only reads
// the cursor of EachRecord; "raw" runs the engine in fullContextMode over
// the same cursor; "rollups" runs it on HourlyRollups. x-drain is the time
// of an analysis as a multiple of the drain time.
func BenchmarkHistoryEngine100k(b *testing.B) {
	s := testenv.Store(b)
	ctx := context.Background()
	sys := bmsgen.Systems()[0]
	to := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	from := to.Add(-100_000 * time.Minute)
	if err := s.UpsertSystem(ctx, sys); err != nil {
		b.Fatal(err)
	}
	n := seedHistory(b, s, sys, 1, from, to, time.Minute)
	days := int(to.Sub(from).Hours()/24) + 1
	drain := func() time.Duration {
		start := time.Now()
		c := 0
		if err := s.EachRecord(ctx, sys.ID, from, to, func(bms.Record) error { c++; return nil }); err != nil || c != n {
			b.Fatalf("drain: %d of %d, %v", c, n, err)
		}
		return time.Since(start)
	}
	base := drain() // warm
	base = min(base, drain())
	for _, mode := range []struct {
		name string
		run  func() error
	}{
		{"drain", func() error { drain(); return nil }},
		{"raw", func() error {
			_, err := insights.NewRules(s).Generate(ctx, insights.Request{SystemID: sys.ID, ContextWindowDays: days, Now: to, FullContextMode: true})
			return err
		}},
		{"rollups", func() error {
			_, err := insights.NewRules(s).Generate(ctx, insights.Request{SystemID: sys.ID, ContextWindowDays: days, Now: to})
			return err
		}},
	} {
		b.Run(mode.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := mode.run(); err != nil {
					b.Fatal(err)
				}
			}
			per := b.Elapsed() / time.Duration(b.N)
			b.ReportMetric(float64(per)/float64(base), "x-drain")
			b.ReportMetric(float64(n), "records")
		})
	}
}

// BenchmarkProcessInsights20Systems is the figure: the rules
// engine's process-insights for one system with 90 days of 15-minute
// history, in a collection holding 20 such systems (172,800 records in the
// app's shape), on the embedded store. "window" reads through
// devstack.HistoryWindow (SQLite's index), "find" through FerretDB's own
// find, which decodes the whole collection (the path before).
func BenchmarkProcessInsights20Systems(b *testing.B) {
	if os.Getenv("MONGODB_URI") != "" {
		b.Skip("the embedded store's figure")
	}
	s := testenv.Store(b)
	ctx := context.Background()
	to := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	from := to.Add(-90 * 24 * time.Hour)
	base := bmsgen.Systems()[0]
	var target bms.System
	for i := range 20 {
		sys := base
		sys.ID, sys.Name = fmt.Sprintf("sys-%02d", i), fmt.Sprintf("bank %d", i)
		if i == 0 {
			target = sys
		}
		if err := s.UpsertSystem(ctx, sys); err != nil {
			b.Fatal(err)
		}
		seedHistory(b, s, sys, int64(i), from, to, 15*time.Minute)
	}
	cfg := testenv.StoreConfig(b)
	cfg.Database = s.Database().Name()
	cfg.HistoryWindow = nil
	scan, err := store.Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = scan.Close(context.Background()) })
	snap := bmsgen.Snapshot(target, 1, to)
	for _, mode := range []struct {
		name string
		src  insights.HistorySource
	}{{"window", s}, {"find", scan}} {
		b.Run(mode.name, func(b *testing.B) {
			var records int
			for b.Loop() {
				res, err := insights.NewRules(mode.src).Generate(ctx, insights.Request{SystemID: target.ID, Snapshot: snap, ContextWindowDays: 90, Now: to})
				if err != nil {
					b.Fatal(err)
				}
				records = res.ContextSummary.Records
			}
			b.ReportMetric(float64(records), "records")
		})
	}
}

// seedHistory stores the generated history of sys in [from, to), 10,000
// records an insert, and returns how many it stored.
func seedHistory(b *testing.B, s *store.Store, sys bms.System, seed int64, from, to time.Time, step time.Duration) int {
	b.Helper()
	var batch []bms.Record
	n := 0
	err := bmsgen.Stream(sys, seed, from, to, step, func(r bms.Record) error {
		batch = append(batch, r)
		n++
		if len(batch) == 10_000 {
			err := s.InsertHistory(context.Background(), batch)
			batch = batch[:0]
			return err
		}
		return nil
	})
	if err == nil {
		err = s.InsertHistory(context.Background(), batch)
	}
	if err != nil {
		b.Fatal(err)
	}
	return n
}
