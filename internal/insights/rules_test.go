package insights

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
)

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

func testSystemHistory() (bms.System, []bms.Record, time.Time) {
	sys := bms.System{ID: "sys-test-1", Name: "Test cabin", Chemistry: "LiFePO4", Voltage: 51.2, Capacity: 280,
		Latitude: 46.5547, Longitude: 8.5616, MaxAmpsSolarCharging: 60}
	now := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	return sys, bmsgen.History(sys, 3, now.AddDate(0, 0, -30), now, 15*time.Minute), now
}

func testSnapshot() bms.Snapshot {
	return bms.Snapshot{StateOfCharge: bms.F(85), OverallVoltage: bms.F(53.1), Current: bms.F(-12), Power: bms.F(-637), RemainingCapacity: bms.F(238), FullCapacity: bms.F(280),
		CycleCount: bms.F(300), CellVoltageDifference: bms.F(0.024), Temperatures: []float64{24, 25}, MOSTemperature: bms.F(30), HardwareSystemID: "HW-1"}
}

func TestThresholdTables(t *testing.T) {
	for _, c := range []struct {
		mv    float64
		class string
		level string
	}{{0, "excellent", LevelNormal}, {29.9, "excellent", LevelNormal}, {30, "good", LevelNormal}, {49.9, "good", LevelNormal},
		{50, "fair", LevelNormal}, {50.1, "fair", LevelWarning}, {99.9, "fair", LevelWarning}, {100, "poor", LevelWarning}, {100.1, "poor", LevelCritical}} {
		if g := ClassifyImbalance(c.mv); g != c.class {
			t.Errorf("ClassifyImbalance(%v) = %s, want %s", c.mv, g, c.class)
		}
		if g := ImbalanceLevel(c.mv); g != c.level {
			t.Errorf("ImbalanceLevel(%v) = %s, want %s", c.mv, g, c.level)
		}
	}
	for _, c := range []struct {
		temps []float64
		mos   *float64 // nil: not measured
		want  string
	}{{nil, nil, LevelUnknown}, {[]float64{25}, nil, LevelNormal}, {[]float64{35}, nil, LevelNormal}, {[]float64{35.1}, nil, LevelWarning},
		{[]float64{45}, nil, LevelWarning}, {[]float64{20, 45.1}, nil, LevelCritical}, {[]float64{5}, nil, LevelNormal}, {[]float64{4.9}, nil, LevelWarning},
		{[]float64{0}, nil, LevelWarning}, {[]float64{-0.1}, nil, LevelCritical}, {[]float64{25}, bms.F(80), LevelNormal}, {[]float64{25}, bms.F(80.1), LevelCritical},
		{nil, bms.F(81), LevelCritical}, {nil, bms.F(30), LevelNormal}, {[]float64{25}, bms.F(0), LevelNormal}} {
		if g := TemperatureLevel(c.temps, c.mos); g != c.want {
			mos := "nil"
			if c.mos != nil {
				mos = fmt.Sprint(*c.mos)
			}
			t.Errorf("TemperatureLevel(%v, %s) = %s, want %s", c.temps, mos, g, c.want)
		}
	}
	for _, c := range []struct {
		soc  float64
		want string
	}{{0, LevelCritical}, {9.9, LevelCritical}, {10, LevelWarning}, {19.9, LevelWarning}, {20, LevelNormal}, {100, LevelNormal}} {
		if g := SOCLevel(c.soc); g != c.want {
			t.Errorf("SOCLevel(%v) = %s, want %s", c.soc, g, c.want)
		}
	}
	for _, c := range []struct {
		pct  float64
		want string
	}{{100, "excellent"}, {95, "excellent"}, {94.9, "good"}, {90, "good"}, {89.9, "fair"}, {85, "fair"}, {84.9, "aging"}, {80, "aging"}, {79.9, "degraded"}} {
		if g := ClassifyRetention(c.pct); g != c.want {
			t.Errorf("ClassifyRetention(%v) = %s, want %s", c.pct, g, c.want)
		}
	}
	for _, c := range []struct {
		chem   string
		cycles float64
		pct    float64
		class  string
	}{{"LiFePO4", 599, 19.9667, "new"}, {"LiFePO4", 600, 20, "early"}, {"LiFePO4", 1499, 49.9667, "early"}, {"LiFePO4", 1500, 50, "mid"},
		{"LiFePO4", 2250, 75, "mature"}, {"LiFePO4", 2699, 89.9667, "mature"}, {"LiFePO4", 2700, 90, "end-of-life"},
		{"Li-ion", 200, 20, "early"}, {"lead-acid", 899, 89.9, "mature"}, {"", 1000, 100, "end-of-life"}} {
		pct, class := CycleLifeUse(c.chem, c.cycles)
		if !near(pct, c.pct, 1e-3) || class != c.class {
			t.Errorf("CycleLifeUse(%s, %v) = %v %s, want %v %s", c.chem, c.cycles, pct, class, c.pct, c.class)
		}
	}
	for _, c := range []struct {
		in   HealthInputs
		want float64
	}{
		{HealthInputs{"excellent", LevelNormal, "excellent", "new"}, 100},
		{HealthInputs{"good", LevelNormal, "", ""}, 95},
		{HealthInputs{"fair", LevelNormal, "", ""}, 90},
		{HealthInputs{"poor", LevelNormal, "", ""}, 80},
		{HealthInputs{"", LevelWarning, "", ""}, 85},
		{HealthInputs{"", LevelCritical, "", ""}, 70},
		{HealthInputs{"", "", "fair", ""}, 90},
		{HealthInputs{"", "", "aging", ""}, 85},
		{HealthInputs{"", "", "degraded", ""}, 70},
		{HealthInputs{"", "", "", "mature"}, 90},
		{HealthInputs{"", "", "", "end-of-life"}, 80},
		{HealthInputs{"good", LevelWarning, "fair", "mature"}, 60},
		{HealthInputs{"poor", LevelCritical, "degraded", "end-of-life"}, 0},
	} {
		if g, _ := HealthScore(c.in); g != c.want {
			t.Errorf("HealthScore(%+v) = %v, want %v", c.in, g, c.want)
		}
	}
}

