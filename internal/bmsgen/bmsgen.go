// Package bmsgen generates deterministic synthetic BMS data: demo systems of
// each chemistry and their history (daily solar charging, night discharge,
// slow capacity fade, one drifting cell, a heat wave and reporting gaps).
// The same arguments always give the same records, ids included.
package bmsgen

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// Systems returns one demo system of each chemistry.
func Systems() []bms.System {
	return []bms.System{
		{ID: "demo-lifepo4-cabin", Name: "Mountain cabin (LiFePO4 48 V)", Chemistry: "LiFePO4", Voltage: 51.2, Capacity: 280,
			Latitude: 46.5547, Longitude: 8.5616, MaxAmpsSolarCharging: 60, MaxAmpsGeneratorCharging: 40},
		{ID: "demo-liion-van", Name: "Camper van (Li-ion 24 V)", Chemistry: "Li-ion", Voltage: 25.2, Capacity: 100,
			Latitude: 38.7223, Longitude: -9.1393, MaxAmpsSolarCharging: 20, MaxAmpsGeneratorCharging: 50},
		{ID: "demo-leadacid-farm", Name: "Farm pump (lead-acid 12 V)", Chemistry: "lead-acid", Voltage: 12, Capacity: 200,
			Latitude: -33.8688, Longitude: 151.2093, MaxAmpsSolarCharging: 25, MaxAmpsGeneratorCharging: 0},
	}
}

// chem describes a chemistry's cells.
type chem struct {
	cells      int
	cellMin    float64 // open-circuit V at 0 %
	cellMax    float64 // open-circuit V at 100 %
	flat       float64 // weight of the flat middle of the curve (LiFePO4)
	irOhm      float64 // pack internal resistance
	cycles0    float64 // cycle count at the epoch
	fadePerDay float64 // capacity fraction lost per day
}

func chemOf(sys bms.System) chem {
	switch sys.Chemistry {
	case "LiFePO4":
		n := int(math.Round(sys.Voltage / 3.2))
		return chem{cells: max(n, 4), cellMin: 3.0, cellMax: 3.45, flat: 0.8, irOhm: 0.012, cycles0: 420, fadePerDay: 0.00006}
	case "lead-acid":
		n := int(math.Round(sys.Voltage / 2))
		return chem{cells: max(n, 6), cellMin: 1.95, cellMax: 2.12, flat: 0, irOhm: 0.02, cycles0: 650, fadePerDay: 0.0003}
	default:
		n := int(math.Round(sys.Voltage / 3.6))
		return chem{cells: max(n, 3), cellMin: 3.3, cellMax: 4.15, flat: 0.2, irOhm: 0.03, cycles0: 380, fadePerDay: 0.00015}
	}
}

// epoch anchors the slow processes (fade, cell drift, cycle count), so a
// window's values depend on its dates and not only on its length.
var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// Sim is a streaming generator of one system's history.
type Sim struct {
	sys  bms.System
	c    chem
	rng  *rand.Rand
	zone *time.Location
	soc  float64 // %
	ah   float64 // discharged Ah, for cycles
	t    time.Time

	heatStart, heatEnd time.Time
	gaps               [][2]time.Time
	driftCell          int
	weather            map[int64]float64
	seed               int64
}

// NewSim starts a simulation at from. The window [from, to) decides where
// the heat wave and the gaps fall.
func NewSim(sys bms.System, seed int64, from, to time.Time) *Sim {
	h := fnv(sys.ID)
	s := &Sim{
		sys: sys, c: chemOf(sys), seed: seed,
		rng:     rand.New(rand.NewPCG(uint64(seed), h)),
		zone:    time.FixedZone("solar", int(math.Round(sys.Longitude/15))*3600),
		soc:     60,
		t:       from,
		weather: map[int64]float64{},
	}
	s.driftCell = int(h % uint64(s.c.cells))
	span := to.Sub(from)
	// Heat wave: 4 days starting 60 % into the window (shorter windows: a
	// tenth of the window).
	hw := min(4*24*time.Hour, span/10)
	s.heatStart = from.Add(span * 6 / 10)
	s.heatEnd = s.heatStart.Add(hw)
	// Gaps: one of 6 h every ~10 days, and one outage of 30 h.
	days := int(span.Hours() / 24)
	g := rand.New(rand.NewPCG(uint64(seed)^0x9e3779b97f4a7c15, h))
	for d := 3; d < days; d += 10 {
		start := from.Add(time.Duration(d)*24*time.Hour + time.Duration(g.IntN(24))*time.Hour)
		s.gaps = append(s.gaps, [2]time.Time{start, start.Add(6 * time.Hour)})
	}
	if days >= 20 {
		start := from.Add(span * 3 / 10)
		s.gaps = append(s.gaps, [2]time.Time{start, start.Add(30 * time.Hour)})
	}
	return s
}

