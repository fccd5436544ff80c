// Package bms holds the battery-management-system data types shared by the
// wire contract (tasks), the store and the insights engine, in the shapes
// the BMS app (Treystu/BMSview) writes them. It imports nothing of ours so
// every other package may depend on it.
package bms

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Snapshot is one BMS reading, the `analysisData` of a generate-insights
// event (docs/DESIGN.md section 7). Units are in the field comments. A number
// the BMS did not measure is nil (the app sends null): never 0 °C or 0 %.
// Fields this type does not name are kept in Extra and written back as
// they came.
type Snapshot struct {
	StateOfCharge         *float64  `json:"stateOfCharge,omitempty" bson:"stateOfCharge,omitempty"`                 // %
	OverallVoltage        *float64  `json:"overallVoltage,omitempty" bson:"overallVoltage,omitempty"`               // V
	Current               *float64  `json:"current,omitempty" bson:"current,omitempty"`                             // A, negative = discharging
	Power                 *float64  `json:"power,omitempty" bson:"power,omitempty"`                                 // W
	RemainingCapacity     *float64  `json:"remainingCapacity,omitempty" bson:"remainingCapacity,omitempty"`         // Ah
	FullCapacity          *float64  `json:"fullCapacity,omitempty" bson:"fullCapacity,omitempty"`                   // Ah
	CycleCount            *float64  `json:"cycleCount,omitempty" bson:"cycleCount,omitempty"`                       //
	HighestCellVoltage    *float64  `json:"highestCellVoltage,omitempty" bson:"highestCellVoltage,omitempty"`       // V
	LowestCellVoltage     *float64  `json:"lowestCellVoltage,omitempty" bson:"lowestCellVoltage,omitempty"`         // V
	AverageCellVoltage    *float64  `json:"averageCellVoltage,omitempty" bson:"averageCellVoltage,omitempty"`       // V
	CellVoltageDifference *float64  `json:"cellVoltageDifference,omitempty" bson:"cellVoltageDifference,omitempty"` // V
	CellVoltages          []float64 `json:"cellVoltages,omitempty" bson:"cellVoltages,omitempty"`
	// Temperature is the main battery sensor (°C); Temperatures all
	// sensors, often absent.
	Temperature      *float64  `json:"temperature,omitempty" bson:"temperature,omitempty"`
	Temperatures     []float64 `json:"temperatures,omitempty" bson:"temperatures,omitempty"`
	MOSTemperature   *float64  `json:"mosTemperature,omitempty" bson:"mosTemperature,omitempty"` // °C
	ChargeMOSOn      *bool     `json:"chargeMosOn,omitempty" bson:"chargeMosOn,omitempty"`
	DischargeMOSOn   *bool     `json:"dischargeMosOn,omitempty" bson:"dischargeMosOn,omitempty"`
	BalanceOn        *bool     `json:"balanceOn,omitempty" bson:"balanceOn,omitempty"`
	Alerts           []string  `json:"alerts,omitempty" bson:"alerts,omitempty"`
	Summary          string    `json:"summary,omitempty" bson:"summary,omitempty"`
	Status           string    `json:"status,omitempty" bson:"status,omitempty"`
	HardwareSystemID string    `json:"hardwareSystemId,omitempty" bson:"hardwareSystemId,omitempty"`
	DLNumber         string    `json:"dlNumber,omitempty" bson:"dlNumber,omitempty"` // legacy name of hardwareSystemId
	SerialNumber     string    `json:"serialNumber,omitempty" bson:"serialNumber,omitempty"`
	// Extra holds the fields the app adds that are not named above.
	Extra map[string]any `json:"-" bson:",inline"`
}

// F returns a pointer to v (building snapshots in code).
func F(v float64) *float64 { return &v }

// V is the value of a reading, 0 when it was not measured: for sums and
// products where an unmeasured value contributes nothing.
func V(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}

// Temps are the battery temperatures: every sensor where given, else the
// main sensor, else none. The MOSFET temperature is apart.
func (s *Snapshot) Temps() []float64 {
	if len(s.Temperatures) > 0 {
		return s.Temperatures
	}
	if s.Temperature != nil {
		return []float64{*s.Temperature}
	}
	return nil
}

// snapshotFields is Snapshot without its methods, for the default codecs.
type snapshotFields Snapshot

// UnmarshalJSON decodes the named fields with their types checked and keeps
// every other field in Extra.
func (s *Snapshot) UnmarshalJSON(b []byte) error {
	var f snapshotFields
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(b, &all); err != nil {
		return err
	}
	for _, k := range knownFields {
		delete(all, k)
	}
	f.Extra = nil
	for k, raw := range all {
		var v any
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil {
			return err
		}
		if f.Extra == nil {
			f.Extra = map[string]any{}
		}
		f.Extra[k] = plainNumbers(v)
	}
	*s = Snapshot(f)
	return nil
}