func TestFormulas(t *testing.T) {
	if h, ok := RuntimeHours(100, -20); !ok || h != 4 { // 100 × 0.8 / 20
		t.Errorf("RuntimeHours = %v %v", h, ok)
	}
	if _, ok := RuntimeHours(100, 5); ok {
		t.Error("runtime while charging")
	}
	if k := KWh(280, 51.2); !near(k, 14.336, 1e-9) {
		t.Errorf("KWh = %v", k)
	}
	if ah, ok := EstimatedCapacityAh(80, 200); !ok || ah != 250 {
		t.Errorf("EstimatedCapacityAh = %v %v", ah, ok)
	}
	if _, ok := EstimatedCapacityAh(79.9, 200); ok {
		t.Error("SOC < 80 used for capacity")
	}
	for _, c := range []struct {
		gen, cons, pct float64
		class          string
	}{{10, 10, 100, "surplus"}, {12, 10, 120, "surplus"}, {8, 10, 80, "adequate"}, {7.99, 10, 79.9, "deficit"}} {
		pct, class, ok := SolarSufficiency(c.gen, c.cons)
		if !ok || !near(pct, c.pct, 1e-9) || class != c.class {
			t.Errorf("SolarSufficiency(%v, %v) = %v %s", c.gen, c.cons, pct, class)
		}
	}
	if _, _, ok := SolarSufficiency(1, 0); ok {
		t.Error("sufficiency without consumption")
	}
	if d, ok := AutonomyDays(14.336, 2.8672); !ok || !near(d, 4, 1e-9) { // 14.336 × 0.8 / 2.8672
		t.Errorf("AutonomyDays = %v", d)
	}
	for h, want := range map[int]bool{0: true, 5: true, 6: false, 12: false, 17: false, 18: true, 23: true} {
		if IsNight(h) != want {
			t.Errorf("IsNight(%d)", h)
		}
	}
	s := bms.Snapshot{HighestCellVoltage: bms.F(3.35), LowestCellVoltage: bms.F(3.30)}
	if mv, ok := ImbalanceMV(s); !ok || !near(mv, 50, 1e-9) {
		t.Errorf("ImbalanceMV from hi/lo = %v", mv)
	}
	if mv, _ := ImbalanceMV(bms.Snapshot{CellVoltages: []float64{3.31, 3.40, 3.33}}); !near(mv, 90, 1e-9) {
		t.Errorf("ImbalanceMV from cells = %v", mv)
	}
	// Power with the wrong sign, or missing, follows the current.
	if p := EffectivePower(bms.Snapshot{Power: bms.F(500), Current: bms.F(-10), OverallVoltage: bms.F(50)}); p != -500 {
		t.Errorf("EffectivePower = %v", p)
	}
	if p := EffectivePower(bms.Snapshot{Current: bms.F(10), OverallVoltage: bms.F(52)}); p != 520 {
		t.Errorf("EffectivePower V×I = %v", p)
	}
	if HourNumber(time.Unix(7200, 0)) != 2 || HourNumber(time.Unix(7199, 0)) != 1 || HourNumber(time.Unix(-1, 0)) != -1 {
		t.Error("HourNumber")
	}
}

