package insights

import (
	"strings"

	"github.com/bmsview/insights/internal/bms"
)

// A reading the BMS did not measure (null or absent) is "not measured",
// never 0 °C or 0 % (docs/DESIGN.md section 9): the engine draws no
// finding, metric or sentence from it, and says once which ones they were.

// reading is one thing a snapshot may or may not have measured: Key is its
// name in the metrics (the snapshot's JSON field), Label its name in the
// report.
type reading struct {
	Key, Label string
	measured   func(s bms.Snapshot) bool
}

// readings are those the analysis uses, in the report's order.
var readings = []reading{
	{"stateOfCharge", "state of charge", func(s bms.Snapshot) bool { return s.StateOfCharge != nil }},
	{"overallVoltage", "voltage", func(s bms.Snapshot) bool { return s.OverallVoltage != nil }},
	{"current", "current", func(s bms.Snapshot) bool { return s.Current != nil }},
	{"power", "power", func(s bms.Snapshot) bool { _, ok := MeasuredPower(s); return ok }},
	{"remainingCapacity", "remaining capacity", func(s bms.Snapshot) bool { return s.RemainingCapacity != nil }},
	{"fullCapacity", "full capacity", func(s bms.Snapshot) bool { return s.FullCapacity != nil }},
	{"cycleCount", "cycle count", func(s bms.Snapshot) bool { return s.CycleCount != nil }},
	{"cellVoltages", "cell voltages", func(s bms.Snapshot) bool { _, ok := ImbalanceMV(s); return ok }},
	{"temperature", "battery temperature", func(s bms.Snapshot) bool { return len(s.Temps()) > 0 }},
	{"mosTemperature", "MOSFET temperature", func(s bms.Snapshot) bool { return s.MOSTemperature != nil }},
}

// Unmeasured names the readings the snapshot did not measure (their
// metrics keys: stateOfCharge, overallVoltage, current, power,
// remainingCapacity, fullCapacity, cycleCount, cellVoltages, temperature,
// mosTemperature); nil when it measured them all.
func Unmeasured(s bms.Snapshot) []string {
	var out []string
	for _, r := range readings {
		if !r.measured(s) {
			out = append(out, r.Key)
		}
	}
	return out
}

// unmeasuredLabels is the report's wording of Unmeasured keys.
func unmeasuredLabels(keys []string) string {
	labels := make([]string, 0, len(keys))
	for _, k := range keys {
		for _, r := range readings {
			if r.Key == k {
				labels = append(labels, r.Label)
			}
		}
	}
	return strings.Join(labels, ", ")
}

// MeasuredPower is the snapshot's power in W as EffectivePower gives it,
// with ok false when it was not measured: no power reading and not both
// voltage and current to compute it from.
func MeasuredPower(s bms.Snapshot) (w float64, ok bool) {
	if s.Power == nil && (s.OverallVoltage == nil || s.Current == nil) {
		return 0, false
	}
	return EffectivePower(s), true
}

// clone copies a reading, so an analysis does not alias its request.
func clone(p *float64) *float64 {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// one is 1 for a measured reading and 0 for an unmeasured one: the
// per-field sample counts of a Rollup.
func one(p *float64) int {
	if p == nil {
		return 0
	}
	return 1
}
