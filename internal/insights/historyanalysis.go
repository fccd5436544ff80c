package insights

import (
	"math"
	"sort"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// DayEnergy is the energy of one local day.
type DayEnergy struct {
	Date         string  `json:"date" bson:"date"` // YYYY-MM-DD, local
	ChargeKWh    float64 `json:"chargeKWh" bson:"chargeKWh"`
	DischargeKWh float64 `json:"dischargeKWh" bson:"dischargeKWh"`
}

// EnergyBalance is the charge (generation) and discharge (consumption)
// energy of the window: ∫|P|dt, intervals ≥ 2 h skipped.
type EnergyBalance struct {
	CoveredDays         float64     `json:"coveredDays" bson:"coveredDays"` // integrated time / 24 h
	ChargeKWh           float64     `json:"chargeKWh" bson:"chargeKWh"`
	DischargeKWh        float64     `json:"dischargeKWh" bson:"dischargeKWh"`
	DailyChargeKWh      float64     `json:"dailyChargeKWh" bson:"dailyChargeKWh"`
	DailyDischargeKWh   float64     `json:"dailyDischargeKWh" bson:"dailyDischargeKWh"`
	NetDailyKWh         float64     `json:"netDailyKWh" bson:"netDailyKWh"`
	SolarSufficiencyPct float64     `json:"solarSufficiencyPct" bson:"solarSufficiencyPct"`
	SolarClass          string      `json:"solarClass,omitempty" bson:"solarClass,omitempty"`     // surplus|adequate|deficit
	AutonomyDays        float64     `json:"autonomyDays,omitempty" bson:"autonomyDays,omitempty"` // 0: unknown (no capacity kWh or no consumption)
	PerDay              []DayEnergy `json:"perDay,omitempty" bson:"perDay,omitempty"`
}

// LoadProfile splits consumption between day and night (18:00–06:00 local).
type LoadProfile struct {
	DayKWh        float64     `json:"dayKWh" bson:"dayKWh"`
	NightKWh      float64     `json:"nightKWh" bson:"nightKWh"`
	NightSharePct float64     `json:"nightSharePct" bson:"nightSharePct"`
	DayAvgW       float64     `json:"dayAvgW" bson:"dayAvgW"`
	NightAvgW     float64     `json:"nightAvgW" bson:"nightAvgW"`
	PeakHour      int         `json:"peakHour" bson:"peakHour"` // local hour of the highest mean discharge
	HourlyAvgW    [24]float64 `json:"hourlyAvgDischargeW" bson:"hourlyAvgDischargeW"`
	UTCOffsetH    int         `json:"utcOffsetHours" bson:"utcOffsetHours"`
}

// Anomaly is an hourly value beyond 3σ of its expected value (the mean of
// the same local hour of day over the window).
type Anomaly struct {
	Metric   string    `json:"metric" bson:"metric"`
	Time     time.Time `json:"time" bson:"time"`
	Value    float64   `json:"value" bson:"value"`
	Expected float64   `json:"expected" bson:"expected"`
	Sigmas   float64   `json:"sigmas" bson:"sigmas"`
}

// SOCJump is a change of SOC by more than 20 points in under an hour.
type SOCJump struct {
	Time  time.Time `json:"time" bson:"time"`
	From  float64   `json:"from" bson:"from"`
	To    float64   `json:"to" bson:"to"`
	Delta float64   `json:"delta" bson:"delta"`
}

// DayStats are the daily means the trends are fitted to.
type DayStats struct {
	Date        string  `json:"date" bson:"date"`
	X           float64 `json:"x" bson:"x"` // days since the first day
	Samples     int     `json:"samples" bson:"samples"`
	SOC         float64 `json:"soc" bson:"soc"`
	HasSOC      bool    `json:"-" bson:"-"`
	Voltage     float64 `json:"voltage" bson:"voltage"`
	HasVoltage  bool    `json:"-" bson:"-"`
	Temperature float64 `json:"temperature" bson:"temperature"`
	HasTemp     bool    `json:"-" bson:"-"`
	ImbalanceMV float64 `json:"imbalanceMv" bson:"imbalanceMv"`
	HasCells    bool    `json:"-" bson:"-"`
	CapacityAh  float64 `json:"capacityAh" bson:"capacityAh"`
	HasCapacity bool    `json:"-" bson:"-"`
}

// HistoryAnalysis is what the history of the window shows.
type HistoryAnalysis struct {
	Mode            string           `json:"mode" bson:"mode"` // rollups | raw
	Records         int              `json:"records" bson:"records"`
	Hours           int              `json:"hours" bson:"hours"`
	Days            int              `json:"days" bson:"days"`
	First           time.Time        `json:"first" bson:"first"`
	Last            time.Time        `json:"last" bson:"last"`
	AvgSOC          float64          `json:"avgSoc" bson:"avgSoc"`
	SOCSamples      int              `json:"socSamples" bson:"socSamples"` // records that measured SOC (AvgSOC is over them)
	TempSamples     int              `json:"temperatureSamples" bson:"temperatureSamples"`
	CellSamples     int              `json:"cellSamples" bson:"cellSamples"`
	AvgTempMax      float64          `json:"avgTemperature" bson:"avgTemperature"`
	MaxHourlyTemp   float64          `json:"maxHourlyTemperature" bson:"maxHourlyTemperature"`
	AvgImbalance    float64          `json:"avgImbalanceMv" bson:"avgImbalanceMv"`
	CapacityAh      float64          `json:"estimatedCapacityAh" bson:"estimatedCapacityAh"` // mean over SOC ≥ 80 % samples
	HighSOCCount    int              `json:"highSocSamples" bson:"highSocSamples"`
	Energy          EnergyBalance    `json:"energy" bson:"energy"`
	Load            LoadProfile      `json:"load" bson:"load"`
	Trends          map[string]Trend `json:"trends" bson:"trends"`
	Anomalies       []Anomaly        `json:"anomalies,omitempty" bson:"anomalies,omitempty"` // at most 50 listed
	AnomalyCount    int              `json:"anomalyCount" bson:"anomalyCount"`
	AnomalyByMetric map[string]int   `json:"anomalyByMetric,omitempty" bson:"anomalyByMetric,omitempty"`
	SOCJumps        []SOCJump        `json:"socJumps,omitempty" bson:"socJumps,omitempty"` // at most 50 listed
	SOCJumpCount    int              `json:"socJumpCount" bson:"socJumpCount"`
	Daily           []DayStats       `json:"-" bson:"-"`
	HourlySeries    []Rollup         `json:"-" bson:"-"`
}

const maxListed = 50

// HistoryBuilder folds a window of history, raw records or hourly rollups
// (in time order), into a HistoryAnalysis in one pass and bounded memory
// (one Rollup per hour).
type HistoryBuilder struct {
	zone *time.Location
	raw  bool

	records int
	hours   []Rollup
	first   time.Time
	last    time.Time

	dayIdx       map[string]int
	days         []DayEnergy
	coveredHours float64
	chargeWh     float64
	dischargeWh  float64
	dayWh        float64
	nightWh      float64
	hodWh        [24]float64

	// hasPrev: prevT and prevP are the last record that measured power
	// (a record without power is no sample of it).
	hasPrev bool
	prevT   time.Time
	prevP   float64
	prevSOC float64
	// hasPrevSOC: prevSOC was measured at prevSOCT (a null SOC is no jump).
	hasPrevSOC bool
	prevSOCT   time.Time

	jumps     []SOCJump
	jumpCount int
}

// NewHistoryBuilder: zone is the local time for days and day/night (nil:
// UTC); raw selects exact integration of records over hour means.
func NewHistoryBuilder(zone *time.Location, raw bool) *HistoryBuilder {
	if zone == nil {
		zone = time.UTC
	}
	return &HistoryBuilder{zone: zone, raw: raw, dayIdx: map[string]int{}}
}

// ZoneFor is the local solar time of a longitude rounded to whole hours
// (no time zone database needed, and DST does not move the night).
func ZoneFor(sys *bms.System) *time.Location {
	if sys == nil || (sys.Longitude == 0 && sys.Latitude == 0) {
		return time.UTC
	}
	off := int(math.Round(sys.Longitude / 15))
	return time.FixedZone("solar", off*3600)
}

func (b *HistoryBuilder) addEnergy(at time.Time, chargeWh, dischargeWh, hours float64) {
	lt := at.In(b.zone)
	date := lt.Format(time.DateOnly)
	i, ok := b.dayIdx[date]
	if !ok {
		i = len(b.days)
		b.dayIdx[date] = i
		b.days = append(b.days, DayEnergy{Date: date})
	}
	b.days[i].ChargeKWh += chargeWh / 1000
	b.days[i].DischargeKWh += dischargeWh / 1000
	b.coveredHours += hours
	b.chargeWh += chargeWh
	b.dischargeWh += dischargeWh
	if IsNight(lt.Hour()) {
		b.nightWh += dischargeWh
	} else {
		b.dayWh += dischargeWh
	}
	b.hodWh[lt.Hour()] += dischargeWh
}

func (b *HistoryBuilder) jump(at time.Time, from, to float64) {
	b.jumpCount++
	if len(b.jumps) < maxListed {
		b.jumps = append(b.jumps, SOCJump{Time: at, From: from, To: to, Delta: to - from})
	}
}

// AddRecord folds one raw record (records must come in time order).
func (b *HistoryBuilder) AddRecord(rec bms.Record) {
	t := rec.At()
	s := rec.Analysis
	if b.records == 0 {
		b.first = t
	}
	b.records++
	b.last = t
	h := t.UTC().Truncate(time.Hour)
	if n := len(b.hours); n == 0 || !b.hours[n-1].Hour.Equal(h) {
		b.hours = append(b.hours, Rollup{Hour: h})
	}
	b.hours[len(b.hours)-1].Add(s)
	p, hasP := MeasuredPower(s)
	if b.hasPrev && hasP {
		dt := t.Sub(b.prevT)
		if dt > 0 && dt < EnergyGap {
			wh := math.Abs(b.prevP) * dt.Hours()
			if b.prevP > 0 {
				b.addEnergy(b.prevT, wh, 0, dt.Hours())
			} else {
				b.addEnergy(b.prevT, 0, wh, dt.Hours())
			}
		}
	}
	if s.StateOfCharge != nil && b.hasPrevSOC {
		if dt := t.Sub(b.prevSOCT); dt >= 0 && dt < SOCJumpWithin && math.Abs(*s.StateOfCharge-b.prevSOC) > SOCJumpPct {
			b.jump(t, b.prevSOC, *s.StateOfCharge)
		}
	}
	if hasP {
		b.hasPrev, b.prevT, b.prevP = true, t, p
	}
	if s.StateOfCharge != nil {
		b.hasPrevSOC, b.prevSOC, b.prevSOCT = true, *s.StateOfCharge, t
	}
}

// AddRollup folds one hour (rollups must come in time order). Its energy
// is the hour's mean charge and discharge power over one hour; hours with
// no samples are gaps. A SOC jump is a change of the hourly mean by more
// than 20 points from the hour before (the raw samples are not visible).
func (b *HistoryBuilder) AddRollup(r Rollup) {
	if r.Count == 0 {
		return
	}
	if len(b.hours) == 0 {
		b.first = r.Hour
	}
	b.records += r.Count
	b.last = r.Hour.Add(time.Hour - time.Nanosecond)
	if n := len(b.hours); n > 0 {
		prev := b.hours[n-1]
		if r.Hour.Sub(prev.Hour) == time.Hour && r.SOCCount > 0 && prev.SOCCount > 0 && math.Abs(r.MeanSOC()-prev.MeanSOC()) > SOCJumpPct {
			b.jump(r.Hour, prev.MeanSOC(), r.MeanSOC())
		}
	}
	b.hours = append(b.hours, r)
	if r.EnergyCount > 0 { // an hour without power is a gap, not 0 W
		b.addEnergy(r.Hour, r.MeanChargeW(), r.MeanDischargeW(), 1)
	}
}

// Finish computes the analysis. capacityKWh is the rated energy for the
// autonomy (0: unknown).
func (b *HistoryBuilder) Finish(capacityKWh float64) HistoryAnalysis {
	h := HistoryAnalysis{Mode: "rollups", Records: b.records, Hours: len(b.hours), First: b.first, Last: b.last, Trends: map[string]Trend{}}
	if b.raw {
		h.Mode = "raw"
	}
	if b.records == 0 {
		return h
	}
	h.SOCJumps, h.SOCJumpCount = b.jumps, b.jumpCount

	// Energy balance.
	e := &h.Energy
	e.CoveredDays = b.coveredHours / 24
	e.ChargeKWh, e.DischargeKWh = b.chargeWh/1000, b.dischargeWh/1000
	e.PerDay = b.days
	if e.CoveredDays > 0 {
		e.DailyChargeKWh = e.ChargeKWh / e.CoveredDays
		e.DailyDischargeKWh = e.DischargeKWh / e.CoveredDays
		e.NetDailyKWh = e.DailyChargeKWh - e.DailyDischargeKWh
	}
	if pct, class, ok := SolarSufficiency(e.ChargeKWh, e.DischargeKWh); ok {
		e.SolarSufficiencyPct, e.SolarClass = pct, class
	}
	if d, ok := AutonomyDays(capacityKWh, e.DailyDischargeKWh); ok {
		e.AutonomyDays = d
	}

	// Load profile.
	l := &h.Load
	_, off := time.Now().In(b.zone).Zone()
	l.UTCOffsetH = off / 3600
	l.DayKWh, l.NightKWh = b.dayWh/1000, b.nightWh/1000
	if tot := b.dayWh + b.nightWh; tot > 0 {
		l.NightSharePct = b.nightWh / tot * 100
	}
	var hodHours [24]int
	var dayHours, nightHours int
	for _, r := range b.hours {
		if r.EnergyCount == 0 {
			continue // no power measured: not an hour of the load profile
		}
		hr := r.Hour.In(b.zone).Hour()
		hodHours[hr]++
		if IsNight(hr) {
			nightHours++
		} else {
			dayHours++
		}
	}
	if dayHours > 0 {
		l.DayAvgW = b.dayWh / float64(dayHours)
	}
	if nightHours > 0 {
		l.NightAvgW = b.nightWh / float64(nightHours)
	}
	for i := range 24 {
		if hodHours[i] > 0 {
			l.HourlyAvgW[i] = b.hodWh[i] / float64(hodHours[i])
		}
		if l.HourlyAvgW[i] > l.HourlyAvgW[l.PeakHour] {
			l.PeakHour = i
		}
	}

	// Averages and daily means.
	var tot Rollup
	type dayAcc struct {
		date string
		r    Rollup
	}
	var days []dayAcc
	for _, r := range b.hours {
		tot.Count += r.Count
		tot.SumSOC += r.SumSOC
		tot.SOCCount += r.SOCCount
		tot.TempCount += r.TempCount
		tot.SumTempMax += r.SumTempMax
		tot.CellCount += r.CellCount
		tot.SumImbalanceMV += r.SumImbalanceMV
		tot.HighSOCCount += r.HighSOCCount
		tot.SumEstCapAh += r.SumEstCapAh
		if r.TempCount > 0 {
			h.MaxHourlyTemp = max(h.MaxHourlyTemp, r.MeanTempMax())
		}
		date := r.Hour.In(b.zone).Format(time.DateOnly)
		if len(days) == 0 || days[len(days)-1].date != date {
			days = append(days, dayAcc{date: date})
		}
		d := &days[len(days)-1].r
		d.Count += r.Count
		d.SumSOC += r.SumSOC
		d.SOCCount += r.SOCCount
		d.SumVoltage += r.SumVoltage
		d.VoltageCount += r.VoltageCount
		d.TempCount += r.TempCount
		d.SumTempMax += r.SumTempMax
		d.CellCount += r.CellCount
		d.SumImbalanceMV += r.SumImbalanceMV
		d.HighSOCCount += r.HighSOCCount
		d.SumEstCapAh += r.SumEstCapAh
	}
	h.AvgSOC = tot.MeanSOC()
	h.SOCSamples, h.TempSamples, h.CellSamples = tot.SOCCount, tot.TempCount, tot.CellCount
	h.AvgTempMax = tot.MeanTempMax()
	h.AvgImbalance = tot.MeanImbalanceMV()
	h.HighSOCCount = tot.HighSOCCount
	h.CapacityAh = div(tot.SumEstCapAh, tot.HighSOCCount)
	h.Days = len(days)

	day0, _ := time.ParseInLocation(time.DateOnly, days[0].date, b.zone)
	h.Daily = make([]DayStats, len(days))
	for i, d := range days {
		t, _ := time.ParseInLocation(time.DateOnly, d.date, b.zone)
		h.Daily[i] = DayStats{
			Date: d.date, X: math.Round(t.Sub(day0).Hours()) / 24, Samples: d.r.Count,
			SOC: d.r.MeanSOC(), HasSOC: d.r.SOCCount > 0, Voltage: d.r.MeanVoltage(), HasVoltage: d.r.VoltageCount > 0,
			Temperature: d.r.MeanTempMax(), HasTemp: d.r.TempCount > 0,
			ImbalanceMV: d.r.MeanImbalanceMV(), HasCells: d.r.CellCount > 0,
			CapacityAh: div(d.r.SumEstCapAh, d.r.HighSOCCount), HasCapacity: d.r.HighSOCCount > 0,
		}
	}

	// Trends per day.
	fit := func(name string, val func(DayStats) (float64, bool)) {
		var xs, ys []float64
		for _, d := range h.Daily {
			if v, ok := val(d); ok {
				xs, ys = append(xs, d.X), append(ys, v)
			}
		}
		if t, ok := LinearTrend(xs, ys); ok {
			h.Trends[name] = t
		}
	}
	fit("soc", func(d DayStats) (float64, bool) { return d.SOC, d.HasSOC })
	fit("voltage", func(d DayStats) (float64, bool) { return d.Voltage, d.HasVoltage })
	fit("temperature", func(d DayStats) (float64, bool) { return d.Temperature, d.HasTemp })
	fit("imbalanceMv", func(d DayStats) (float64, bool) { return d.ImbalanceMV, d.HasCells })
	fit("capacityAh", func(d DayStats) (float64, bool) { return d.CapacityAh, d.HasCapacity })
	var exs, cys, dys []float64
	for _, d := range b.days {
		t, _ := time.ParseInLocation(time.DateOnly, d.Date, b.zone)
		exs = append(exs, math.Round(t.Sub(day0).Hours())/24)
		cys, dys = append(cys, d.ChargeKWh), append(dys, d.DischargeKWh)
	}
	if t, ok := LinearTrend(exs, cys); ok {
		h.Trends["chargeKWh"] = t
	}
	if t, ok := LinearTrend(exs, dys); ok {
		h.Trends["dischargeKWh"] = t
	}

	// Anomalies on the hourly means, against the mean of the same local
	// hour of day (the daily solar cycle is not an anomaly).
	b.anomalies(&h)
	h.HourlySeries = b.hours
	return h
}

func (b *HistoryBuilder) anomalies(h *HistoryAnalysis) {
	metrics := []struct {
		name string
		val  func(Rollup) (float64, bool)
	}{
		{"voltage", func(r Rollup) (float64, bool) { return r.MeanVoltage(), r.VoltageCount > 0 }},
		{"current", func(r Rollup) (float64, bool) { return r.MeanCurrent(), r.CurrentCount > 0 }},
		{"temperature", func(r Rollup) (float64, bool) { return r.MeanTempMax(), r.TempCount > 0 }},
		{"imbalanceMv", func(r Rollup) (float64, bool) { return r.MeanImbalanceMV(), r.CellCount > 0 }},
	}
	var all []Anomaly
	for _, m := range metrics {
		var vals []float64
		var times []time.Time
		var hods []int
		var sum [24]float64
		var cnt [24]int
		var gsum float64
		for _, r := range b.hours {
			v, ok := m.val(r)
			if !ok {
				continue
			}
			hr := r.Hour.In(b.zone).Hour()
			vals, times, hods = append(vals, v), append(times, r.Hour), append(hods, hr)
			sum[hr] += v
			cnt[hr]++
			gsum += v
		}
		if len(vals) == 0 {
			continue
		}
		gmean := gsum / float64(len(vals))
		base := make([]float64, len(vals))
		for i, hr := range hods {
			if cnt[hr] >= 3 {
				base[i] = sum[hr] / float64(cnt[hr])
			} else {
				base[i] = gmean
			}
		}
		idx, sigma := Outliers(vals, base, AnomalySigma)
		for _, i := range idx {
			all = append(all, Anomaly{Metric: m.name, Time: times[i], Value: vals[i], Expected: base[i], Sigmas: (vals[i] - base[i]) / sigma})
		}
	}
	sort.SliceStable(all, func(i, j int) bool { return math.Abs(all[i].Sigmas) > math.Abs(all[j].Sigmas) })
	h.AnomalyCount = len(all)
	h.AnomalyByMetric = map[string]int{}
	for _, an := range all {
		h.AnomalyByMetric[an.Metric]++
	}
	if len(all) > maxListed {
		all = all[:maxListed]
	}
	sort.SliceStable(all, func(i, j int) bool { return all[i].Time.Before(all[j].Time) })
	h.Anomalies = all
}