func TestLinearTrend(t *testing.T) {
	xs := []float64{0, 1, 2, 3, 4}
	tr, ok := LinearTrend(xs, []float64{2, 2.5, 3, 3.5, 4})
	if !ok || !near(tr.Slope, 0.5, 1e-12) || !near(tr.Intercept, 2, 1e-12) || !near(tr.R2, 1, 1e-12) || tr.Confidence != "high" {
		t.Fatalf("exact line: %+v", tr)
	}
	// y = 1, 3, 2, 5, 4: slope 0.8, intercept 1.4, SSE 3.6, SST 10 → R² 0.64.
	tr, _ = LinearTrend(xs, []float64{1, 3, 2, 5, 4})
	if !near(tr.Slope, 0.8, 1e-12) || !near(tr.Intercept, 1.4, 1e-12) || !near(tr.R2, 0.64, 1e-12) || tr.Confidence != "medium" {
		t.Fatalf("noisy line: %+v", tr)
	}
	if d, ok := tr.DaysUntil(7.4); !ok || !near(d, 3.5, 1e-9) { // fitted 4.6 at x=4, +0.8/day: (7.4−4.6)/0.8
		t.Fatalf("DaysUntil = %v %v", d, ok)
	}
	if _, ok := LinearTrend([]float64{1, 2}, []float64{1, 2}); ok {
		t.Fatal("2 points fitted")
	}
}

func TestOutliersPlanted(t *testing.T) {
	var vals []float64
	for i := range 200 {
		vals = append(vals, 10+math.Sin(float64(i)/5))
	}
	vals[37], vals[150] = 30, -10
	idx, sigma := Outliers(vals, nil, 3)
	if len(idx) != 2 || idx[0] != 37 || idx[1] != 150 || sigma <= 0 {
		t.Fatalf("outliers %v sigma %v", idx, sigma)
	}
}

// rec builds a record with power P at minute m after t0.
func rec(t0 time.Time, min int, soc, power float64) bms.Record {
	cur := power / 50
	return bms.Record{ID: t0.Add(time.Duration(min) * time.Minute).String(), SystemID: "s", Timestamp: bms.Time{Time: t0.Add(time.Duration(min) * time.Minute)},
		Analysis: bms.Snapshot{StateOfCharge: bms.F(soc), OverallVoltage: bms.F(50), Current: bms.F(cur), Power: bms.F(power)}}
}

