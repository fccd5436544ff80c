package insights

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"google.golang.org/genai"

	"github.com/bmsview/insights/internal/bms"
)

// Tool names (the BMS app's).
const (
	ToolRequestBMSData      = "request_bms_data"
	ToolSystemAnalytics     = "getSystemAnalytics"
	ToolPredictTrends       = "predict_battery_trends"
	ToolUsagePatterns       = "analyze_usage_patterns"
	ToolEnergyBudget        = "calculate_energy_budget"
	maxSeriesPoints         = 500
	defaultForecastDaysAhea = 30
)

func toolDeclarations() []*genai.FunctionDeclaration {
	str := func(desc string, enum ...string) *genai.Schema {
		return &genai.Schema{Type: genai.TypeString, Description: desc, Enum: enum}
	}
	num := func(desc string) *genai.Schema { return &genai.Schema{Type: genai.TypeNumber, Description: desc} }
	obj := func(props map[string]*genai.Schema, required ...string) *genai.Schema {
		return &genai.Schema{Type: genai.TypeObject, Properties: props, Required: required}
	}
	return []*genai.FunctionDeclaration{
		{Name: ToolRequestBMSData, Description: "Hourly or daily means of one metric over the last N days of the context window.",
			Parameters: obj(map[string]*genai.Schema{
				"metric":      str("the metric", SeriesMetrics...),
				"days":        num("how many days back from the end of the window (default: the whole window)"),
				"granularity": str("hourly or daily (default daily)", "hourly", "daily"),
			}, "metric")},
		{Name: ToolSystemAnalytics, Description: "The full rule-based analytics: health score, findings, energy balance, load profile, trends, anomalies.",
			Parameters: obj(map[string]*genai.Schema{})},
		{Name: ToolPredictTrends, Description: "Least-squares daily trend of a metric with R² and a forecast N days ahead.",
			Parameters: obj(map[string]*genai.Schema{
				"metric":    str("the metric", "capacityAh", "imbalanceMv", "temperature", "soc", "voltage", "chargeKWh", "dischargeKWh"),
				"daysAhead": num("forecast horizon in days (default 30)"),
			}, "metric")},
		{Name: ToolUsagePatterns, Description: "Load profile: day vs night (18:00-06:00) consumption, mean discharge power per hour of day, daily energy.",
			Parameters: obj(map[string]*genai.Schema{})},
		{Name: ToolEnergyBudget, Description: "Energy budget: daily generation vs consumption in kWh, solar sufficiency and autonomy, optionally with an added load.",
			Parameters: obj(map[string]*genai.Schema{
				"additionalLoadW": num("an extra load in W (default 0)"),
				"hoursPerDay":     num("hours per day the extra load runs (default 24)"),
			})},
	}
}

// historyError marks a tool failure caused by the HistorySource (returned
// to the caller, not to the model).
type historyError struct{ err error }

func (e *historyError) Error() string { return e.err.Error() }

type geminiTools struct {
	g   *Gemini
	a   *Analysis
	req Request
}

func toMap(v any) map[string]any {
	b, err := json.Marshal(v)
	if err != nil {
		return map[string]any{"error": err.Error()}
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return map[string]any{"result": json.RawMessage(b)}
	}
	return m
}

func argNum(args map[string]any, k string, def float64) float64 {
	if v, ok := args[k].(float64); ok && !math.IsNaN(v) {
		return v
	}
	return def
}

func argStr(args map[string]any, k, def string) string {
	if v, ok := args[k].(string); ok && v != "" {
		return v
	}
	return def
}

