package insights

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"google.golang.org/genai"
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

// seriesValue reads a metric's sum and sample count from an hourly rollup.
var seriesValue = map[string]func(Rollup) (float64, int){
	"soc":         func(x Rollup) (float64, int) { return x.SumSOC, x.Count },
	"voltage":     func(x Rollup) (float64, int) { return x.SumVoltage, x.Count },
	"current":     func(x Rollup) (float64, int) { return x.SumCurrent, x.Count },
	"chargeW":     func(x Rollup) (float64, int) { return x.SumChargeW, x.Count },
	"dischargeW":  func(x Rollup) (float64, int) { return x.SumDischargeW, x.Count },
	"temperature": func(x Rollup) (float64, int) { return x.SumTempMax, x.TempCount },
	"imbalanceMv": func(x Rollup) (float64, int) { return x.SumImbalanceMV, x.CellCount },
	"remainingAh": func(x Rollup) (float64, int) { return x.SumRemainingAh, x.Count },
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

// Usage is the answer of analyze_usage_patterns.
type Usage struct {
	Load      LoadProfile `json:"load"`
	LastDays  []DayEnergy `json:"lastDays"`
	AvgDaily  float64     `json:"avgDailyConsumptionKWh"`
	PeakHourW float64     `json:"peakHourAvgW"`
}

// UsagePatterns is the load profile and the last 14 days of energy.
func UsagePatterns(a *Analysis) Usage {
	h := a.History
	days := h.Energy.PerDay
	if len(days) > 14 {
		days = days[len(days)-14:]
	}
	return Usage{Load: h.Load, LastDays: days, AvgDaily: h.Energy.DailyDischargeKWh, PeakHourW: h.Load.HourlyAvgW[h.Load.PeakHour]}
}

// EnergyBudget is the answer of calculate_energy_budget.
type EnergyBudget struct {
	CapacityKWh         float64 `json:"capacityKWh"`
	UsableKWh           float64 `json:"usableKWh"`
	DailyGenerationKWh  float64 `json:"dailyGenerationKWh"`
	DailyConsumptionKWh float64 `json:"dailyConsumptionKWh"`
	AddedLoadKWh        float64 `json:"addedLoadKWhPerDay"`
	SolarSufficiencyPct float64 `json:"solarSufficiencyPct"`
	SolarClass          string  `json:"solarClass"`
	AutonomyDays        float64 `json:"autonomyDays"`
	DailyBalanceKWh     float64 `json:"dailyBalanceKWh"`
}

// EnergyBudgetFor computes the budget with an extra load of addW for
// hoursPerDay (0 W: the present budget).
func EnergyBudgetFor(a *Analysis, addW, hoursPerDay float64) EnergyBudget {
	e := a.History.Energy
	b := EnergyBudget{CapacityKWh: a.Snapshot.CapacityKWh, UsableKWh: a.Snapshot.CapacityKWh * AutonomyUsableFraction,
		DailyGenerationKWh: e.DailyChargeKWh, AddedLoadKWh: addW * hoursPerDay / 1000}
	b.DailyConsumptionKWh = e.DailyDischargeKWh + b.AddedLoadKWh
	b.DailyBalanceKWh = b.DailyGenerationKWh - b.DailyConsumptionKWh
	if pct, class, ok := SolarSufficiency(b.DailyGenerationKWh, b.DailyConsumptionKWh); ok {
		b.SolarSufficiencyPct, b.SolarClass = round(pct, 1), class
	}
	if d, ok := AutonomyDays(b.CapacityKWh, b.DailyConsumptionKWh); ok {
		b.AutonomyDays = round(d, 2)
	}
	return b
}
