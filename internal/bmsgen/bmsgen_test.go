package bmsgen

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

var (
	genTo   = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	genFrom = genTo.AddDate(0, 0, -60)
)

func TestSystems(t *testing.T) {
	sys := Systems()
	var chems []string
	ids := map[string]bool{}
	for _, s := range sys {
		chems = append(chems, s.Chemistry)
		ids[s.ID] = true
		if s.Voltage <= 0 || s.Capacity <= 0 || s.Name == "" || (s.Latitude == 0 && s.Longitude == 0) {
			t.Fatalf("incomplete system %+v", s)
		}
	}
	slices.Sort(chems)
	if !reflect.DeepEqual(chems, []string{"Li-ion", "LiFePO4", "lead-acid"}) || len(ids) != 3 {
		t.Fatalf("chemistries %v ids %v", chems, ids)
	}
	if !reflect.DeepEqual(sys, Systems()) {
		t.Fatal("Systems not deterministic")
	}
}

func TestHistoryDeterministicAndRealistic(t *testing.T) {
	for _, sys := range Systems() {
		a := History(sys, 42, genFrom, genTo, 15*time.Minute)
		b := History(sys, 42, genFrom, genTo, 15*time.Minute)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%s: same seed, different history", sys.ID)
		}
		c := History(sys, 43, genFrom, genTo, 15*time.Minute)
		if reflect.DeepEqual(a, c) {
			t.Fatalf("%s: different seeds, same history", sys.ID)
		}
		// Streaming gives the same records.
		var s []bms.Record
		_ = Stream(sys, 42, genFrom, genTo, 15*time.Minute, func(r bms.Record) error { s = append(s, r); return nil })
		if !reflect.DeepEqual(a, s) {
			t.Fatalf("%s: Stream differs from History", sys.ID)
		}
		ids := map[string]bool{}
		var gaps int
		var charging, discharging bool
		var maxTemp float64
		for i, r := range a {
			if ids[r.ID] {
				t.Fatalf("duplicate id %s", r.ID)
			}
			ids[r.ID] = true
			if r.SystemID != sys.ID || r.Timestamp.Before(genFrom) || !r.Timestamp.Before(genTo) {
				t.Fatalf("record out of window: %+v", r)
			}
			if i > 0 {
				dt := r.At().Sub(a[i-1].At())
				if dt <= 0 {
					t.Fatal("not in time order")
				}
				if dt >= 2*time.Hour {
					gaps++
				}
			}
			an := r.Analysis
			if an.StateOfCharge == nil || *an.StateOfCharge < 0 || *an.StateOfCharge > 100 || an.Current == nil || len(an.CellVoltages) == 0 || an.Temperature == nil {
				t.Fatalf("implausible snapshot %s", js(an))
			}
			// The generator writes the app's scalar main sensor, not temperatures[].
			if len(an.Temperatures) != 0 || len(an.Temps()) != 1 {
				t.Fatalf("want the scalar temperature only: %s", js(an))
			}
			charging = charging || *an.Current > 1
			discharging = discharging || *an.Current < -1
			maxTemp = max(maxTemp, slices.Max(an.Temps()))
		}
		if gaps < 3 || !charging || !discharging || maxTemp < 38 {
			t.Fatalf("%s: gaps %d charging %v discharging %v max temp %.1f", sys.ID, gaps, charging, discharging, maxTemp)
		}
	}
}

func TestSnapshotDeterministic(t *testing.T) {
	sys := Systems()[0]
	at := time.Date(2025, 6, 1, 21, 0, 0, 0, time.UTC)
	a, b := Snapshot(sys, 1, at), Snapshot(sys, 1, at)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("Snapshot not deterministic")
	}
	if a.StateOfCharge == nil || a.OverallVoltage == nil || a.FullCapacity == nil || a.CycleCount == nil || a.Current == nil {
		t.Fatalf("unmeasured fields in LiFePO4 snapshot %s", js(a))
	}
	if *a.StateOfCharge <= 0 || *a.OverallVoltage < 45 || *a.OverallVoltage > 58 || *a.FullCapacity <= 0 || *a.CycleCount <= 0 {
		t.Fatalf("implausible LiFePO4 snapshot %s", js(a))
	}
	// 21:00 local in the Alps (UTC+1 solar): no sun, the battery discharges.
	if *a.Current >= 0 {
		t.Fatalf("evening snapshot should discharge: %s", js(a))
	}
}

// js shows a snapshot with its pointer fields' values.
func js(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