func (t *geminiTools) call(ctx context.Context, name string, args map[string]any) (map[string]any, error) {
	switch name {
	case ToolRequestBMSData:
		from, to, _ := Window(t.req)
		if d := argNum(args, "days", 0); d > 0 {
			from = maxTime(from, to.Add(-time.Duration(d*24)*time.Hour))
		}
		pts, err := t.g.rules.Series(ctx, t.req.SystemID, from, to, argStr(args, "metric", "soc"), argStr(args, "granularity", "daily"), ZoneFor(t.a.System))
		if err != nil {
			return nil, err
		}
		return map[string]any{"metric": argStr(args, "metric", "soc"), "points": pts, "count": len(pts)}, nil
	case ToolSystemAnalytics:
		m := toMap(t.a.Metrics())
		m["healthScore"], m["status"], m["findings"] = t.a.HealthScore, t.a.Status, toMap(map[string]any{"f": t.a.Findings})["f"]
		return m, nil
	case ToolPredictTrends:
		p, err := PredictTrend(t.a, argStr(args, "metric", "capacityAh"), argNum(args, "daysAhead", defaultForecastDaysAhea))
		if err != nil {
			return nil, err
		}
		return toMap(p), nil
	case ToolUsagePatterns:
		return toMap(UsagePatterns(t.a)), nil
	case ToolEnergyBudget:
		return toMap(EnergyBudgetFor(t.a, argNum(args, "additionalLoadW", 0), argNum(args, "hoursPerDay", 24))), nil
	}
	return nil, fmt.Errorf("unknown tool %q", name)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// SeriesMetrics are the metrics Series knows.
var SeriesMetrics = []string{"soc", "voltage", "current", "chargeW", "dischargeW", "temperature", "imbalanceMv", "remainingAh"}

// seriesValue reads a metric's sum and the count of samples that measured
// it from an hourly rollup (a period where none did has no point).
var seriesValue = map[string]func(Rollup) (float64, int){
	"soc":         func(x Rollup) (float64, int) { return x.SumSOC, x.SOCCount },
	"voltage":     func(x Rollup) (float64, int) { return x.SumVoltage, x.VoltageCount },
	"current":     func(x Rollup) (float64, int) { return x.SumCurrent, x.CurrentCount },
	"chargeW":     func(x Rollup) (float64, int) { return x.SumChargeW, x.EnergyCount },
	"dischargeW":  func(x Rollup) (float64, int) { return x.SumDischargeW, x.EnergyCount },
	"temperature": func(x Rollup) (float64, int) { return x.SumTempMax, x.TempCount },
	"imbalanceMv": func(x Rollup) (float64, int) { return x.SumImbalanceMV, x.CellCount },
	"remainingAh": func(x Rollup) (float64, int) { return x.SumRemainingAh, x.RemainingCount },
}

// Point is one value of a series.
type Point struct {
	Time  time.Time `json:"time"`
	Value float64   `json:"value"`
}

// Series returns hourly or daily (local day) means of a metric from the
// hourly rollups, at most 500 points (the most recent).
func (r *Rules) Series(ctx context.Context, systemID string, from, to time.Time, metric, granularity string, zone *time.Location) ([]Point, error) {
	if r.src == nil {
		return nil, nil
	}
	val, ok := seriesValue[metric]
	if !ok {
		return nil, fmt.Errorf("unknown metric %q (one of %v)", metric, SeriesMetrics)
	}
	rolls, err := r.src.HourlyRollups(ctx, systemID, from, to)
	if err != nil {
		return nil, &historyError{fmt.Errorf("insights: hourly rollups of %s: %w", systemID, err)}
	}
	if zone == nil {
		zone = time.UTC
	}
	var pts []Point
	var sum float64
	var n int
	var cur time.Time
	flush := func() {
		if n > 0 {
			pts = append(pts, Point{Time: cur, Value: round(sum/float64(n), 3)})
		}
		sum, n = 0, 0
	}
	for _, x := range rolls {
		key := x.Hour
		if granularity != "hourly" {
			lt := x.Hour.In(zone)
			key = time.Date(lt.Year(), lt.Month(), lt.Day(), 0, 0, 0, 0, zone)
		}
		if !key.Equal(cur) {
			flush()
			cur = key
		}
		s, c := val(x)
		sum += s
		n += c
	}
	flush()
	if len(pts) > maxSeriesPoints {
		pts = pts[len(pts)-maxSeriesPoints:]
	}
	return pts, nil
}

// Prediction is a trend with its forecast.
type Prediction struct {
	Metric    string  `json:"metric"`
	Trend     Trend   `json:"trend"`
	DaysAhead float64 `json:"daysAhead"`
	Now       float64 `json:"now"`
	Forecast  float64 `json:"forecast"`
	// DaysToThreshold: when the line reaches the metric's threshold
	// (imbalance 100 mV, capacity 80 % of rated, temperature 45 °C, SOC
	// 20 %); -1 when it does not approach it.
	Threshold       float64 `json:"threshold,omitempty"`
	DaysToThreshold float64 `json:"daysToThreshold"`
}

// PredictTrend forecasts a metric of the analysis daysAhead days on.
func PredictTrend(a *Analysis, metric string, daysAhead float64) (Prediction, error) {
	t, ok := a.History.Trends[metric]
	if !ok {
		return Prediction{}, fmt.Errorf("no trend for %q: not enough days of history (need %d)", metric, minTrendPoints)
	}
	p := Prediction{Metric: metric, Trend: t, DaysAhead: daysAhead, Now: t.Last, Forecast: t.At(t.LastX + daysAhead), DaysToThreshold: -1}
	switch metric {
	case "imbalanceMv":
		p.Threshold = ImbalanceFairMV
	case "capacityAh":
		p.Threshold = 0.8 * a.Snapshot.RatedCapacityAh
	case "temperature":
		p.Threshold = TempCriticalHighC
	case "soc":
		p.Threshold = SOCWarningPct
	}
	if p.Threshold != 0 {
		if d, ok := t.DaysUntil(p.Threshold); ok {
			p.DaysToThreshold = d
		}
	}
	return p, nil
}

// Usage is the answer of analyze_usage_patterns. Without power in the
// history there is no load profile: only Note says so.
type Usage struct {
	Load      *LoadProfile `json:"load,omitempty"`
	LastDays  []DayEnergy  `json:"lastDays,omitempty"`
	AvgDaily  *float64     `json:"avgDailyConsumptionKWh,omitempty"`
	PeakHourW *float64     `json:"peakHourAvgW,omitempty"`
	Note      string       `json:"note,omitempty"`
}

// noEnergyNote says why the window has no energy figures.
func noEnergyNote(h HistoryAnalysis) string {
	if h.Records == 0 {
		return "no history in the context window: no energy figures"
	}
	return "no power (nor voltage and current) measured in the window: no energy figures"
}

// UsagePatterns is the load profile and the last 14 days of energy.
func UsagePatterns(a *Analysis) Usage {
	h := a.History
	if h.Energy.CoveredDays == 0 {
		return Usage{Note: noEnergyNote(h)}
	}
	days := h.Energy.PerDay
	if len(days) > 14 {
		days = days[len(days)-14:]
	}
	load := h.Load
	return Usage{Load: &load, LastDays: days, AvgDaily: bms.F(h.Energy.DailyDischargeKWh), PeakHourW: bms.F(h.Load.HourlyAvgW[h.Load.PeakHour])}
}

// EnergyBudget is the answer of calculate_energy_budget. What rests on an
// unknown capacity, or on a window without power, is absent (Note says
// which), never 0.
type EnergyBudget struct {
	CapacityKWh         float64  `json:"capacityKWh,omitempty"`
	UsableKWh           float64  `json:"usableKWh,omitempty"`
	DailyGenerationKWh  *float64 `json:"dailyGenerationKWh,omitempty"`
	DailyConsumptionKWh *float64 `json:"dailyConsumptionKWh,omitempty"`
	AddedLoadKWh        float64  `json:"addedLoadKWhPerDay"`
	SolarSufficiencyPct *float64 `json:"solarSufficiencyPct,omitempty"`
	SolarClass          string   `json:"solarClass,omitempty"`
	AutonomyDays        float64  `json:"autonomyDays,omitempty"`
	DailyBalanceKWh     *float64 `json:"dailyBalanceKWh,omitempty"`
	Note                string   `json:"note,omitempty"`
}

// EnergyBudgetFor computes the budget with an extra load of addW for
// hoursPerDay (0 W: the present budget).
func EnergyBudgetFor(a *Analysis, addW, hoursPerDay float64) EnergyBudget {
	e := a.History.Energy
	b := EnergyBudget{CapacityKWh: a.Snapshot.CapacityKWh, UsableKWh: a.Snapshot.CapacityKWh * AutonomyUsableFraction,
		AddedLoadKWh: addW * hoursPerDay / 1000}
	var notes []string
	if b.CapacityKWh == 0 {
		notes = append(notes, "capacity unknown (no rated capacity and voltage): no autonomy")
	}
	if e.CoveredDays == 0 {
		notes = append(notes, noEnergyNote(a.History))
		b.Note = strings.Join(notes, "; ")
		return b
	}
	b.Note = strings.Join(notes, "; ")
	gen, cons := e.DailyChargeKWh, e.DailyDischargeKWh+b.AddedLoadKWh
	b.DailyGenerationKWh, b.DailyConsumptionKWh, b.DailyBalanceKWh = &gen, &cons, bms.F(gen-cons)
	if pct, class, ok := SolarSufficiency(gen, cons); ok {
		b.SolarSufficiencyPct, b.SolarClass = bms.F(round(pct, 1)), class
	}
	if d, ok := AutonomyDays(b.CapacityKWh, cons); ok {
		b.AutonomyDays = round(d, 2)
	}
	return b
}