func fnv(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return h
}

func (s *Sim) inGap(t time.Time) bool {
	for _, g := range s.gaps {
		if !t.Before(g[0]) && t.Before(g[1]) {
			return true
		}
	}
	return false
}

// dayWeather is the solar yield factor of a local day (0.2–1, seeded).
func (s *Sim) dayWeather(t time.Time) float64 {
	lt := t.In(s.zone)
	key := int64(lt.Year())*1000 + int64(lt.YearDay())
	if w, ok := s.weather[key]; ok {
		return w
	}
	r := rand.New(rand.NewPCG(uint64(s.seed)+uint64(key), fnv(s.sys.ID)))
	w := 0.2 + 0.8*math.Pow(r.Float64(), 0.5)
	s.weather[key] = w
	return w
}

func (s *Sim) capacityAh(t time.Time) float64 {
	days := t.Sub(epoch).Hours() / 24
	return s.sys.Capacity * math.Max(0.5, 1-s.c.fadePerDay*days)
}

func (s *Sim) ambient(t time.Time) float64 {
	lt := t.In(s.zone)
	hr := float64(lt.Hour()) + float64(lt.Minute())/60
	temp := 22 + 6*math.Sin(2*math.Pi*(hr-9)/24)
	if !t.Before(s.heatStart) && t.Before(s.heatEnd) {
		temp += 16
	}
	return temp
}

// power is the net battery power at t in W (positive charging).
func (s *Sim) power(t time.Time) float64 {
	lt := t.In(s.zone)
	hr := float64(lt.Hour()) + float64(lt.Minute())/60
	v := s.sys.Voltage
	solarPeak := s.sys.MaxAmpsSolarCharging * v
	if solarPeak == 0 {
		solarPeak = s.sys.Capacity * 0.15 * v
	}
	solar := 0.0
	if hr > 6 && hr < 18 {
		solar = solarPeak * math.Sin(math.Pi*(hr-6)/12) * s.dayWeather(t)
	}
	// Load: a base load, more in the evening (18–23), a little at breakfast.
	capW := s.sys.Capacity * v
	load := capW * 0.006
	switch {
	case hr >= 18 && hr < 23:
		load += capW * 0.025
	case hr >= 6 && hr < 9:
		load += capW * 0.01
	}
	load *= 1 + 0.1*(s.rng.Float64()-0.5)
	return solar - load
}

func (s *Sim) ocvCell(soc float64) float64 {
	x := soc / 100
	// A flat middle for LiFePO4, steeper ends; linear for lead-acid.
	lin := x
	sig := 0.5 + 0.5*math.Tanh(8*(x-0.5))*0.3 + (math.Pow(x, 8)-math.Pow(1-x, 8))*0.35
	f := (1-s.c.flat)*lin + s.c.flat*sig
	return s.c.cellMin + (s.c.cellMax-s.c.cellMin)*math.Min(1, math.Max(0, f))
}

// Next advances by step and returns the record at the new time; ok is
// false inside a reporting gap (the battery still runs, nothing is stored).
func (s *Sim) Next(step time.Duration) (bms.Record, bool) {
	t := s.t
	s.t = t.Add(step)
	capAh := s.capacityAh(t)
	p := s.power(t)
	v := s.sys.Voltage * (0.97 + 0.06*s.soc/100)
	i := p / v
	// Full: solar is curtailed; empty: the low-voltage cut-off drops loads.
	if s.soc >= 100 && i > 0 {
		i, p = 0, 0
	}
	if s.soc <= 5 && i < 0 {
		i, p = 0, 0
	}
	dAh := i * step.Hours()
	s.soc = math.Min(100, math.Max(0, s.soc+dAh/capAh*100))
	if i < 0 {
		s.ah += -dAh
	}
	if s.inGap(t) {
		return bms.Record{}, false
	}
	return bms.Record{
		ID:               fmt.Sprintf("%s-%d", s.sys.ID, t.UnixMilli()),
		SystemID:         s.sys.ID,
		SystemName:       s.sys.Name,
		Timestamp:        bms.Time{Time: t.UTC()},
		Analysis:         s.snapshot(t, i, p, capAh),
		HardwareSystemID: "HW-" + s.sys.ID,
		FileName:         fmt.Sprintf("screenshot-%d.png", t.UnixMilli()),
	}, true
}

