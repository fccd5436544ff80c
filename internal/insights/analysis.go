package insights

import (
	"math"
	"slices"
	"time"

	"github.com/bmsview/insights/internal/bms"
)

// Thresholds of docs/DESIGN.md section 9 (the BMS app's own).
const (
	ImbalanceExcellentMV = 30.0  // < 30 mV excellent
	ImbalanceGoodMV      = 50.0  // < 50 mV good; > 50 mV warning
	ImbalanceFairMV      = 100.0 // < 100 mV fair; > 100 mV critical

	TempCriticalHighC = 45.0
	TempCriticalLowC  = 0.0
	TempWarningHighC  = 35.0
	TempWarningLowC   = 5.0
	MOSCriticalC      = 80.0

	SOCCriticalPct = 10.0
	SOCWarningPct  = 20.0

	// RuntimeUsableFraction: runtime = remainingAh × 0.8 / |I|.
	RuntimeUsableFraction = 0.8
	// AutonomyUsableFraction: autonomy = capacity kWh × 0.8 / daily consumption.
	AutonomyUsableFraction = 0.8

	// EnergyGap: intervals between samples of this length or more are not
	// integrated (the BMS was off or not reporting).
	EnergyGap = 2 * time.Hour

	NightStartHour = 18 // night is 18:00–06:00 local time
	NightEndHour   = 6

	HighSOCPct = 80.0 // capacity retention uses samples at SOC ≥ 80 %

	CycleLifeLiFePO4 = 3000.0
	CycleLifeOther   = 1000.0

	AnomalySigma   = 3.0
	SOCJumpPct     = 20.0
	SOCJumpWithin  = time.Hour
	minTrendPoints = 3
)

// Classes and statuses.
const (
	SeverityCritical = "critical"
	SeverityWarning  = "warning"
	SeverityInfo     = "info"

	StatusNormal   = "Normal"
	StatusWarning  = "Warning"
	StatusCritical = "Critical"

	LevelNormal   = "normal"
	LevelWarning  = "warning"
	LevelCritical = "critical"
	LevelUnknown  = "unknown"
)

// KWh converts charge to energy: Ah × V / 1000.
func KWh(ah, volts float64) float64 { return ah * volts / 1000 }

// ImbalanceMV is the cell spread of a snapshot in mV: cellVoltageDifference,
// else highest − lowest cell, else the spread of cellVoltages. ok is false
// when the snapshot holds no cell data.
func ImbalanceMV(s bms.Snapshot) (mv float64, ok bool) {
	switch {
	case bms.V(s.CellVoltageDifference) > 0:
		return *s.CellVoltageDifference * 1000, true
	case bms.V(s.HighestCellVoltage) > 0 && bms.V(s.LowestCellVoltage) > 0:
		return (*s.HighestCellVoltage - *s.LowestCellVoltage) * 1000, true
	case len(s.CellVoltages) >= 2:
		return (slices.Max(s.CellVoltages) - slices.Min(s.CellVoltages)) * 1000, true
	}
	return 0, false
}

// ClassifyImbalance: < 30 excellent, < 50 good, < 100 fair, else poor.
func ClassifyImbalance(mv float64) string {
	switch {
	case mv < ImbalanceExcellentMV:
		return "excellent"
	case mv < ImbalanceGoodMV:
		return "good"
	case mv < ImbalanceFairMV:
		return "fair"
	}
	return "poor"
}

// ImbalanceLevel: > 100 mV critical, > 50 mV warning, else normal.
func ImbalanceLevel(mv float64) string {
	switch {
	case mv > ImbalanceFairMV:
		return LevelCritical
	case mv > ImbalanceGoodMV:
		return LevelWarning
	}
	return LevelNormal
}

