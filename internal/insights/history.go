package insights

import (
	"context"
	"sort"
	"sync"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// HistorySource is where the engine reads a system's history.
type HistorySource interface {
	System(ctx context.Context, systemID string) (*bms.System, error) // (nil, nil) when unknown
	// EachRecord streams raw records of systemID with from <= timestamp < to in time order, never loading all at once.
	EachRecord(ctx context.Context, systemID string, from, to time.Time, fn func(bms.Record) error) error
	// HourlyRollups returns per-hour aggregates computed by a Mongo aggregation ($group with only $sum and $count — FerretDB v1 limits; averages = sum/count).
	HourlyRollups(ctx context.Context, systemID string, from, to time.Time) ([]Rollup, error)
}

// Rollup is the aggregate of one hour of a system's history: counts and
// sums only (FerretDB v1's $group has $sum and $count), so every mean is
// Sum/Count. The per-sample terms of the conditional sums come from Derive.
// Each sum has the count of the samples that measured it: an unmeasured
// reading adds 0 to the sum and nothing to its count, so it is never
// averaged in as 0. Count is every sample.
type Rollup struct {
	Hour  time.Time `json:"hour"` // start of the hour, UTC
	Count int       `json:"count"`

	SumSOC         float64 `json:"sumSoc"`
	SOCCount       int     `json:"socCount"`
	SumVoltage     float64 `json:"sumVoltage"`
	VoltageCount   int     `json:"voltageCount"`
	SumCurrent     float64 `json:"sumCurrent"`
	CurrentCount   int     `json:"currentCount"`
	SumPower       float64 `json:"sumPower"` // raw reported power
	PowerCount     int     `json:"powerCount"`
	SumRemainingAh float64 `json:"sumRemainingAh"`
	RemainingCount int     `json:"remainingCount"`
	SumCycleCount  float64 `json:"sumCycleCount"`
	CyclesCount    int     `json:"cyclesCount"` // samples with a cycle count
	SumMOSTemp     float64 `json:"sumMosTemp"`
	MOSTempCount   int     `json:"mosTempCount"`

	EnergyCount   int     `json:"energyCount"`   // samples with a power (MeasuredPower)
	SumChargeW    float64 `json:"sumChargeW"`    // Σ max(P,0), P = EffectivePower
	SumDischargeW float64 `json:"sumDischargeW"` // Σ max(−P,0)

	TempCount  int     `json:"tempCount"`  // samples with temperatures
	SumTempMax float64 `json:"sumTempMax"` // Σ hottest sensor

	CellCount      int     `json:"cellCount"` // samples with cell data
	SumImbalanceMV float64 `json:"sumImbalanceMv"`

	HighSOCCount int     `json:"highSocCount"` // samples at SOC ≥ 80 %
	SumEstCapAh  float64 `json:"sumEstCapAh"`  // Σ remaining/(SOC/100) over those
}

// Add folds one sample into the rollup (the in-memory equivalent of the
// store's $group).
func (r *Rollup) Add(s bms.Snapshot) {
	d := Derive(s)
	r.Count++
	r.SumSOC += bms.V(s.StateOfCharge)
	r.SOCCount += one(s.StateOfCharge)
	r.SumVoltage += bms.V(s.OverallVoltage)
	r.VoltageCount += one(s.OverallVoltage)
	r.SumCurrent += bms.V(s.Current)
	r.CurrentCount += one(s.Current)
	r.SumPower += bms.V(s.Power)
	r.PowerCount += one(s.Power)
	r.SumRemainingAh += bms.V(s.RemainingCapacity)
	r.RemainingCount += one(s.RemainingCapacity)
	r.SumCycleCount += bms.V(s.CycleCount)
	r.CyclesCount += one(s.CycleCount)
	r.SumMOSTemp += bms.V(s.MOSTemperature)
	r.MOSTempCount += one(s.MOSTemperature)
	r.EnergyCount += d.HasPower
	r.SumChargeW += d.ChargeW
	r.SumDischargeW += d.DischargeW
	r.TempCount += d.HasTemp
	r.SumTempMax += d.TempMax
	r.CellCount += d.HasCells
	r.SumImbalanceMV += d.ImbalanceMV
	r.HighSOCCount += d.HighSOC
	r.SumEstCapAh += d.EstCapAh
}

func div(sum float64, n int) float64 {
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// Mean values of the hour over the samples that measured them (0 when
// none did: check the count first).
func (r Rollup) MeanSOC() float64        { return div(r.SumSOC, r.SOCCount) }
func (r Rollup) MeanVoltage() float64    { return div(r.SumVoltage, r.VoltageCount) }
func (r Rollup) MeanCurrent() float64    { return div(r.SumCurrent, r.CurrentCount) }
func (r Rollup) MeanChargeW() float64    { return div(r.SumChargeW, r.EnergyCount) }
func (r Rollup) MeanDischargeW() float64 { return div(r.SumDischargeW, r.EnergyCount) }
func (r Rollup) MeanTempMax() float64    { return div(r.SumTempMax, r.TempCount) }
func (r Rollup) MeanImbalanceMV() float64 {
	return div(r.SumImbalanceMV, r.CellCount)
}

// RollupRecords computes hourly rollups of time-ordered records in memory.
func RollupRecords(recs []bms.Record) []Rollup {
	var out []Rollup
	for _, rec := range recs {
		h := rec.At().Truncate(time.Hour)
		if len(out) == 0 || !out[len(out)-1].Hour.Equal(h) {
			out = append(out, Rollup{Hour: h})
		}
		out[len(out)-1].Add(rec.Analysis)
	}
	return out
}

// MemorySource is an in-memory HistorySource (tests, benchmarks, tools).
type MemorySource struct {
	mu      sync.RWMutex
	systems map[string]bms.System
	records map[string][]bms.Record // per system, time-ordered
	// Err, when set, is returned by every call (to test error paths).
	Err error
}

// NewMemorySource holds the given systems and records (sorted here).
func NewMemorySource(systems []bms.System, records []bms.Record) *MemorySource {
	m := &MemorySource{systems: map[string]bms.System{}, records: map[string][]bms.Record{}}
	for _, s := range systems {
		m.systems[s.ID] = s
	}
	m.Add(records...)
	return m
}

// Add appends records.
func (m *MemorySource) Add(records ...bms.Record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	touched := map[string]bool{}
	for _, r := range records {
		m.records[r.SystemID] = append(m.records[r.SystemID], r)
		touched[r.SystemID] = true
	}
	for id := range touched {
		rs := m.records[id]
		if !sort.SliceIsSorted(rs, func(i, j int) bool { return rs[i].At().Before(rs[j].At()) }) {
			sort.SliceStable(rs, func(i, j int) bool { return rs[i].At().Before(rs[j].At()) })
		}
	}
}

func (m *MemorySource) window(systemID string, from, to time.Time) []bms.Record {
	rs := m.records[systemID]
	i := sort.Search(len(rs), func(i int) bool { return !rs[i].At().Before(from) })
	j := sort.Search(len(rs), func(i int) bool { return !rs[i].At().Before(to) })
	if j < i {
		return nil
	}
	return rs[i:j]
}

// System implements HistorySource.
func (m *MemorySource) System(ctx context.Context, systemID string) (*bms.System, error) {
	if m.Err != nil {
		return nil, m.Err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	s, ok := m.systems[systemID]
	if !ok {
		return nil, nil
	}
	return &s, nil
}

// EachRecord implements HistorySource.
func (m *MemorySource) EachRecord(ctx context.Context, systemID string, from, to time.Time, fn func(bms.Record) error) error {
	if m.Err != nil {
		return m.Err
	}
	m.mu.RLock()
	rs := m.window(systemID, from, to)
	m.mu.RUnlock()
	for i, r := range rs {
		if i&4095 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// HourlyRollups implements HistorySource.
func (m *MemorySource) HourlyRollups(ctx context.Context, systemID string, from, to time.Time) ([]Rollup, error) {
	if m.Err != nil {
		return nil, m.Err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return RollupRecords(m.window(systemID, from, to)), nil
}
