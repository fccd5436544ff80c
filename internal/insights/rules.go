package insights

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/tasks"
)

// SnapshotAnalysis is what the current reading alone shows. A value that
// rests on a reading the snapshot did not measure is nil, absent from the
// metrics: never 0 (docs/DESIGN.md section 9). CapacityKWh,
// RatedCapacityAh, NominalVoltage and RatedCycles are 0 (absent) when
// unknown: none of them is ever 0 when known.
type SnapshotAnalysis struct {
	ImbalanceMV       *float64 `json:"imbalanceMv,omitempty" bson:"imbalanceMv,omitempty"`
	HasCells          bool     `json:"hasCells" bson:"hasCells"`
	ImbalanceClass    string   `json:"imbalanceClass,omitempty" bson:"imbalanceClass,omitempty"`
	ImbalanceLevel    string   `json:"imbalanceLevel,omitempty" bson:"imbalanceLevel,omitempty"`
	MaxTemperature    *float64 `json:"maxTemperature,omitempty" bson:"maxTemperature,omitempty"`
	MinTemperature    *float64 `json:"minTemperature,omitempty" bson:"minTemperature,omitempty"`
	MOSTemperature    *float64 `json:"mosTemperature,omitempty" bson:"mosTemperature,omitempty"`
	TemperatureLevel  string   `json:"temperatureLevel" bson:"temperatureLevel"`
	SOC               *float64 `json:"soc,omitempty" bson:"soc,omitempty"`
	SOCLevel          string   `json:"socLevel" bson:"socLevel"`
	VoltageV          *float64 `json:"voltageV,omitempty" bson:"voltageV,omitempty"`
	PowerW            *float64 `json:"powerW,omitempty" bson:"powerW,omitempty"`
	CurrentA          *float64 `json:"currentA,omitempty" bson:"currentA,omitempty"`
	Discharging       *bool    `json:"discharging,omitempty" bson:"discharging,omitempty"`
	RuntimeHours      float64  `json:"runtimeHours,omitempty" bson:"runtimeHours,omitempty"`
	HoursToFull       float64  `json:"hoursToFull,omitempty" bson:"hoursToFull,omitempty"`
	RemainingAh       *float64 `json:"remainingAh,omitempty" bson:"remainingAh,omitempty"`
	RemainingKWh      *float64 `json:"remainingKWh,omitempty" bson:"remainingKWh,omitempty"`
	CapacityKWh       float64  `json:"capacityKWh,omitempty" bson:"capacityKWh,omitempty"`
	RatedCapacityAh   float64  `json:"ratedCapacityAh,omitempty" bson:"ratedCapacityAh,omitempty"`
	NominalVoltage    float64  `json:"nominalVoltage,omitempty" bson:"nominalVoltage,omitempty"`
	CycleCount        *float64 `json:"cycleCount,omitempty" bson:"cycleCount,omitempty"`
	CycleLifeUsedPct  *float64 `json:"cycleLifeUsedPct,omitempty" bson:"cycleLifeUsedPct,omitempty"`
	CycleLifeClass    string   `json:"cycleLifeClass,omitempty" bson:"cycleLifeClass,omitempty"`
	Chemistry         string   `json:"chemistry,omitempty" bson:"chemistry,omitempty"`
	RatedCycles       float64  `json:"ratedCycles,omitempty" bson:"ratedCycles,omitempty"`
	CapacityRetention float64  `json:"capacityRetentionPct,omitempty" bson:"capacityRetentionPct,omitempty"`
	CapacityClass     string   `json:"capacityClass,omitempty" bson:"capacityClass,omitempty"`
	CapacitySource    string   `json:"capacitySource,omitempty" bson:"capacitySource,omitempty"` // history|snapshot
	// Unmeasured are the readings the snapshot did not measure (see
	// Unmeasured); empty when it measured them all.
	Unmeasured []string `json:"unmeasured,omitempty" bson:"unmeasured,omitempty"`
}

// isDischarging: the current was measured and is negative.
func (a SnapshotAnalysis) isDischarging() bool { return a.Discharging != nil && *a.Discharging }

