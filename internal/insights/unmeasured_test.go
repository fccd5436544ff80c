package insights

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/bms"
)

// zeroText is a reading shown as 0: "0 %", "0.00 kWh", "0 °C" (and not
// the 0 of "10 %", "20.0 °C" or a flat trend's "+0.000 %/day").
var zeroText = regexp.MustCompile(`(^|[^0-9.,+\-−])0(\.0+)? ?(%|kWh|°C)`)

// everyMeasured is a snapshot where every reading the engine uses is
// measured and says something: SOC low, discharging, cells, temperatures
// and cycle life at a warning, the MOSFETs critical.
func everyMeasured() bms.Snapshot {
	return bms.Snapshot{StateOfCharge: bms.F(15), OverallVoltage: bms.F(51.5), Current: bms.F(-12), Power: bms.F(-618), RemainingCapacity: bms.F(42),
		FullCapacity: bms.F(280), CycleCount: bms.F(950), CellVoltageDifference: bms.F(0.06), Temperatures: []float64{38, 40}, MOSTemperature: bms.F(85)}
}

// report is what a user sees of a result: the markdown without its "Not
// measured" line (which names the unmeasured readings on purpose), the
// finding messages, and the snapshot metrics as stored (BSON) and as the
// API and the model see them (JSON).
type report struct {
	res      *Result
	text     string
	snapJSON map[string]any
	snapBSON bson.M
}