func TestEnergyBalanceRawAndRollups(t *testing.T) {
	t0 := time.Date(2025, 1, 1, 16, 0, 0, 0, time.UTC)
	recs := []bms.Record{
		rec(t0, 0, 50, 1000),   // 16:00 charging 1 kW
		rec(t0, 30, 75, 1000),  // 16:30 (SOC jump +25 in 30 min)
		rec(t0, 60, 76, -500),  // 17:00 discharging 0.5 kW (day)
		rec(t0, 90, 76, -500),  // 17:30; then a 3 h gap
		rec(t0, 270, 40, -200), // 20:30 0.2 kW (night)
		rec(t0, 300, 40, 0),    // 21:00
	}
	// Raw: 1000 W × 1 h = 1 kWh charged; 500 W × 0.5 h + 200 W × 0.5 h =
	// 0.35 kWh discharged; the 3 h gap is skipped; 2 h integrated.
	b := NewHistoryBuilder(nil, true)
	for _, r := range recs {
		b.AddRecord(r)
	}
	h := b.Finish(10)
	e := h.Energy
	if !near(e.ChargeKWh, 1, 1e-9) || !near(e.DischargeKWh, 0.35, 1e-9) || !near(e.CoveredDays, 2.0/24, 1e-9) {
		t.Fatalf("raw energy %+v", e)
	}
	if !near(e.DailyChargeKWh, 12, 1e-9) || !near(e.DailyDischargeKWh, 4.2, 1e-9) || !near(e.SolarSufficiencyPct, 100/0.35, 1e-9) || e.SolarClass != "surplus" {
		t.Fatalf("raw daily %+v", e)
	}
	if !near(e.AutonomyDays, 10*0.8/4.2, 1e-9) {
		t.Fatalf("autonomy %v", e.AutonomyDays)
	}
	if !near(h.Load.DayKWh, 0.25, 1e-9) || !near(h.Load.NightKWh, 0.1, 1e-9) || !near(h.Load.NightSharePct, 100*0.1/0.35, 1e-9) {
		t.Fatalf("load %+v", h.Load)
	}
	if h.SOCJumpCount != 1 || h.SOCJumps[0].Delta != 25 {
		t.Fatalf("soc jumps %+v", h.SOCJumps)
	}
	// Exactly 2 h apart is a gap; 1 h 59 min is not.
	for _, c := range []struct {
		gap  int
		want float64
	}{{120, 0}, {119, 1000 * 119.0 / 60 / 1000}} {
		b := NewHistoryBuilder(nil, true)
		b.AddRecord(rec(t0, 0, 50, 1000))
		b.AddRecord(rec(t0, c.gap, 50, 0))
		if g := b.Finish(0).Energy.ChargeKWh; !near(g, c.want, 1e-9) {
			t.Errorf("gap %d min: %v kWh, want %v", c.gap, g, c.want)
		}
	}

	// Rollups: each hour's mean power over one hour. 16:00 → 1 kWh charge;
	// 17:00 → 0.5 kWh, 20:00 → 0.2 kWh discharge; 21:00 → 0; 4 hours.
	rb := NewHistoryBuilder(nil, false)
	for _, r := range RollupRecords(recs) {
		rb.AddRollup(r)
	}
	rh := rb.Finish(10)
	if rh.Records != 6 || rh.Hours != 4 || !near(rh.Energy.ChargeKWh, 1, 1e-9) || !near(rh.Energy.DischargeKWh, 0.7, 1e-9) || !near(rh.Energy.CoveredDays, 4.0/24, 1e-9) {
		t.Fatalf("rollup energy %+v", rh.Energy)
	}
}

func TestTrendsAndAnomaliesOnGeneratedSeries(t *testing.T) {
	// 40 days, hourly: imbalance rising 0.5 mV/day, capacity (estimated at
	// SOC 100 %) falling 0.1 Ah/day, temperature with a daily cycle and
	// one planted 60 °C reading.
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	var recs []bms.Record
	plant := t0.Add((20*24 + 14) * time.Hour)
	for i := range 40 * 24 {
		ts := t0.Add(time.Duration(i) * time.Hour)
		day := float64(i / 24)
		temp := 25 + 3*math.Sin(2*math.Pi*float64(i%24)/24) + 0.2*math.Sin(float64(i)*1.7)
		if ts.Equal(plant) {
			temp = 60
		}
		recs = append(recs, bms.Record{ID: ts.String(), SystemID: "gen", Timestamp: bms.Time{Time: ts}, Analysis: bms.Snapshot{
			StateOfCharge: bms.F(100), OverallVoltage: bms.F(53), RemainingCapacity: bms.F(280 - 0.1*day),
			CellVoltageDifference: bms.F((20 + 0.5*day) / 1000), Temperatures: []float64{temp},
		}})
	}
	src := NewMemorySource([]bms.System{{ID: "gen", Chemistry: "LiFePO4", Voltage: 51.2, Capacity: 280}}, recs)
	for _, full := range []bool{false, true} {
		a, err := NewRules(src).Analyze(context.Background(), Request{SystemID: "gen", Snapshot: recs[len(recs)-1].Analysis,
			Now: t0.AddDate(0, 0, 40), ContextWindowDays: 40, FullContextMode: full})
		if err != nil {
			t.Fatal(err)
		}
		tr := a.History.Trends
		if im := tr["imbalanceMv"]; !near(im.Slope, 0.5, 1e-9) || !near(im.R2, 1, 1e-9) || im.N != 40 {
			t.Fatalf("full=%v imbalance trend %+v", full, im)
		}
		if c := tr["capacityAh"]; !near(c.Slope, -0.1, 1e-9) || !near(c.R2, 1, 1e-9) {
			t.Fatalf("capacity trend %+v", c)
		}
		if a.History.AnomalyCount != 1 || a.History.Anomalies[0].Metric != "temperature" || !a.History.Anomalies[0].Time.Equal(plant) {
			t.Fatalf("anomalies %+v", a.History.Anomalies)
		}
		// Retention 276.1/280 (mean of 280 − 0.1·day over days 0–39).
		if !near(a.Snapshot.CapacityRetention, (280-0.1*19.5)/280*100, 1e-9) || a.Snapshot.CapacitySource != "history" {
			t.Fatalf("retention %v %s", a.Snapshot.CapacityRetention, a.Snapshot.CapacitySource)
		}
		if p, err := PredictTrend(a, "imbalanceMv", 10); err != nil || !near(p.Forecast, 20+0.5*49, 1e-9) || !near(p.DaysToThreshold, (100-39.5)/0.5, 1e-9) {
			t.Fatalf("prediction %+v %v", p, err)
		}
		if !hasFinding(a.Findings, "IMBALANCE_RISING", SeverityWarning) || !hasFinding(a.Findings, "ANOMALIES", SeverityWarning) {
			t.Fatalf("findings %+v", a.Findings)
		}
	}
}