// AnalyzeSnapshot analyses the current reading with the system's nominal
// data (sys may be nil).
func AnalyzeSnapshot(s bms.Snapshot, sys *bms.System) SnapshotAnalysis {
	a := SnapshotAnalysis{SOC: clone(s.StateOfCharge), MOSTemperature: clone(s.MOSTemperature), CurrentA: clone(s.Current),
		VoltageV: clone(s.OverallVoltage), RemainingAh: clone(s.RemainingCapacity), CycleCount: clone(s.CycleCount), Unmeasured: Unmeasured(s)}
	if mv, ok := ImbalanceMV(s); ok {
		a.ImbalanceMV, a.HasCells = &mv, true
		a.ImbalanceClass, a.ImbalanceLevel = ClassifyImbalance(mv), ImbalanceLevel(mv)
	}
	if temps := s.Temps(); len(temps) > 0 {
		a.MaxTemperature, a.MinTemperature = bms.F(slices.Max(temps)), bms.F(slices.Min(temps))
	}
	a.TemperatureLevel = TemperatureLevel(s.Temps(), s.MOSTemperature)
	a.SOCLevel = LevelUnknown
	if s.StateOfCharge != nil {
		a.SOCLevel = SOCLevel(*s.StateOfCharge)
	}
	if p, ok := MeasuredPower(s); ok {
		a.PowerW = &p
	}
	if s.Current != nil {
		d := *s.Current < 0
		a.Discharging = &d
		if s.RemainingCapacity != nil {
			if h, ok := RuntimeHours(*s.RemainingCapacity, *s.Current); ok {
				a.RuntimeHours = h
			}
		}
	}
	a.RatedCapacityAh, a.NominalVoltage = bms.V(s.FullCapacity), bms.V(s.OverallVoltage)
	if sys != nil {
		a.Chemistry = sys.Chemistry
		if sys.Capacity > 0 {
			a.RatedCapacityAh = sys.Capacity
		}
		if sys.Voltage > 0 {
			a.NominalVoltage = sys.Voltage
		}
	}
	full := bms.V(s.FullCapacity)
	if full == 0 {
		full = a.RatedCapacityAh
	}
	if s.RemainingCapacity != nil && s.Current != nil {
		if h, ok := HoursToFull(*s.RemainingCapacity, full, *s.Current); ok {
			a.HoursToFull = h
		}
	}
	v := bms.V(s.OverallVoltage)
	if v == 0 {
		v = a.NominalVoltage
	}
	if s.RemainingCapacity != nil && v > 0 {
		a.RemainingKWh = bms.F(KWh(*s.RemainingCapacity, v))
	}
	a.CapacityKWh = KWh(a.RatedCapacityAh, a.NominalVoltage)
	if s.CycleCount != nil {
		a.RatedCycles = RatedCycles(a.Chemistry)
		pct, class := CycleLifeUse(a.Chemistry, *s.CycleCount)
		a.CycleLifeUsedPct, a.CycleLifeClass = &pct, class
	}
	if a.RatedCapacityAh > 0 && s.StateOfCharge != nil && s.RemainingCapacity != nil {
		if est, ok := EstimatedCapacityAh(*s.StateOfCharge, *s.RemainingCapacity); ok {
			a.CapacityRetention = est / a.RatedCapacityAh * 100
			a.CapacityClass = ClassifyRetention(a.CapacityRetention)
			a.CapacitySource = "snapshot"
		}
	}
	return a
}

// Analysis is the full rules analysis of a request: the Result is built
// from it, and the Gemini tools answer from it.
type Analysis struct {
	SystemID    string           `json:"systemId"`
	System      *bms.System      `json:"-"`
	Snapshot    SnapshotAnalysis `json:"snapshot"`
	History     HistoryAnalysis  `json:"history"`
	HealthScore float64          `json:"healthScore"`
	Deductions  []Deduction      `json:"deductions"`
	Status      string           `json:"status"`
	Findings    []Finding        `json:"findings"`
	Context     ContextSummary   `json:"contextSummary"`
}

// Rules is the built-in analytics engine (provider "rules").
type Rules struct {
	src HistorySource
}

// NewRules returns the rules engine reading history from src (nil: the
// snapshot alone).
func NewRules(src HistorySource) *Rules { return &Rules{src: src} }

// Window is the context window of a request: [now − days, now).
func Window(req Request) (from, to time.Time, days int) {
	days = req.ContextWindowDays
	if days <= 0 {
		days = tasks.DefaultContextWindow
	}
	to = req.Now
	if to.IsZero() {
		to = time.Now()
	}
	to = to.UTC()
	return to.AddDate(0, 0, -days), to, days
}

// Generate implements Engine.
func (r *Rules) Generate(ctx context.Context, req Request) (*Result, error) {
	a, err := r.Analyze(ctx, req)
	if err != nil {
		return nil, err
	}
	return a.Result(), nil
}