// plainNumbers turns json.Numbers into int64 or float64 so that Extra
// stores as BSON numbers.
func plainNumbers(v any) any {
	switch x := v.(type) {
	case json.Number:
		if i, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return i
		}
		f, _ := x.Float64()
		return f
	case map[string]any:
		for k, e := range x {
			x[k] = plainNumbers(e)
		}
	case []any:
		for i, e := range x {
			x[i] = plainNumbers(e)
		}
	}
	return v
}

// MarshalJSON writes the named fields, then Extra.
func (s Snapshot) MarshalJSON() ([]byte, error) {
	b, err := json.Marshal(snapshotFields(s))
	if err != nil || len(s.Extra) == 0 {
		return b, err
	}
	extra, err := json.Marshal(s.Extra)
	if err != nil {
		return nil, err
	}
	if len(b) == 2 { // {}
		return extra, nil
	}
	return append(append(b[:len(b)-1], ','), extra[1:]...), nil
}

var knownFields = func() []string {
	var out []string
	b, _ := json.Marshal(snapshotFields{
		StateOfCharge: F(0), OverallVoltage: F(0), Current: F(0), Power: F(0), RemainingCapacity: F(0),
		FullCapacity: F(0), CycleCount: F(0), HighestCellVoltage: F(0), LowestCellVoltage: F(0),
		AverageCellVoltage: F(0), CellVoltageDifference: F(0), CellVoltages: []float64{0}, Temperature: F(0),
		Temperatures: []float64{0}, MOSTemperature: F(0), ChargeMOSOn: new(bool), DischargeMOSOn: new(bool),
		BalanceOn: new(bool), Alerts: []string{""}, Summary: "x", Status: "x", HardwareSystemID: "x", DLNumber: "x", SerialNumber: "x",
	})
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	for k := range m {
		out = append(out, k)
	}
	return out
}()

// recordFields is Record with a Snapshot that keeps no Extra.
type recordFields struct {
	ID               string         `json:"id,omitempty"`
	SystemID         string         `json:"systemId"`
	SystemName       string         `json:"systemName,omitempty"`
	Timestamp        Time           `json:"timestamp"`
	Analysis         snapshotFields `json:"analysis"`
	HardwareSystemID string         `json:"hardwareSystemId,omitempty"`
	Weather          *Weather       `json:"weather,omitempty"`
	FileName         string         `json:"fileName,omitempty"`
}

// DecodeRecordJSON decodes a history record for analysis in one pass:
// fields of the snapshot this package does not name are skipped, not kept
// in Extra (reading a window decodes thousands of records).
func DecodeRecordJSON(b []byte, r *Record) error {
	var f recordFields
	if err := json.Unmarshal(b, &f); err != nil {
		return err
	}
	*r = Record{ID: f.ID, SystemID: f.SystemID, SystemName: f.SystemName, Timestamp: f.Timestamp,
		Analysis: Snapshot(f.Analysis), HardwareSystemID: f.HardwareSystemID, Weather: f.Weather, FileName: f.FileName}
	return nil
}

// Time is a history timestamp. The BMS app writes ISO-8601 UTC strings
// ("2026-11-20T08:15:00.000Z"); BSON dates are read too. It is written as
// the app writes it: a string.
type Time struct{ time.Time }

// ISO is the app's timestamp layout (JavaScript's toISOString).
const ISO = "2006-01-02T15:04:05.000Z"

// ParseTime reads an ISO-8601 / RFC 3339 timestamp.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		// JavaScript's Date also writes a space-less form without zone;
		// the app's records are UTC.
		if t2, err2 := time.Parse("2006-01-02T15:04:05.999999999", s); err2 == nil {
			return t2.UTC(), nil
		}
		return time.Time{}, err
	}
	return t.UTC(), nil
}

// MarshalBSONValue writes the app's string form.
func (t Time) MarshalBSONValue() (byte, []byte, error) {
	typ, b, err := bson.MarshalValue(t.UTC().Format(ISO))
	return byte(typ), b, err
}

// UnmarshalBSONValue reads a string or a BSON date.
func (t *Time) UnmarshalBSONValue(typ byte, data []byte) error {
	rv := bson.RawValue{Type: bson.Type(typ), Value: data}
	switch rv.Type {
	case bson.TypeString:
		tt, err := ParseTime(rv.StringValue())
		if err != nil {
			return fmt.Errorf("timestamp %q: %w", rv.StringValue(), err)
		}
		t.Time = tt
	case bson.TypeDateTime:
		t.Time = rv.Time().UTC()
	case bson.TypeNull:
		t.Time = time.Time{}
	default:
		return fmt.Errorf("timestamp: want a string or a date, got BSON %s", rv.Type)
	}
	return nil
}