func hasFinding(fs []Finding, code, sev string) bool {
	for _, f := range fs {
		if f.Code == code && f.Severity == sev {
			return true
		}
	}
	return false
}

func TestSnapshotOnly(t *testing.T) {
	snap := bms.Snapshot{StateOfCharge: bms.F(8), OverallVoltage: bms.F(12.2), Current: bms.F(-10), RemainingCapacity: bms.F(16), FullCapacity: bms.F(200),
		CellVoltageDifference: bms.F(0.12), Temperatures: []float64{46}, MOSTemperature: bms.F(85), CycleCount: bms.F(950), Alerts: []string{"low voltage"}}
	for name, src := range map[string]HistorySource{"nil source": nil, "unknown system": NewMemorySource(nil, nil)} {
		res, err := NewRules(src).Generate(context.Background(), Request{SystemID: "x", Snapshot: snap})
		if err != nil {
			t.Fatal(name, err)
		}
		// poor imbalance 20 + critical temperature 30 + end-of-life 20 (950/1000).
		if res.HealthScore != 30 || res.Status != StatusCritical || res.Provider != "rules" || res.ContextSummary.Records != 0 || res.ContextSummary.WindowDays != 90 {
			t.Fatalf("%s: %+v", name, res)
		}
		for _, c := range []struct{ code, sev string }{{"CELL_IMBALANCE", SeverityCritical}, {"TEMPERATURE_HIGH", SeverityCritical},
			{"MOS_TEMPERATURE", SeverityCritical}, {"SOC_LOW", SeverityCritical}, {"CYCLE_LIFE", SeverityWarning}, {"BMS_ALERT", SeverityWarning}, {"NO_HISTORY", SeverityInfo}, {"RUNTIME", SeverityInfo}} {
			if !hasFinding(res.Findings, c.code, c.sev) {
				t.Fatalf("%s: no %s %s in %+v", name, c.sev, c.code, res.Findings)
			}
		}
		if res.Findings[0].Severity != SeverityCritical {
			t.Fatal("critical findings first")
		}
		for _, want := range []string{"## KEY FINDINGS", "## TREND ANALYSIS", "## RECOMMENDATIONS", "🔴", "kWh", "1.3 h runtime"} {
			if !strings.Contains(res.Markdown, want) {
				t.Fatalf("%s: markdown lacks %q:\n%s", name, want, res.Markdown)
			}
		}
	}
}