func (s *Sim) snapshot(t time.Time, current, power, capAh float64) bms.Snapshot {
	c := s.c
	days := math.Max(0, t.Sub(epoch).Hours()/24)
	cells := make([]float64, c.cells)
	ocv := s.ocvCell(s.soc)
	ir := current * c.irOhm / float64(c.cells)
	sum, hi, lo := 0.0, -1.0, 99.0
	for k := range cells {
		cv := ocv + ir + (s.rng.Float64()-0.5)*0.004
		if k == s.driftCell {
			// The weak cell drifts 0.04 mV/day, more near full and empty.
			edge := math.Abs(s.soc-50) / 50
			cv -= (0.008 + 0.00004*days) * (0.5 + edge)
		}
		cv = math.Round(cv*1000) / 1000
		cells[k] = cv
		sum += cv
		hi, lo = max(hi, cv), min(lo, cv)
	}
	amb := s.ambient(t)
	heat := current * current * c.irOhm * 0.02
	temps := make([]float64, 3)
	for k := range temps {
		temps[k] = math.Round((amb+heat+float64(k)*0.3+(s.rng.Float64()-0.5)*0.4)*10) / 10
	}
	rem := capAh * s.soc / 100
	var alerts []string
	if hi-lo > 0.1 {
		alerts = append(alerts, "cell voltage difference high")
	}
	status := "Idle"
	switch {
	case current > 0.5:
		status = "Charging"
	case current < -0.5:
		status = "Discharging"
	}
	// The app's shape: the main sensor as a scalar `temperature`, the
	// other sensors rarely; MOS temperature apart.
	return bms.Snapshot{
		StateOfCharge:         bms.F(math.Round(s.soc*10) / 10),
		OverallVoltage:        bms.F(math.Round(sum*100) / 100),
		Current:               bms.F(math.Round(current*100) / 100),
		Power:                 bms.F(math.Round(power*10) / 10),
		RemainingCapacity:     bms.F(math.Round(rem*10) / 10),
		FullCapacity:          bms.F(math.Round(capAh*10) / 10),
		CycleCount:            bms.F(math.Floor(c.cycles0 + days*0.3 + s.ah/s.sys.Capacity)),
		HighestCellVoltage:    bms.F(hi),
		LowestCellVoltage:     bms.F(lo),
		AverageCellVoltage:    bms.F(math.Round(sum/float64(c.cells)*1000) / 1000),
		CellVoltageDifference: bms.F(math.Round((hi-lo)*1000) / 1000),
		CellVoltages:          cells,
		Temperature:           bms.F(temps[0]),
		MOSTemperature:        bms.F(math.Round((amb+5+math.Abs(current)*0.05)*10) / 10),
		ChargeMOSOn:           ptr(true),
		DischargeMOSOn:        ptr(true),
		BalanceOn:             ptr(hi-lo > 0.03 && current > 0),
		Alerts:                alerts,
		Status:                status,
		HardwareSystemID:      "HW-" + s.sys.ID,
	}
}

// Stream generates the history of [from, to) every step and calls fn for
// each record in time order (no more than one record in memory).
func Stream(sys bms.System, seed int64, from, to time.Time, step time.Duration, fn func(bms.Record) error) error {
	if step <= 0 {
		return fmt.Errorf("bmsgen: step must be positive")
	}
	s := NewSim(sys, seed, from, to)
	for s.t.Before(to) {
		if rec, ok := s.Next(step); ok {
			if err := fn(rec); err != nil {
				return err
			}
		}
	}
	return nil
}

// History generates the history of [from, to) every step.
func History(sys bms.System, seed int64, from, to time.Time, step time.Duration) []bms.Record {
	var out []bms.Record
	if step > 0 {
		out = make([]bms.Record, 0, int(to.Sub(from)/step)+1)
	}
	_ = Stream(sys, seed, from, to, step, func(r bms.Record) error {
		out = append(out, r)
		return nil
	})
	return out
}

// Snapshot is the reading of sys at time at: the simulation is run over the
// two days before it (so SOC and temperature are plausible for the time of
// day) and the reading at `at` returned.
func Snapshot(sys bms.System, seed int64, at time.Time) bms.Snapshot {
	from := at.Add(-48 * time.Hour)
	s := NewSim(sys, seed, from, at.Add(time.Minute))
	s.gaps = nil
	s.heatStart, s.heatEnd = time.Time{}, time.Time{}
	var last bms.Record
	for !s.t.After(at) {
		last, _ = s.Next(5 * time.Minute)
		if s.t.Add(5*time.Minute).After(at.Add(time.Nanosecond)) && !s.t.After(at) {
			s.t = at
		}
	}
	return last.Analysis
}

func ptr[T any](v T) *T { return &v }