// MarshalJSON writes the app's string form.
func (t Time) MarshalJSON() ([]byte, error) { return json.Marshal(t.UTC().Format(ISO)) }

// UnmarshalJSON reads a string, or Unix milliseconds (FerretDB's SQLite
// form of a BSON date).
func (t *Time) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		tt, err := ParseTime(s)
		if err != nil {
			return err
		}
		t.Time = tt
		return nil
	}
	if string(b) == "null" {
		t.Time = time.Time{}
		return nil
	}
	ms, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return errors.New("timestamp: want an ISO string or milliseconds")
	}
	t.Time = time.UnixMilli(int64(ms)).UTC()
	return nil
}

// Record is one document of the `history` collection as the BMS app writes
// it: a snapshot of a system at a time. ID is the app's `id` field (its
// `_id` is an ObjectId, or a UUID string).
type Record struct {
	ID               string   `json:"id,omitempty" bson:"id,omitempty"`
	SystemID         string   `json:"systemId" bson:"systemId"`
	SystemName       string   `json:"systemName,omitempty" bson:"systemName,omitempty"`
	Timestamp        Time     `json:"timestamp" bson:"timestamp"`
	Analysis         Snapshot `json:"analysis" bson:"analysis"`
	HardwareSystemID string   `json:"hardwareSystemId,omitempty" bson:"hardwareSystemId,omitempty"`
	Weather          *Weather `json:"weather,omitempty" bson:"weather,omitempty"`
	FileName         string   `json:"fileName,omitempty" bson:"fileName,omitempty"`
}

// At is the record's time.
func (r Record) At() time.Time { return r.Timestamp.Time }

// Weather is the app's weather at a history record.
type Weather struct {
	Temp        *float64 `json:"temp,omitempty" bson:"temp,omitempty"`
	Clouds      *float64 `json:"clouds,omitempty" bson:"clouds,omitempty"`
	UVI         *float64 `json:"uvi,omitempty" bson:"uvi,omitempty"`
	WeatherMain string   `json:"weather_main,omitempty" bson:"weather_main,omitempty"`
	WeatherIcon string   `json:"weather_icon,omitempty" bson:"weather_icon,omitempty"`
}

// System is one document of the `systems` collection as the BMS app writes
// it, found by its `id` (a UUID; its `_id` is an ObjectId, or equal to `id`
// for the systems our demo creates).
type System struct {
	ID                       string   `json:"id" bson:"id"`
	Name                     string   `json:"name" bson:"name"`
	Chemistry                string   `json:"chemistry" bson:"chemistry"` // "LiFePO4", "Li-ion", "lead-acid"
	Voltage                  float64  `json:"voltage" bson:"voltage"`     // nominal V
	Capacity                 float64  `json:"capacity" bson:"capacity"`   // Ah
	Latitude                 float64  `json:"latitude" bson:"latitude"`
	Longitude                float64  `json:"longitude" bson:"longitude"`
	AssociatedHardwareIDs    []string `json:"associatedHardwareIds,omitempty" bson:"associatedHardwareIds,omitempty"`
	MaxAmpsSolarCharging     float64  `json:"maxAmpsSolarCharging" bson:"maxAmpsSolarCharging"`
	MaxAmpsGeneratorCharging float64  `json:"maxAmpsGeneratorCharging" bson:"maxAmpsGeneratorCharging"`
	// LastInsights is set by the insights-completed follow-up.
	LastInsights map[string]any `json:"lastInsights,omitempty" bson:"lastInsights,omitempty"`
}

// MeasuredFields names the readings a snapshot may carry: a snapshot with
// none of them (an unreadable screenshot, a misspelled key) has nothing to
// analyse.
var MeasuredFields = []string{"stateOfCharge", "overallVoltage", "current", "power", "remainingCapacity",
	"fullCapacity", "cycleCount", "highestCellVoltage", "lowestCellVoltage", "averageCellVoltage",
	"cellVoltageDifference", "cellVoltages", "temperature", "temperatures", "mosTemperature"}

// Measured reports whether s carries at least one reading of
// MeasuredFields.
func (s *Snapshot) Measured() bool {
	for _, p := range []*float64{s.StateOfCharge, s.OverallVoltage, s.Current, s.Power, s.RemainingCapacity,
		s.FullCapacity, s.CycleCount, s.HighestCellVoltage, s.LowestCellVoltage, s.AverageCellVoltage,
		s.CellVoltageDifference, s.Temperature, s.MOSTemperature} {
		if p != nil {
			return true
		}
	}
	return len(s.CellVoltages) > 0 || len(s.Temperatures) > 0
}