func TestRulesOnGeneratedHistory(t *testing.T) {
	sys, recs, now := testSystemHistory()
	src := NewMemorySource([]bms.System{sys}, recs)
	for _, full := range []bool{false, true} {
		res, err := NewRules(src).Generate(context.Background(), Request{SystemID: sys.ID, Snapshot: testSnapshot(), ContextWindowDays: 30, Now: now, FullContextMode: full})
		if err != nil {
			t.Fatal(err)
		}
		if res.ContextSummary.Records != len(recs) || !res.ContextSummary.To.Equal(now) || !res.ContextSummary.From.Equal(now.AddDate(0, 0, -30)) {
			t.Fatalf("context %+v", res.ContextSummary)
		}
		e := res.Metrics["energy"].(EnergyBalance)
		if e.DailyChargeKWh <= 0 || e.DailyDischargeKWh <= 0 || e.SolarClass == "" || e.AutonomyDays <= 0 {
			t.Fatalf("energy %+v", e)
		}
		l := res.Metrics["load"].(LoadProfile)
		if l.NightSharePct < 50 { // the generator's load is mostly in the evening
			t.Fatalf("load %+v", l)
		}
		// The heat wave shows as temperature anomalies.
		if res.Metrics["anomalyCount"].(int) == 0 {
			t.Fatal("heat wave not found")
		}
		for _, want := range []string{"## KEY FINDINGS", "## TREND ANALYSIS", "## RECOMMENDATIONS", "kWh/day", "R²"} {
			if !strings.Contains(res.Markdown, want) {
				t.Fatalf("markdown lacks %q", want)
			}
		}
	}
}

func TestHistorySourceErrorsWrapped(t *testing.T) {
	boom := errors.New("connection refused")
	sys, recs, now := testSystemHistory()
	src := NewMemorySource([]bms.System{sys}, recs)
	src.Err = boom
	for _, full := range []bool{false, true} {
		_, err := NewRules(src).Generate(context.Background(), Request{SystemID: sys.ID, Now: now, FullContextMode: full})
		if !errors.Is(err, boom) {
			t.Fatalf("full=%v: %v", full, err)
		}
	}
	// An error from EachRecord after the system loaded is wrapped too.
	fs := &failingStream{MemorySource: NewMemorySource([]bms.System{sys}, recs), err: boom}
	if _, err := NewRules(fs).Generate(context.Background(), Request{SystemID: sys.ID, Now: now, FullContextMode: true}); !errors.Is(err, boom) || !strings.Contains(err.Error(), "read history") {
		t.Fatalf("stream error: %v", err)
	}
}

type failingStream struct {
	*MemorySource
	err error
}

func (f *failingStream) EachRecord(ctx context.Context, id string, from, to time.Time, fn func(bms.Record) error) error {
	return f.err
}

// The app often sends only the main sensor, the scalar temperature.
func TestScalarTemperatureOnly(t *testing.T) {
	snap := bms.Snapshot{Temperature: bms.F(52)}
	res, err := NewRules(nil).Generate(context.Background(), Request{SystemID: "x", Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	if !hasFinding(res.Findings, "TEMPERATURE_HIGH", SeverityCritical) {
		t.Fatalf("no critical TEMPERATURE_HIGH from temperature 52 °C: %+v", res.Findings)
	}
	for _, f := range res.Findings {
		if f.Code == "TEMPERATURE_HIGH" && f.Value != 52 {
			t.Fatalf("TEMPERATURE_HIGH value %v, want 52", f.Value)
		}
	}
	if res.Status != StatusCritical {
		t.Fatalf("status %s", res.Status)
	}
}

// An unmeasured SOC is not 0 %: no SOC_LOW finding.
func TestNilStateOfChargeNoSOCLow(t *testing.T) {
	snap := testSnapshot()
	snap.StateOfCharge = nil
	res, err := NewRules(nil).Generate(context.Background(), Request{SystemID: "x", Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range res.Findings {
		if f.Code == "SOC_LOW" {
			t.Fatalf("SOC_LOW for an unmeasured SOC: %+v", f)
		}
	}
	if a := AnalyzeSnapshot(snap, nil); a.SOCLevel != LevelUnknown {
		t.Fatalf("SOC level %s, want %s", a.SOCLevel, LevelUnknown)
	}
	// A measured 0 % is critical.
	snap.StateOfCharge = bms.F(0)
	res, err = NewRules(nil).Generate(context.Background(), Request{SystemID: "x", Snapshot: snap})
	if err != nil {
		t.Fatal(err)
	}
	if !hasFinding(res.Findings, "SOC_LOW", SeverityCritical) {
		t.Fatalf("no critical SOC_LOW at 0 %%: %+v", res.Findings)
	}
}