// Analyze runs the analysis: rollups of the window, or with
// FullContextMode every raw record streamed. Errors of the HistorySource
// are returned wrapped.
func (r *Rules) Analyze(ctx context.Context, req Request) (*Analysis, error) {
	from, to, days := Window(req)
	a := &Analysis{SystemID: req.SystemID}
	var sys *bms.System
	if r.src != nil && req.SystemID != "" {
		var err error
		if sys, err = r.src.System(ctx, req.SystemID); err != nil {
			return nil, fmt.Errorf("insights: load system %s: %w", req.SystemID, err)
		}
	}
	a.System = sys
	a.Snapshot = AnalyzeSnapshot(req.Snapshot, sys)
	b := NewHistoryBuilder(ZoneFor(sys), req.FullContextMode)
	if r.src != nil && req.SystemID != "" {
		if req.FullContextMode {
			if err := r.src.EachRecord(ctx, req.SystemID, from, to, func(rec bms.Record) error {
				b.AddRecord(rec)
				return nil
			}); err != nil {
				return nil, fmt.Errorf("insights: read history of %s: %w", req.SystemID, err)
			}
		} else {
			rollups, err := r.src.HourlyRollups(ctx, req.SystemID, from, to)
			if err != nil {
				return nil, fmt.Errorf("insights: hourly rollups of %s: %w", req.SystemID, err)
			}
			for _, ru := range rollups {
				b.AddRollup(ru)
			}
		}
	}
	a.History = b.Finish(a.Snapshot.CapacityKWh)
	a.Context = ContextSummary{Records: a.History.Records, WindowDays: days, From: from, To: to}
	// Capacity retention: from the history's SOC ≥ 80 % samples when there
	// are any, else from the snapshot when it is at SOC ≥ 80 %.
	if a.History.HighSOCCount > 0 && a.Snapshot.RatedCapacityAh > 0 {
		a.Snapshot.CapacityRetention = a.History.CapacityAh / a.Snapshot.RatedCapacityAh * 100
		a.Snapshot.CapacityClass = ClassifyRetention(a.Snapshot.CapacityRetention)
		a.Snapshot.CapacitySource = "history"
	}
	a.HealthScore, a.Deductions = HealthScore(HealthInputs{
		Imbalance:   a.Snapshot.ImbalanceClass,
		Temperature: a.Snapshot.TemperatureLevel,
		Capacity:    a.Snapshot.CapacityClass,
		CycleLife:   a.Snapshot.CycleLifeClass,
	})
	a.Findings = findings(a, req.Snapshot)
	a.Status = statusOf(a.Findings)
	return a, nil
}

func statusOf(fs []Finding) string {
	st := StatusNormal
	for _, f := range fs {
		switch f.Severity {
		case SeverityCritical:
			return StatusCritical
		case SeverityWarning:
			st = StatusWarning
		}
	}
	return st
}

func round(v float64, places int) float64 {
	p := math.Pow(10, float64(places))
	return math.Round(v*p) / p
}