// TemperatureLevel classifies cell temperatures and the MOS temperature:
// any cell > 45 °C or < 0 °C, or MOS > 80 °C, is critical; any cell > 35 °C
// or < 5 °C is a warning. No cell temperatures and no MOS reading: unknown.
func TemperatureLevel(temps []float64, mosTemp *float64) string {
	level := LevelUnknown
	if len(temps) > 0 || mosTemp != nil {
		level = LevelNormal
	}
	if mos := bms.V(mosTemp); mos > MOSCriticalC {
		return LevelCritical
	}
	for _, t := range temps {
		switch {
		case t > TempCriticalHighC || t < TempCriticalLowC:
			return LevelCritical
		case t > TempWarningHighC || t < TempWarningLowC:
			level = LevelWarning
		}
	}
	return level
}

// SOCLevel: < 10 % critical, < 20 % warning.
func SOCLevel(soc float64) string {
	switch {
	case soc < SOCCriticalPct:
		return LevelCritical
	case soc < SOCWarningPct:
		return LevelWarning
	}
	return LevelNormal
}

// RuntimeHours is the time left at the present discharge:
// remainingAh × 0.8 / |I|. ok is false when not discharging (current ≥ 0).
func RuntimeHours(remainingAh, currentA float64) (h float64, ok bool) {
	if currentA >= 0 || remainingAh <= 0 {
		return 0, false
	}
	return remainingAh * RuntimeUsableFraction / math.Abs(currentA), true
}

// HoursToFull is the time to full charge at the present charge current.
func HoursToFull(remainingAh, fullAh, currentA float64) (h float64, ok bool) {
	if currentA <= 0 || fullAh <= 0 || remainingAh >= fullAh {
		return 0, false
	}
	return (fullAh - remainingAh) / currentA, true
}

// EstimatedCapacityAh estimates the full capacity from one sample at
// SOC ≥ 80 %: remainingAh / (SOC/100). Samples below 80 % SOC (where SOC
// estimation is least reliable) give ok false.
func EstimatedCapacityAh(soc, remainingAh float64) (ah float64, ok bool) {
	if soc < HighSOCPct || soc > 100.5 || remainingAh <= 0 {
		return 0, false
	}
	return remainingAh / (soc / 100), true
}

// ClassifyRetention: ≥ 95 excellent, ≥ 90 good, ≥ 85 fair, ≥ 80 aging,
// else degraded.
func ClassifyRetention(pct float64) string {
	switch {
	case pct >= 95:
		return "excellent"
	case pct >= 90:
		return "good"
	case pct >= 85:
		return "fair"
	case pct >= 80:
		return "aging"
	}
	return "degraded"
}

// RatedCycles is the cycle life of a chemistry: LiFePO4 3000, else 1000.
func RatedCycles(chemistry string) float64 {
	if chemistry == "LiFePO4" {
		return CycleLifeLiFePO4
	}
	return CycleLifeOther
}

// CycleLifeUse is the used share of the rated cycle life in % and its
// class: < 20 new, < 50 early, < 75 mid, < 90 mature, else end-of-life.
func CycleLifeUse(chemistry string, cycles float64) (pct float64, class string) {
	pct = cycles / RatedCycles(chemistry) * 100
	switch {
	case pct < 20:
		class = "new"
	case pct < 50:
		class = "early"
	case pct < 75:
		class = "mid"
	case pct < 90:
		class = "mature"
	default:
		class = "end-of-life"
	}
	return pct, class
}

// HealthInputs are the classes the health score deducts for. Empty or
// unknown classes deduct nothing.
type HealthInputs struct {
	Imbalance   string `json:"imbalance"`   // excellent|good|fair|poor
	Temperature string `json:"temperature"` // normal|warning|critical
	Capacity    string `json:"capacity"`    // excellent|good|fair|aging|degraded
	CycleLife   string `json:"cycleLife"`   // new|early|mid|mature|end-of-life
}

// Deduction is one reason the score is below 100.
type Deduction struct {
	Reason string  `json:"reason" bson:"reason"`
	Points float64 `json:"points" bson:"points"`
}