func generate(t *testing.T, src HistorySource, req Request) report {
	t.Helper()
	res, err := NewRules(src).Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(res.Markdown, "\n") {
		if !strings.HasPrefix(l, "- Not measured in this snapshot:") {
			lines = append(lines, l)
		}
	}
	for _, f := range res.Findings {
		lines = append(lines, f.Code+": "+f.Message)
	}
	r := report{res: res, text: strings.Join(lines, "\n")}
	b, err := json.Marshal(res.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		Snapshot map[string]any `json:"snapshot"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	r.snapJSON = m.Snapshot
	raw, err := bson.Marshal(res.Metrics)
	if err != nil {
		t.Fatal(err)
	}
	var bm bson.M
	if err := bson.Unmarshal(raw, &bm); err != nil {
		t.Fatal(err)
	}
	r.snapBSON, _ = bm["snapshot"].(bson.M)
	return r
}

func (r report) hasCode(code string) bool {
	return slices.ContainsFunc(r.res.Findings, func(f Finding) bool { return f.Code == code })
}

func (r report) mentions(word string) bool {
	return strings.Contains(strings.ToLower(r.text), strings.ToLower(word))
}

// For each reading: measured, it has its findings, metrics and sentences;
// not measured, it has none of them, no 0 stands in for it, and the report
// names it once.
func TestUnmeasuredReadingSaysNothing(t *testing.T) {
	for _, c := range []struct {
		name    string
		base    func(*bms.Snapshot) // the measured snapshot, when everyMeasured does not show the reading
		drop    func(*bms.Snapshot)
		keys    []string // Unmeasured keys
		metrics []string // snapshot metrics that rest on it
		codes   []string
		words   []string
	}{
		{name: "state of charge", drop: func(s *bms.Snapshot) { s.StateOfCharge = nil }, keys: []string{"stateOfCharge"},
			metrics: []string{"soc"}, codes: []string{"SOC_LOW"}, words: []string{"state of charge", "SOC"}},
		{name: "voltage", drop: func(s *bms.Snapshot) { s.OverallVoltage = nil }, keys: []string{"overallVoltage"},
			metrics: []string{"voltageV", "nominalVoltage", "remainingKWh", "capacityKWh"}, words: []string{"kWh remaining", "kWh rated", "usable energy", "kWh more"}},
		{name: "current", drop: func(s *bms.Snapshot) { s.Current = nil }, keys: []string{"current"},
			metrics: []string{"currentA", "discharging", "runtimeHours"}, codes: []string{"RUNTIME"}, words: []string{"runtime", "A discharge", "12.0 A"}},
		{name: "current and power", drop: func(s *bms.Snapshot) { s.Current, s.Power = nil, nil }, keys: []string{"current", "power"},
			metrics: []string{"currentA", "powerW", "discharging", "runtimeHours"}, codes: []string{"RUNTIME"}, words: []string{"runtime", "618 W", "W load", "A discharge"}},
		{name: "charging current", base: func(s *bms.Snapshot) { s.Current, s.Power = bms.F(20), bms.F(1030) }, drop: func(s *bms.Snapshot) { s.Current, s.Power = nil, nil },
			keys: []string{"current", "power"}, metrics: []string{"currentA", "powerW", "hoursToFull"}, words: []string{"charging at", "full in"}},
		{name: "remaining capacity", drop: func(s *bms.Snapshot) { s.RemainingCapacity = nil }, keys: []string{"remainingCapacity"},
			metrics: []string{"remainingAh", "remainingKWh", "runtimeHours"}, codes: []string{"RUNTIME"}, words: []string{"remaining", "runtime"}},
		{name: "remaining capacity at high SOC", base: func(s *bms.Snapshot) { s.StateOfCharge, s.RemainingCapacity = bms.F(90), bms.F(240) },
			drop: func(s *bms.Snapshot) { s.RemainingCapacity = nil }, keys: []string{"remainingCapacity"},
			metrics: []string{"remainingKWh", "capacityRetentionPct", "capacityClass"}, codes: []string{"CAPACITY_RETENTION"}, words: []string{"remaining", "retention"}},
		{name: "full capacity", base: func(s *bms.Snapshot) { s.StateOfCharge, s.RemainingCapacity = bms.F(90), bms.F(240) },
			drop: func(s *bms.Snapshot) { s.FullCapacity = nil }, keys: []string{"fullCapacity"},
			metrics: []string{"ratedCapacityAh", "capacityKWh", "capacityRetentionPct"}, codes: []string{"CAPACITY_RETENTION"}, words: []string{"kWh rated", "rated 280 Ah", "usable energy"}},
		{name: "cycle count", drop: func(s *bms.Snapshot) { s.CycleCount = nil }, keys: []string{"cycleCount"},
			metrics: []string{"cycleCount", "cycleLifeUsedPct", "cycleLifeClass", "ratedCycles"}, codes: []string{"CYCLE_LIFE"}, words: []string{"cycle"}},
		{name: "cell voltages", drop: func(s *bms.Snapshot) { s.CellVoltageDifference = nil }, keys: []string{"cellVoltages"},
			metrics: []string{"imbalanceMv", "imbalanceClass", "imbalanceLevel"}, codes: []string{"CELL_IMBALANCE"}, words: []string{"cell", "imbalance", "mV"}},
		{name: "cell voltages listed", base: func(s *bms.Snapshot) { s.CellVoltageDifference, s.CellVoltages = nil, []float64{3.30, 3.41, 3.35} },
			drop: func(s *bms.Snapshot) { s.CellVoltages = nil }, keys: []string{"cellVoltages"},
			metrics: []string{"imbalanceMv", "imbalanceClass"}, codes: []string{"CELL_IMBALANCE"}, words: []string{"cell", "mV"}},
		{name: "temperatures", drop: func(s *bms.Snapshot) { s.Temperatures = nil }, keys: []string{"temperature"},
			metrics: []string{"maxTemperature", "minTemperature"}, codes: []string{"TEMPERATURE_HIGH"}, words: []string{"battery temperature", "cool the battery", "40.0 °C"}},
		{name: "main temperature sensor", base: func(s *bms.Snapshot) { s.Temperatures, s.Temperature = nil, bms.F(2) },
			drop: func(s *bms.Snapshot) { s.Temperature = nil }, keys: []string{"temperature"},
			metrics: []string{"maxTemperature", "minTemperature"}, codes: []string{"TEMPERATURE_LOW"}, words: []string{"battery temperature", "warm the battery", "2.0 °C"}},
		{name: "MOSFET temperature", drop: func(s *bms.Snapshot) { s.MOSTemperature = nil }, keys: []string{"mosTemperature"},
			metrics: []string{"mosTemperature"}, codes: []string{"MOS_TEMPERATURE"}, words: []string{"MOSFET"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			snap := everyMeasured()
			if c.base != nil {
				c.base(&snap)
			}
			// Measured, the reading shows (else the checks below prove nothing).
			full := generate(t, nil, Request{SystemID: "x", Snapshot: snap})
			if strings.Contains(full.res.Markdown, "Not measured") || full.snapJSON["unmeasured"] != nil {
				t.Fatalf("a fully measured snapshot has unmeasured readings:\n%s", full.res.Markdown)
			}
			for _, k := range c.metrics {
				if _, ok := full.snapJSON[k]; !ok {
					t.Errorf("measured: no metric %s in %v", k, full.snapJSON)
				}
			}
			for _, code := range c.codes {
				if !full.hasCode(code) {
					t.Errorf("measured: no finding %s in %+v", code, full.res.Findings)
				}
			}
			for _, w := range c.words {
				if !full.mentions(w) {
					t.Errorf("measured: the report does not mention %q:\n%s", w, full.text)
				}
			}

			c.drop(&snap)
			r := generate(t, nil, Request{SystemID: "x", Snapshot: snap})
			for _, k := range c.metrics {
				if v, ok := r.snapJSON[k]; ok {
					t.Errorf("not measured: metric %s = %v (JSON)", k, v)
				}
				if v, ok := r.snapBSON[k]; ok {
					t.Errorf("not measured: metric %s = %v (BSON)", k, v)
				}
			}
			for _, code := range c.codes {
				if r.hasCode(code) {
					t.Errorf("not measured: finding %s in %+v", code, r.res.Findings)
				}
			}
			for _, w := range c.words {
				if r.mentions(w) {
					t.Errorf("not measured: the report mentions %q:\n%s", w, r.text)
				}
			}
			if z := zeroText.FindString(r.res.Markdown); z != "" {
				t.Errorf("not measured: %q in the report:\n%s", z, r.res.Markdown)
			}
			got, _ := json.Marshal(r.snapJSON["unmeasured"])
			want, _ := json.Marshal(c.keys)
			if string(got) != string(want) {
				t.Errorf("unmeasured %s, want %s", got, want)
			}
			if n := strings.Count(r.res.Markdown, "- Not measured in this snapshot: "); n != 1 {
				t.Errorf("%d 'Not measured' lines, want 1:\n%s", n, r.res.Markdown)
			}
			for _, k := range c.keys {
				if !strings.Contains(r.res.Markdown, unmeasuredLabels([]string{k})) {
					t.Errorf("the report does not name %s as not measured:\n%s", k, r.res.Markdown)
				}
			}
		})
	}
}

// A snapshot with a single reading gives a report about that reading
// alone: its state line, its findings, the other readings named as not
// measured, and a health score with no deduction for what was not
// measured.
func TestSingleReadingReports(t *testing.T) {
	for _, c := range []struct {
		name, json string
		want       []string // in the markdown
		codes      []string
		status     string
		score      float64
		metrics    []string // the only numeric snapshot metrics
	}{
		{name: "unreadable screenshot", json: `{"summary":"unreadable screenshot","overallVoltage":52}`,
			want: []string{"- Pack voltage 52.00 V.\n", "🟢 Nothing measured calls for action."}, status: StatusNormal, score: 100, metrics: []string{"voltageV", "nominalVoltage"}},
		{name: "only current, discharging", json: `{"current":-12,"stateOfCharge":null,"temperature":null}`,
			want: []string{"- Discharging at 12.0 A.\n"}, status: StatusNormal, score: 100, metrics: []string{"currentA"}},
		{name: "only current, charging", json: `{"current":5.5}`,
			want: []string{"- Charging at 5.5 A.\n"}, status: StatusNormal, score: 100, metrics: []string{"currentA"}},
		{name: "only power", json: `{"power":-300}`,
			want: []string{"- Discharging at 300 W.\n"}, status: StatusNormal, score: 100, metrics: []string{"powerW"}},
		{name: "only SOC", json: `{"stateOfCharge":15}`,
			want: []string{"- State of charge 15 %.\n", "🟡 Recharge to at least 50 % SOC and keep it above 20 %."}, codes: []string{"SOC_LOW"}, status: StatusWarning, score: 100, metrics: []string{"soc"}},
		{name: "only remaining capacity", json: `{"remainingCapacity":120}`,
			want: []string{"- 120.0 Ah remaining.\n"}, status: StatusNormal, score: 100, metrics: []string{"remainingAh"}},
		{name: "only cycle count", json: `{"cycleCount":950}`,
			want: []string{"950 cycles: 95 % of the 1000-cycle life (end-of-life)", "Health score −20 for cycleLife end-of-life"}, codes: []string{"CYCLE_LIFE"}, status: StatusWarning, score: 80,
			metrics: []string{"cycleCount", "cycleLifeUsedPct", "ratedCycles"}},
		{name: "only cell spread", json: `{"cellVoltageDifference":0.12}`,
			want: []string{"Cell imbalance 120 mV is above 100 mV (poor)", "Health score −20 for imbalance poor"}, codes: []string{"CELL_IMBALANCE"}, status: StatusCritical, score: 80,
			metrics: []string{"imbalanceMv"}},
		{name: "only temperature", json: `{"temperature":37}`,
			want: []string{"Battery temperature 37.0 °C is above 35 °C", "Health score −15 for temperature warning"}, codes: []string{"TEMPERATURE_HIGH"}, status: StatusWarning, score: 85,
			metrics: []string{"maxTemperature", "minTemperature"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var snap bms.Snapshot
			if err := json.Unmarshal([]byte(c.json), &snap); err != nil {
				t.Fatal(err)
			}
			r := generate(t, nil, Request{SystemID: "x", Snapshot: snap})
			md := r.res.Markdown
			for _, w := range c.want {
				if !strings.Contains(md, w) {
					t.Errorf("report lacks %q:\n%s", w, md)
				}
			}
			if z := zeroText.FindString(md); z != "" {
				t.Errorf("%q in the report:\n%s", z, md)
			}
			if r.res.Status != c.status || r.res.HealthScore != c.score {
				t.Errorf("status %s score %v, want %s %v", r.res.Status, r.res.HealthScore, c.status, c.score)
			}
			var codes []string
			for _, f := range r.res.Findings {
				if f.Code != "NO_HISTORY" {
					codes = append(codes, f.Code)
				}
			}
			if !slices.Equal(codes, c.codes) {
				t.Errorf("findings %v, want %v", codes, c.codes)
			}
			var numeric []string
			for k, v := range r.snapJSON {
				if _, ok := v.(float64); ok {
					numeric = append(numeric, k)
				}
			}
			slices.Sort(numeric)
			want := slices.Sorted(slices.Values(c.metrics))
			if !slices.Equal(numeric, want) {
				t.Errorf("numeric metrics %v, want %v", numeric, want)
			}
			unm, _ := r.snapJSON["unmeasured"].([]any)
			if len(unm) != len(readings)-1 {
				t.Errorf("unmeasured %v: want every reading but one", unm)
			}
			if n := strings.Count(md, "- Not measured in this snapshot: "); n != 1 {
				t.Errorf("%d 'Not measured' lines, want 1:\n%s", n, md)
			}
		})
	}
}

// sparseHistory is 3 days of records every 30 minutes: on the hour a full
// reading (SOC 60 %, 52 V, −10 A, −520 W, 25 °C), at half past only the
// temperature (a reading of another sensor).
func sparseHistory(t0 time.Time) []bms.Record {
	var recs []bms.Record
	for i := range 3 * 48 {
		ts := t0.Add(time.Duration(i) * 30 * time.Minute)
		s := bms.Snapshot{Temperature: bms.F(25)}
		if i%2 == 0 {
			s = bms.Snapshot{StateOfCharge: bms.F(60), OverallVoltage: bms.F(52), Current: bms.F(-10), Power: bms.F(-520), RemainingCapacity: bms.F(150), Temperature: bms.F(25)}
		}
		recs = append(recs, bms.Record{ID: ts.String(), SystemID: "sparse", Timestamp: bms.Time{Time: ts}, Analysis: s})
	}
	return recs
}

// Records that did not measure a reading are not averaged in as 0: the
// hourly means, the window's averages, the trends, the energy balance, the
// load profile and the series the model asks for are over the records that
// measured it.
func TestHistoryMeansOverMeasuredSamples(t *testing.T) {
	t0 := time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	recs := sparseHistory(t0)
	for _, r := range RollupRecords(recs) {
		if r.Count != 2 || r.SOCCount != 1 || r.EnergyCount != 1 || r.TempCount != 2 {
			t.Fatalf("rollup counts %+v", r)
		}
		if r.MeanSOC() != 60 || r.MeanVoltage() != 52 || r.MeanCurrent() != -10 || r.MeanDischargeW() != 520 || r.MeanChargeW() != 0 {
			t.Fatalf("rollup means: SOC %v V %v I %v discharge %v W", r.MeanSOC(), r.MeanVoltage(), r.MeanCurrent(), r.MeanDischargeW())
		}
	}
	sys := bms.System{ID: "sparse", Chemistry: "LiFePO4", Voltage: 51.2, Capacity: 200}
	src := NewMemorySource([]bms.System{sys}, recs)
	for _, full := range []bool{false, true} {
		req := Request{SystemID: "sparse", Snapshot: recs[len(recs)-2].Analysis, Now: t0.AddDate(0, 0, 3), ContextWindowDays: 3, FullContextMode: full}
		a, err := NewRules(src).Analyze(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		h := a.History
		if h.AvgSOC != 60 || h.SOCSamples != 72 || h.TempSamples != 144 {
			t.Fatalf("full=%v: average SOC %v over %d samples", full, h.AvgSOC, h.SOCSamples)
		}
		if tr := h.Trends["soc"]; tr.Last != 60 || tr.N != 3 {
			t.Fatalf("full=%v: SOC trend %+v", full, tr)
		}
		if tr := h.Trends["voltage"]; tr.Last != 52 {
			t.Fatalf("full=%v: voltage trend %+v", full, tr)
		}
		// 520 W all day: 12.48 kWh/day, by day and by night alike.
		if e := h.Energy; !near(e.DailyDischargeKWh, 12.48, 1e-9) || e.DailyChargeKWh != 0 {
			t.Fatalf("full=%v: energy %+v", full, e)
		}
		// Raw records integrate up to the last one: its hour (a night
		// hour) has no energy, so 35 of the 36 night hours do.
		night := 520.0
		if full {
			night = 520.0 * 35 / 36
		}
		if l := h.Load; !near(l.DayAvgW, 520, 1e-9) || !near(l.NightAvgW, night, 1e-9) {
			t.Fatalf("full=%v: load day %v W night %v W", full, l.DayAvgW, l.NightAvgW)
		}
		if h.AnomalyCount != 0 || h.SOCJumpCount != 0 {
			t.Fatalf("full=%v: %d anomalies %v, %d SOC jumps", full, h.AnomalyCount, h.AnomalyByMetric, h.SOCJumpCount)
		}
		g := NewGemini(GeminiConfig{APIKey: "k"}, nil, src)
		tools := &geminiTools{g: g, a: a, req: req}
		for metric, want := range map[string]float64{"soc": 60, "voltage": 52, "current": -10, "dischargeW": 520, "remainingAh": 150} {
			out, err := tools.call(context.Background(), ToolRequestBMSData, map[string]any{"metric": metric, "granularity": "hourly"})
			if err != nil {
				t.Fatal(err)
			}
			pts := out["points"].([]Point)
			if len(pts) != 72 || pts[0].Value != want || pts[71].Value != want {
				t.Fatalf("full=%v: %s series %d points, first %+v, want %v", full, metric, len(pts), pts[0], want)
			}
		}
	}
}

// Without a capacity in kWh (no system, a snapshot without voltage or
// full capacity) there is no autonomy: not 0 days.
func TestNoAutonomyWithoutCapacity(t *testing.T) {
	t0 := time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	src := NewMemorySource(nil, sparseHistory(t0))
	res, err := NewRules(src).Generate(context.Background(), Request{SystemID: "sparse", Snapshot: bms.Snapshot{StateOfCharge: bms.F(60)},
		Now: t0.AddDate(0, 0, 3), ContextWindowDays: 3})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(res.Metrics["energy"])
	if !strings.Contains(string(b), `"dailyDischargeKWh"`) || strings.Contains(string(b), "autonomyDays") {
		t.Fatalf("energy metrics %s: want consumption and no autonomy", b)
	}
	if slices.ContainsFunc(res.Findings, func(f Finding) bool { return f.Code == "AUTONOMY" }) || strings.Contains(res.Markdown, "autonomy") {
		t.Fatalf("autonomy without a capacity:\n%s", res.Markdown)
	}
}

// An hour without a SOC reading is no SOC jump (its mean is not 0 %), and
// a history without power has no energy balance (not 0 kWh).
func TestHistoryWithoutAReading(t *testing.T) {
	t0 := time.Date(2025, 2, 1, 0, 0, 0, 0, time.UTC)
	var recs []bms.Record
	for i := range 4 * 24 {
		ts := t0.Add(time.Duration(i) * time.Hour)
		s := bms.Snapshot{Temperatures: []float64{20}}
		if i%2 == 0 {
			s.StateOfCharge = bms.F(70)
		}
		recs = append(recs, bms.Record{ID: ts.String(), SystemID: "nop", Timestamp: bms.Time{Time: ts}, Analysis: s})
	}
	src := NewMemorySource([]bms.System{{ID: "nop", Chemistry: "LiFePO4", Voltage: 51.2, Capacity: 200}}, recs)
	for _, full := range []bool{false, true} {
		req := Request{SystemID: "nop", Snapshot: bms.Snapshot{StateOfCharge: bms.F(70)}, Now: t0.AddDate(0, 0, 4), ContextWindowDays: 4, FullContextMode: full}
		a, err := NewRules(src).Analyze(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if a.History.SOCJumpCount != 0 {
			t.Fatalf("full=%v: %d SOC jumps from hours without SOC: %+v", full, a.History.SOCJumpCount, a.History.SOCJumps)
		}
		res := a.Result()
		if _, ok := res.Metrics["energy"]; ok {
			t.Fatalf("full=%v: energy metrics without power: %+v", full, res.Metrics["energy"])
		}
		if _, ok := res.Metrics["load"]; ok {
			t.Fatalf("full=%v: load metrics without power", full)
		}
		for _, code := range []string{"SOLAR_SUFFICIENCY", "AUTONOMY"} {
			if slices.ContainsFunc(res.Findings, func(f Finding) bool { return f.Code == code }) {
				t.Fatalf("full=%v: %s without power", full, code)
			}
		}
		if !strings.Contains(res.Markdown, "- Energy and load: not measured") || strings.Contains(res.Markdown, "kWh/day charged") {
			t.Fatalf("full=%v: energy line:\n%s", full, res.Markdown)
		}
		if z := zeroText.FindString(res.Markdown); z != "" {
			t.Fatalf("full=%v: %q in the report:\n%s", full, z, res.Markdown)
		}
		hist := res.Metrics["history"].(map[string]any)
		if hist["avgSoc"] != 70.0 || hist["socSamples"] != 48 {
			t.Fatalf("full=%v: history metrics %v", full, hist)
		}
		if _, ok := hist["avgImbalanceMv"]; ok {
			t.Fatalf("full=%v: average imbalance without cell data: %v", full, hist)
		}
		if _, ok := a.History.Trends["voltage"]; ok {
			t.Fatalf("full=%v: a voltage trend without voltage", full)
		}
	}
}

// The model's tools leave out what was not measured rather than send 0.
func TestGeminiToolsOmitUnmeasured(t *testing.T) {
	var snap bms.Snapshot
	if err := json.Unmarshal([]byte(`{"summary":"unreadable screenshot","current":-12}`), &snap); err != nil {
		t.Fatal(err)
	}
	req := Request{SystemID: "x", Snapshot: snap}
	g := NewGemini(GeminiConfig{APIKey: "k"}, nil, nil)
	a, err := g.rules.Analyze(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	tools := &geminiTools{g: g, a: a, req: req}
	call := func(name string, args map[string]any) map[string]any {
		out, err := tools.call(context.Background(), name, args)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	an := call(ToolSystemAnalytics, map[string]any{})
	sn := an["snapshot"].(map[string]any)
	for _, k := range []string{"soc", "remainingKWh", "capacityKWh", "maxTemperature", "mosTemperature", "cycleCount", "imbalanceMv", "powerW", "voltageV"} {
		if v, ok := sn[k]; ok {
			t.Errorf("getSystemAnalytics: snapshot %s = %v", k, v)
		}
	}
	if sn["currentA"] != -12.0 {
		t.Errorf("getSystemAnalytics: current %v, want -12", sn["currentA"])
	}
	if _, ok := an["energy"]; ok {
		t.Errorf("getSystemAnalytics: energy without history: %v", an["energy"])
	}
	budget := call(ToolEnergyBudget, map[string]any{"additionalLoadW": 100.0, "hoursPerDay": 5.0})
	for _, k := range []string{"capacityKWh", "usableKWh", "autonomyDays", "dailyGenerationKWh", "dailyConsumptionKWh", "solarSufficiencyPct", "dailyBalanceKWh"} {
		if v, ok := budget[k]; ok {
			t.Errorf("calculate_energy_budget: %s = %v", k, v)
		}
	}
	if budget["addedLoadKWhPerDay"] != 0.5 || !strings.Contains(budget["note"].(string), "no history") {
		t.Errorf("calculate_energy_budget: %v", budget)
	}
	usage := call(ToolUsagePatterns, map[string]any{})
	if len(usage) != 1 || usage["note"] == nil {
		t.Errorf("analyze_usage_patterns: %v", usage)
	}
	// The first message's rule-based analysis has no 0 for them either.
	p, err := g.prompt(a, req)
	if err != nil {
		t.Fatal(err)
	}
	var ctx struct {
		Snapshot map[string]any `json:"snapshot"`
		RBA      map[string]any `json:"ruleBasedAnalysis"`
	}
	if err := json.Unmarshal([]byte(p[strings.Index(p, "\n")+1:]), &ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := ctx.RBA["energy"]; ok {
		t.Errorf("prompt: energy without history")
	}
	rsn := ctx.RBA["snapshot"].(map[string]any)
	if _, ok := rsn["soc"]; ok || rsn["currentA"] != -12.0 || ctx.Snapshot["stateOfCharge"] != nil {
		t.Errorf("prompt: snapshot %v, analysis %v", ctx.Snapshot, rsn)
	}
}
