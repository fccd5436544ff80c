package store_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/testenv"
)

func TestHistorySystems(t *testing.T) {
	s := testenv.Store(t)
	ctx := context.Background()
	got, err := s.System(ctx, "nope")
	if err != nil || got != nil {
		t.Fatalf("unknown system: %v, %v", got, err)
	}
	sys := bmsgen.Systems()[0]
	if err := s.UpsertSystem(ctx, sys); err != nil {
		t.Fatal(err)
	}
	got, err = s.System(ctx, sys.ID)
	if err != nil || got == nil {
		t.Fatalf("system: %v, %v", got, err)
	}
	if got.Chemistry != "LiFePO4" || got.Capacity != sys.Capacity || got.Longitude != sys.Longitude || got.Name != sys.Name {
		t.Fatalf("system round trip: %+v", got)
	}
	if err := s.SetLastInsights(ctx, sys.ID, map[string]any{"healthScore": 91.0, "status": "Normal"}); err != nil {
		t.Fatal(err)
	}
	// Upserting again keeps lastInsights.
	sys.Name = "renamed"
	if err := s.UpsertSystem(ctx, sys); err != nil {
		t.Fatal(err)
	}
	got, _ = s.System(ctx, sys.ID)
	if got.Name != "renamed" || got.LastInsights["status"] != "Normal" || got.LastInsights["healthScore"] != 91.0 {
		t.Fatalf("after re-upsert: %+v", got)
	}
}

func TestHistoryRecordsAndRollups(t *testing.T) {
	s := testenv.Store(t)
	ctx := context.Background()
	sys := bmsgen.Systems()[1]
	to := time.Date(2025, 7, 10, 0, 0, 0, 0, time.UTC)
	from := to.Add(-72 * time.Hour)
	recs := bmsgen.History(sys, 7, from, to, 10*time.Minute)
	other := bmsgen.History(bmsgen.Systems()[2], 7, from, to, time.Hour)
	if err := s.UpsertSystem(ctx, sys); err != nil {
		t.Fatal(err)
	}
	if err := s.InsertHistory(ctx, append(recs, other...)); err != nil {
		t.Fatal(err)
	}
	// A second insert of the same records is harmless.
	if err := s.InsertHistory(ctx, recs[:300]); err != nil {
		t.Fatalf("re-insert: %v", err)
	}

	// The window is [wFrom, wTo): 24 h in the middle.
	wFrom, wTo := from.Add(24*time.Hour), from.Add(48*time.Hour)
	var want []bms.Record
	for _, r := range recs {
		if !r.At().Before(wFrom) && r.At().Before(wTo) {
			want = append(want, r)
		}
	}
	var got []bms.Record
	if err := s.EachRecord(ctx, sys.ID, wFrom, wTo, func(r bms.Record) error {
		got = append(got, r)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || len(got) == 0 {
		t.Fatalf("EachRecord: %d records, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i].ID || !got[i].At().Equal(want[i].At()) || bms.V(got[i].Analysis.StateOfCharge) != bms.V(want[i].Analysis.StateOfCharge) || len(got[i].Analysis.CellVoltages) != len(want[i].Analysis.CellVoltages) {
			t.Fatalf("record %d: got %+v want %+v", i, got[i], want[i])
		}
	}
	// fn's error stops the stream and comes back as is.
	stop := errors.New("stop")
	n := 0
	if err := s.EachRecord(ctx, sys.ID, from, to, func(bms.Record) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("stop: %v after %d", err, n)
	}
	// A cancelled context is an error wrapping context.Canceled.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.EachRecord(cctx, sys.ID, from, to, func(bms.Record) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}

	rolls, err := s.HourlyRollups(ctx, sys.ID, wFrom, wTo)
	if err != nil {
		t.Fatal(err)
	}
	mem := insights.RollupRecords(want)
	if len(rolls) != len(mem) {
		t.Fatalf("rollups: %d hours, want %d", len(rolls), len(mem))
	}
	close := func(a, b float64) bool { return math.Abs(a-b) <= 1e-6*math.Max(1, math.Abs(b)) }
	for i := range rolls {
		g, w := rolls[i], mem[i]
		if !g.Hour.Equal(w.Hour) || g.Count != w.Count || g.TempCount != w.TempCount || g.CellCount != w.CellCount || g.HighSOCCount != w.HighSOCCount ||
			!close(g.SumSOC, w.SumSOC) || !close(g.SumVoltage, w.SumVoltage) || !close(g.SumCurrent, w.SumCurrent) ||
			!close(g.SumChargeW, w.SumChargeW) || !close(g.SumDischargeW, w.SumDischargeW) || !close(g.SumTempMax, w.SumTempMax) ||
			!close(g.SumImbalanceMV, w.SumImbalanceMV) || !close(g.SumEstCapAh, w.SumEstCapAh) || !close(g.SumRemainingAh, w.SumRemainingAh) {
			t.Fatalf("hour %d:\n got %+v\nwant %+v", i, g, w)
		}
	}
	if rolls[0].Count != 6 {
		t.Fatalf("10-minute samples: %d in the first hour, want 6", rolls[0].Count)
	}

	// The store as the engine's HistorySource gives the same analysis as
	// the same records in memory, in both modes.
	snap := bmsgen.Snapshot(sys, 7, to)
	memSrc := insights.NewMemorySource([]bms.System{sys}, recs)
	for _, full := range []bool{false, true} {
		req := insights.Request{SystemID: sys.ID, Snapshot: snap, ContextWindowDays: 3, Now: to, FullContextMode: full}
		a, err := insights.NewRules(s).Analyze(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := insights.NewRules(memSrc).Analyze(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if a.Context.Records != len(recs) || a.Context.Records != b.Context.Records || a.HealthScore != b.HealthScore ||
			!close(a.History.Energy.ChargeKWh, b.History.Energy.ChargeKWh) || !close(a.History.Energy.DischargeKWh, b.History.Energy.DischargeKWh) {
			t.Fatalf("full=%v: store %+v\nmemory %+v", full, a.Context, b.Context)
		}
	}
}

// Many workers read history windows at once (the embedded store reads them
// from SQLite through a small pool of connections): none may wait for ever
// on another's connection.
func TestHistoryWindowsConcurrently(t *testing.T) {
	s := testenv.Store(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sys := bmsgen.Systems()[0]
	to := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	recs := bmsgen.History(sys, 3, to.Add(-48*time.Hour), to, 15*time.Minute)
	if err := s.InsertHistory(ctx, recs); err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 32)
	for range 32 {
		go func() {
			n := 0
			err := s.EachRecord(ctx, sys.ID, to.Add(-48*time.Hour), to, func(bms.Record) error {
				n++
				time.Sleep(100 * time.Microsecond) // a consumer slower than the reader
				return nil
			})
			if err == nil && n != len(recs) {
				err = fmt.Errorf("read %d of %d records", n, len(recs))
			}
			errs <- err
		}()
	}
	for range 32 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