// HealthScore = 100 minus: imbalance poor 20, fair 10, good 5; temperature
// critical 30, warning 15; capacity degraded 30, aging 15, fair 10; cycle
// life end-of-life 20, mature 10. Never below 0.
func HealthScore(in HealthInputs) (score float64, deductions []Deduction) {
	table := []struct {
		what, class string
		points      map[string]float64
	}{
		{"imbalance", in.Imbalance, map[string]float64{"poor": 20, "fair": 10, "good": 5}},
		{"temperature", in.Temperature, map[string]float64{LevelCritical: 30, LevelWarning: 15}},
		{"capacity", in.Capacity, map[string]float64{"degraded": 30, "aging": 15, "fair": 10}},
		{"cycleLife", in.CycleLife, map[string]float64{"end-of-life": 20, "mature": 10}},
	}
	score = 100
	for _, d := range table {
		if p := d.points[d.class]; p > 0 {
			score -= p
			deductions = append(deductions, Deduction{Reason: d.what + " " + d.class, Points: p})
		}
	}
	return max(score, 0), deductions
}

// SolarSufficiency = generation / consumption × 100; ≥ 100 surplus, ≥ 80
// adequate, else deficit. ok is false without consumption.
func SolarSufficiency(generationKWh, consumptionKWh float64) (pct float64, class string, ok bool) {
	if consumptionKWh <= 0 {
		return 0, "", false
	}
	pct = generationKWh / consumptionKWh * 100
	switch {
	case pct >= 100:
		class = "surplus"
	case pct >= 80:
		class = "adequate"
	default:
		class = "deficit"
	}
	return pct, class, true
}

// AutonomyDays = capacity kWh × 0.8 / daily consumption kWh.
func AutonomyDays(capacityKWh, dailyConsumptionKWh float64) (days float64, ok bool) {
	if dailyConsumptionKWh <= 0 || capacityKWh <= 0 {
		return 0, false
	}
	return capacityKWh * AutonomyUsableFraction / dailyConsumptionKWh, true
}

// IsNight reports whether a local hour of day is in 18:00–06:00.
func IsNight(hour int) bool { return hour >= NightStartHour || hour < NightEndHour }

// Trend is a least-squares line y = Intercept + Slope·x, x in days.
type Trend struct {
	Slope     float64 `json:"slopePerDay" bson:"slopePerDay"`
	Intercept float64 `json:"intercept" bson:"intercept"`
	R2        float64 `json:"r2" bson:"r2"`
	N         int     `json:"n" bson:"n"`
	// Confidence from R²: high ≥ 0.7, medium ≥ 0.4, else low.
	Confidence string `json:"confidence" bson:"confidence"`
	// Last is the fitted value at the last x.
	Last  float64 `json:"last" bson:"last"`
	LastX float64 `json:"lastX" bson:"lastX"`
}

// At is the fitted value at x.
func (t Trend) At(x float64) float64 { return t.Intercept + t.Slope*x }

// DaysUntil is how many days after LastX the line reaches level (ok false
// when it moves away from it or is flat).
func (t Trend) DaysUntil(level float64) (days float64, ok bool) {
	if t.Slope == 0 || t.N < minTrendPoints {
		return 0, false
	}
	d := (level - t.Last) / t.Slope
	if d < 0 {
		return 0, false
	}
	return d, true
}

// LinearTrend fits y = a + b·x by least squares and gives R². ok is false
// with fewer than 3 points or all x equal. A perfectly flat y has R² 1.
func LinearTrend(xs, ys []float64) (t Trend, ok bool) {
	n := len(xs)
	if n != len(ys) || n < minTrendPoints {
		return Trend{N: n}, false
	}
	var sx, sy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
	}
	mx, my := sx/float64(n), sy/float64(n)
	var sxx, sxy, syy float64
	for i := range xs {
		dx, dy := xs[i]-mx, ys[i]-my
		sxx += dx * dx
		sxy += dx * dy
		syy += dy * dy
	}
	if sxx == 0 {
		return Trend{N: n}, false
	}
	b := sxy / sxx
	a := my - b*mx
	r2 := 1.0
	if syy > 0 {
		var sse float64
		for i := range xs {
			e := ys[i] - (a + b*xs[i])
			sse += e * e
		}
		r2 = max(0, 1-sse/syy)
	}
	t = Trend{Slope: b, Intercept: a, R2: r2, N: n, LastX: xs[n-1]}
	t.Last = t.At(t.LastX)
	switch {
	case r2 >= 0.7:
		t.Confidence = "high"
	case r2 >= 0.4:
		t.Confidence = "medium"
	default:
		t.Confidence = "low"
	}
	return t, true
}