func findings(a *Analysis, s bms.Snapshot) []Finding {
	var fs []Finding
	add := func(sev, code string, value, threshold float64, format string, args ...any) {
		fs = append(fs, Finding{Severity: sev, Code: code, Message: fmt.Sprintf(format, args...), Value: round(value, 2), Threshold: threshold})
	}
	sn := a.Snapshot
	if sn.ImbalanceMV != nil {
		mv := *sn.ImbalanceMV
		switch sn.ImbalanceLevel {
		case LevelCritical:
			add(SeverityCritical, "CELL_IMBALANCE", mv, ImbalanceFairMV, "Cell imbalance %.0f mV is above %.0f mV (%s)", mv, ImbalanceFairMV, sn.ImbalanceClass)
		case LevelWarning:
			add(SeverityWarning, "CELL_IMBALANCE", mv, ImbalanceGoodMV, "Cell imbalance %.0f mV is above %.0f mV (%s)", mv, ImbalanceGoodMV, sn.ImbalanceClass)
		default:
			th := ImbalanceExcellentMV
			if sn.ImbalanceClass != "excellent" {
				th = ImbalanceGoodMV
			}
			add(SeverityInfo, "CELL_IMBALANCE", mv, th, "Cell balance %s: %.0f mV spread", sn.ImbalanceClass, mv)
		}
	}
	if sn.MaxTemperature != nil && sn.MinTemperature != nil {
		hi, lo := *sn.MaxTemperature, *sn.MinTemperature
		switch {
		case hi > TempCriticalHighC:
			add(SeverityCritical, "TEMPERATURE_HIGH", hi, TempCriticalHighC, "Battery temperature %.1f °C is above %.0f °C", hi, TempCriticalHighC)
		case hi > TempWarningHighC:
			add(SeverityWarning, "TEMPERATURE_HIGH", hi, TempWarningHighC, "Battery temperature %.1f °C is above %.0f °C", hi, TempWarningHighC)
		}
		switch {
		case lo < TempCriticalLowC:
			add(SeverityCritical, "TEMPERATURE_LOW", lo, TempCriticalLowC, "Battery temperature %.1f °C is below %.0f °C: do not charge", lo, TempCriticalLowC)
		case lo < TempWarningLowC:
			add(SeverityWarning, "TEMPERATURE_LOW", lo, TempWarningLowC, "Battery temperature %.1f °C is below %.0f °C", lo, TempWarningLowC)
		}
	}
	if mos := s.MOSTemperature; mos != nil && *mos > MOSCriticalC {
		mos := *mos
		add(SeverityCritical, "MOS_TEMPERATURE", mos, MOSCriticalC, "MOSFET temperature %.1f °C is above %.0f °C", mos, MOSCriticalC)
	}
	if sn.SOC != nil {
		switch soc := *sn.SOC; sn.SOCLevel {
		case LevelCritical:
			add(SeverityCritical, "SOC_LOW", soc, SOCCriticalPct, "State of charge %.0f %% is below %.0f %%", soc, SOCCriticalPct)
		case LevelWarning:
			add(SeverityWarning, "SOC_LOW", soc, SOCWarningPct, "State of charge %.0f %% is below %.0f %%", soc, SOCWarningPct)
		}
	}
	if sn.isDischarging() && sn.RuntimeHours > 0 && sn.CurrentA != nil {
		if sn.RemainingKWh != nil {
			add(SeverityInfo, "RUNTIME", sn.RuntimeHours, 0, "%.1f h of runtime left at the present %.1f A discharge (%.2f kWh remaining)", sn.RuntimeHours, math.Abs(*sn.CurrentA), *sn.RemainingKWh)
		} else { // no voltage to give the charge in kWh
			add(SeverityInfo, "RUNTIME", sn.RuntimeHours, 0, "%.1f h of runtime left at the present %.1f A discharge", sn.RuntimeHours, math.Abs(*sn.CurrentA))
		}
	}
	if sn.CapacityClass != "" {
		sev := SeverityInfo
		switch sn.CapacityClass {
		case "degraded":
			sev = SeverityCritical
		case "aging":
			sev = SeverityWarning
		}
		add(sev, "CAPACITY_RETENTION", sn.CapacityRetention, 80, "Capacity retention %.1f %% of the rated %.0f Ah (%s, from %s)", sn.CapacityRetention, sn.RatedCapacityAh, sn.CapacityClass, sn.CapacitySource)
	}
	if sn.CycleCount != nil && *sn.CycleCount > 0 && sn.CycleLifeUsedPct != nil {
		sev := SeverityInfo
		if sn.CycleLifeClass == "end-of-life" {
			sev = SeverityWarning
		}
		add(sev, "CYCLE_LIFE", *sn.CycleLifeUsedPct, 90, "%.0f cycles: %.0f %% of the %.0f-cycle life (%s)", *sn.CycleCount, *sn.CycleLifeUsedPct, sn.RatedCycles, sn.CycleLifeClass)
	}
	for _, al := range s.Alerts {
		add(SeverityWarning, "BMS_ALERT", 0, 0, "BMS alert: %s", al)
	}

	h := a.History
	if h.Records == 0 {
		add(SeverityInfo, "NO_HISTORY", 0, 0, "No history in the %d-day window: analysis of the current snapshot only", a.Context.WindowDays)
		return sortFindings(fs)
	}
	e := h.Energy
	if e.SolarClass != "" {
		sev := SeverityInfo
		if e.SolarClass == "deficit" {
			sev = SeverityWarning
		}
		add(sev, "SOLAR_SUFFICIENCY", e.SolarSufficiencyPct, 100, "Solar sufficiency %.0f %% (%s): %.2f kWh/day charged vs %.2f kWh/day consumed", e.SolarSufficiencyPct, e.SolarClass, e.DailyChargeKWh, e.DailyDischargeKWh)
	}
	if e.AutonomyDays > 0 {
		sev := SeverityInfo
		if e.AutonomyDays < 1 {
			sev = SeverityWarning
		}
		add(sev, "AUTONOMY", e.AutonomyDays, 1, "Autonomy %.1f days without charging at %.2f kWh/day", e.AutonomyDays, e.DailyDischargeKWh)
	}
	if h.SOCJumpCount > 0 {
		add(SeverityWarning, "SOC_JUMPS", float64(h.SOCJumpCount), SOCJumpPct, "%d SOC jumps of more than %.0f points within an hour (SOC calibration or BMS resets)", h.SOCJumpCount, SOCJumpPct)
	}
	if h.AnomalyCount > 0 {
		sev := SeverityInfo
		for _, an := range h.Anomalies {
			if an.Metric == "temperature" && an.Sigmas > 0 {
				sev = SeverityWarning // unexplained heat is a risk
			}
		}
		add(sev, "ANOMALIES", float64(h.AnomalyCount), AnomalySigma, "%d hourly readings beyond %.0fσ of normal (%s)", h.AnomalyCount, AnomalySigma, metricCounts(h.AnomalyByMetric))
	}
	if t, ok := h.Trends["imbalanceMv"]; ok && t.Slope > 0 && t.R2 >= 0.4 {
		if d, ok := t.DaysUntil(ImbalanceFairMV); ok && d <= 180 && t.Last < ImbalanceFairMV {
			add(SeverityWarning, "IMBALANCE_RISING", t.Slope, ImbalanceFairMV, "Cell imbalance rising %.2f mV/day (R² %.2f): reaches %.0f mV in about %.0f days", t.Slope, t.R2, ImbalanceFairMV, d)
		}
	}
	if t, ok := h.Trends["capacityAh"]; ok && t.Slope < 0 && t.R2 >= 0.4 && sn.RatedCapacityAh > 0 {
		if d, ok := t.DaysUntil(0.8 * sn.RatedCapacityAh); ok && d <= 365 {
			add(SeverityWarning, "CAPACITY_FADE", t.Slope, 0.8*sn.RatedCapacityAh, "Capacity falling %.3f Ah/day (R² %.2f): 80 %% retention in about %.0f days", t.Slope, t.R2, d)
		}
	}
	if t, ok := h.Trends["temperature"]; ok && t.Slope > 0.1 && t.R2 >= 0.4 {
		add(SeverityInfo, "TEMPERATURE_RISING", t.Slope, 0.1, "Temperature rising %.2f °C/day (R² %.2f)", t.Slope, t.R2)
	}
	return sortFindings(fs)
}

func metricCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := ""
	for i, k := range keys {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%s %d", k, m[k])
	}
	return out
}

func sevRank(s string) int {
	switch s {
	case SeverityCritical:
		return 0
	case SeverityWarning:
		return 1
	}
	return 2
}

func sortFindings(fs []Finding) []Finding {
	slices.SortStableFunc(fs, func(a, b Finding) int { return sevRank(a.Severity) - sevRank(b.Severity) })
	if fs == nil {
		fs = []Finding{}
	}
	return fs
}

// Metrics is the metrics map of the Result.
func (a *Analysis) Metrics() map[string]any {
	h := a.History
	m := map[string]any{
		"snapshot":    a.Snapshot,
		"deductions":  a.Deductions,
		"records":     h.Records,
		"historyMode": h.Mode,
	}
	if h.Records > 0 {
		// A mean over no measured sample is absent, not 0.
		if h.Energy.CoveredDays > 0 {
			m["energy"] = h.Energy
			m["load"] = h.Load
		}
		m["trends"] = h.Trends
		m["anomalyCount"] = h.AnomalyCount
		m["anomalies"] = h.Anomalies
		m["socJumpCount"] = h.SOCJumpCount
		m["socJumps"] = h.SOCJumps
		hist := map[string]any{
			"hours": h.Hours, "days": h.Days, "first": h.First, "last": h.Last,
			"highSocSamples": h.HighSOCCount, "socSamples": h.SOCSamples, "temperatureSamples": h.TempSamples, "cellSamples": h.CellSamples,
		}
		if h.SOCSamples > 0 {
			hist["avgSoc"] = round(h.AvgSOC, 2)
		}
		if h.TempSamples > 0 {
			hist["avgTemperature"], hist["maxHourlyTemperature"] = round(h.AvgTempMax, 2), round(h.MaxHourlyTemp, 2)
		}
		if h.CellSamples > 0 {
			hist["avgImbalanceMv"] = round(h.AvgImbalance, 2)
		}
		if h.HighSOCCount > 0 {
			hist["estimatedCapacityAh"] = round(h.CapacityAh, 2)
		}
		m["history"] = hist
	}
	return m
}

// Result builds the engine Result (provider "rules").
func (a *Analysis) Result() *Result {
	return &Result{
		HealthScore:    a.HealthScore,
		Status:         a.Status,
		Findings:       a.Findings,
		Metrics:        a.Metrics(),
		ContextSummary: a.Context,
		Provider:       "rules",
		Markdown:       a.Markdown(),
	}
}