// Outliers returns the indexes of values more than k standard deviations
// (population) from baseline[i] (nil: the mean of values). Fewer than 12
// values or no spread: none.
func Outliers(values, baseline []float64, k float64) (idx []int, sigma float64) {
	n := len(values)
	if n < 12 {
		return nil, 0
	}
	res := make([]float64, n)
	if baseline == nil {
		var m float64
		for _, v := range values {
			m += v
		}
		m /= float64(n)
		for i, v := range values {
			res[i] = v - m
		}
	} else {
		for i, v := range values {
			res[i] = v - baseline[i]
		}
	}
	var mr, ss float64
	for _, r := range res {
		mr += r
	}
	mr /= float64(n)
	for _, r := range res {
		ss += (r - mr) * (r - mr)
	}
	sigma = math.Sqrt(ss / float64(n))
	if sigma == 0 {
		return nil, 0
	}
	for i, r := range res {
		if math.Abs(r-mr) > k*sigma {
			idx = append(idx, i)
		}
	}
	return idx, sigma
}

// EffectivePower is the power of a sample in W with the sign of the
// current (positive charging, negative discharging): Power, or V × I when
// the BMS reports no power. Some BMSs report |P|; the current decides.
func EffectivePower(s bms.Snapshot) float64 {
	p, i := bms.V(s.Power), bms.V(s.Current)
	if p == 0 {
		return bms.V(s.OverallVoltage) * i
	}
	if i != 0 && (p > 0) != (i > 0) {
		return -p
	}
	return p
}

// Derived holds per-sample values the hourly rollups sum. The store
// computes it at insert time (FerretDB v1's $group can only $sum document
// fields, it cannot evaluate conditions), the in-memory path computes the
// same with Derive.
type Derived struct {
	ChargeW     float64 `json:"chargeW" bson:"chargeW"`         // max(P, 0)
	DischargeW  float64 `json:"dischargeW" bson:"dischargeW"`   // max(−P, 0)
	HasPower    int     `json:"hasPower" bson:"hasPower"`       // 1 when the power was measured (MeasuredPower)
	TempMax     float64 `json:"tempMax" bson:"tempMax"`         // hottest cell sensor, 0 when none
	HasTemp     int     `json:"hasTemp" bson:"hasTemp"`         // 1 when temperatures were measured
	ImbalanceMV float64 `json:"imbalanceMv" bson:"imbalanceMv"` // cell spread, mV
	HasCells    int     `json:"hasCells" bson:"hasCells"`       // 1 when cell data was present
	HighSOC     int     `json:"highSoc" bson:"highSoc"`         // 1 when SOC ≥ 80 % with remaining capacity
	EstCapAh    float64 `json:"estCapAh" bson:"estCapAh"`       // remaining/(SOC/100) when HighSOC, else 0
}

// Derive computes the derived values of one sample.
func Derive(s bms.Snapshot) Derived {
	var d Derived
	if p, ok := MeasuredPower(s); ok {
		d.HasPower = 1
		if p > 0 {
			d.ChargeW = p
		} else {
			d.DischargeW = -p
		}
	}
	if temps := s.Temps(); len(temps) > 0 {
		d.TempMax = slices.Max(temps)
		d.HasTemp = 1
	}
	if mv, ok := ImbalanceMV(s); ok {
		d.ImbalanceMV, d.HasCells = mv, 1
	}
	if ah, ok := EstimatedCapacityAh(bms.V(s.StateOfCharge), bms.V(s.RemainingCapacity)); ok {
		d.HighSOC, d.EstCapAh = 1, ah
	}
	return d
}

// HourNumber is the bucket of the hourly rollups: whole hours since the
// Unix epoch (stored as `hour` on each history document).
func HourNumber(t time.Time) int64 {
	u := t.Unix()
	h := u / 3600
	if u < 0 && u%3600 != 0 {
		h--
	}
	return h
}
