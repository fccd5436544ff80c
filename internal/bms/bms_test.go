package bms

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestJSONNullIsNotMeasured(t *testing.T) {
	var s Snapshot
	if err := json.Unmarshal([]byte(`{"stateOfCharge":null,"temperature":null,"mosTemperature":null,"chargeMosOn":null,"overallVoltage":52.1}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.StateOfCharge != nil || s.Temperature != nil || s.MOSTemperature != nil || s.ChargeMOSOn != nil {
		t.Fatalf("null decoded as a value: %+v", s)
	}
	if s.OverallVoltage == nil || *s.OverallVoltage != 52.1 {
		t.Fatalf("overallVoltage %v", s.OverallVoltage)
	}
	if len(s.Extra) != 0 {
		t.Fatalf("named fields in Extra: %v", s.Extra)
	}
	if s.Temps() != nil {
		t.Fatalf("Temps of no sensor = %v", s.Temps())
	}
	// A measured 0 stays a value.
	if err := json.Unmarshal([]byte(`{"stateOfCharge":0,"temperature":0}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.StateOfCharge == nil || *s.StateOfCharge != 0 || !reflect.DeepEqual(s.Temps(), []float64{0}) {
		t.Fatalf("measured 0: %+v", s)
	}
	if V(nil) != 0 || V(F(3.5)) != 3.5 {
		t.Fatal("V")
	}
}

func TestTempsPrefersAllSensors(t *testing.T) {
	s := Snapshot{Temperature: F(20), Temperatures: []float64{21, 22}}
	if !reflect.DeepEqual(s.Temps(), []float64{21, 22}) {
		t.Fatalf("Temps = %v", s.Temps())
	}
	s.Temperatures = nil
	if !reflect.DeepEqual(s.Temps(), []float64{20}) {
		t.Fatalf("Temps = %v", s.Temps())
	}
}

func TestUnknownFieldsRoundTrip(t *testing.T) {
	in := `{"stateOfCharge":76.5,"cycleCount":12,"chargeMosOn":true,"temperature":24.5,"cellCount":16,"vendor":"JK","ratio":0.25,"flags":["a","b"],"cells":{"n":16,"v":[3.31,{"max":3.4}]}}`
	var s Snapshot
	if err := json.Unmarshal([]byte(in), &s); err != nil {
		t.Fatal(err)
	}
	wantExtra := map[string]any{"cellCount": int64(16), "vendor": "JK", "ratio": 0.25, "flags": []any{"a", "b"},
		"cells": map[string]any{"n": int64(16), "v": []any{3.31, map[string]any{"max": 3.4}}}}
	if !reflect.DeepEqual(s.Extra, wantExtra) {
		t.Fatalf("Extra = %#v, want %#v", s.Extra, wantExtra)
	}
	if s.StateOfCharge == nil || *s.StateOfCharge != 76.5 || s.ChargeMOSOn == nil || !*s.ChargeMOSOn || s.Temperature == nil || *s.Temperature != 24.5 {
		t.Fatalf("named fields: %+v", s)
	}

	// JSON: written back as they came.
	out, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	assertSameJSON(t, "JSON", in, string(out))

	// BSON: Extra is inlined at the top level of the document.
	b, err := bson.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	raw := bson.Raw(b)
	if v := raw.Lookup("cellCount"); v.Type != bson.TypeInt64 || v.Int64() != 16 {
		t.Fatalf("cellCount in BSON: %v", v)
	}
	if v := raw.Lookup("vendor"); v.Type != bson.TypeString || v.StringValue() != "JK" {
		t.Fatalf("vendor in BSON: %v", v)
	}
	if _, err := raw.LookupErr("Extra"); err == nil {
		t.Fatal("Extra written as a sub-document")
	}
	var back Snapshot
	if err := bson.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.StateOfCharge == nil || *back.StateOfCharge != 76.5 || back.CycleCount == nil || *back.CycleCount != 12 ||
		back.ChargeMOSOn == nil || !*back.ChargeMOSOn || back.Temperature == nil || *back.Temperature != 24.5 {
		t.Fatalf("named fields after BSON: %+v", back)
	}
	if back.Extra["cellCount"] != int64(16) || back.Extra["vendor"] != "JK" || back.Extra["ratio"] != 0.25 {
		t.Fatalf("Extra after BSON = %#v", back.Extra)
	}
	for _, k := range []string{"stateOfCharge", "cycleCount", "chargeMosOn", "temperature"} {
		if _, ok := back.Extra[k]; ok {
			t.Fatalf("named field %s in Extra after BSON: %#v", k, back.Extra)
		}
	}
	// And out again as JSON, as the app wrote it.
	out, err = json.Marshal(back)
	if err != nil {
		t.Fatal(err)
	}
	assertSameJSON(t, "JSON after BSON", in, string(out))
}

func assertSameJSON(t *testing.T, what, want, got string) {
	t.Helper()
	var w, g any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Fatalf("%s: %v in %s", what, err, got)
	}
	if !reflect.DeepEqual(w, g) {
		t.Fatalf("%s:\n got %s\nwant %s", what, got, want)
	}
}

func TestStringForNumberFails(t *testing.T) {
	for _, in := range []string{`{"stateOfCharge":"80"}`, `{"temperature":"25"}`, `{"temperatures":["25"]}`, `{"chargeMosOn":"true"}`} {
		var s Snapshot
		err := json.Unmarshal([]byte(in), &s)
		var te *json.UnmarshalTypeError
		if err == nil {
			t.Errorf("%s decoded: %+v", in, s)
		} else if !errors.As(err, &te) {
			t.Errorf("%s: %v is not a type error", in, err)
		}
	}
}

func TestTime(t *testing.T) {
	want := time.Date(2026, 11, 20, 8, 15, 0, 0, time.UTC)
	const iso = "2026-11-20T08:15:00.000Z"

	// JSON: reads the app's ISO string, writes it back the same.
	var r Record
	if err := json.Unmarshal([]byte(`{"id":"r1","systemId":"s1","timestamp":"`+iso+`","analysis":{}}`), &r); err != nil {
		t.Fatal(err)
	}
	if !r.At().Equal(want) || r.ID != "r1" {
		t.Fatalf("JSON timestamp %v id %q", r.At(), r.ID)
	}
	b, err := json.Marshal(Time{Time: want})
	if err != nil || string(b) != `"`+iso+`"` {
		t.Fatalf("JSON write %s %v", b, err)
	}
	// Another zone is written in UTC.
	b, _ = json.Marshal(Time{Time: want.In(time.FixedZone("CET", 3600))})
	if string(b) != `"`+iso+`"` {
		t.Fatalf("JSON write from CET %s", b)
	}

	// BSON: a string is read.
	doc, err := bson.Marshal(bson.D{{Key: "systemId", Value: "s1"}, {Key: "timestamp", Value: iso}})
	if err != nil {
		t.Fatal(err)
	}
	r = Record{}
	if err := bson.Unmarshal(doc, &r); err != nil {
		t.Fatal(err)
	}
	if !r.At().Equal(want) {
		t.Fatalf("BSON string timestamp %v", r.At())
	}
	// BSON: a date is read.
	doc, err = bson.Marshal(bson.D{{Key: "systemId", Value: "s1"}, {Key: "timestamp", Value: bson.NewDateTimeFromTime(want)}})
	if err != nil {
		t.Fatal(err)
	}
	r = Record{}
	if err := bson.Unmarshal(doc, &r); err != nil {
		t.Fatal(err)
	}
	if !r.At().Equal(want) || r.At().Location() != time.UTC {
		t.Fatalf("BSON date timestamp %v", r.At())
	}
	// BSON: written as the ISO string.
	out, err := bson.Marshal(Record{ID: "r1", SystemID: "s1", Timestamp: Time{Time: want}})
	if err != nil {
		t.Fatal(err)
	}
	v := bson.Raw(out).Lookup("timestamp")
	if v.Type != bson.TypeString || v.StringValue() != iso {
		t.Fatalf("BSON write: %s %v", v.Type, v)
	}
	if id := bson.Raw(out).Lookup("id"); id.StringValue() != "r1" {
		t.Fatalf("BSON id %v", id)
	}
	// A wrong type is refused.
	doc, _ = bson.Marshal(bson.D{{Key: "timestamp", Value: int32(5)}})
	if err := bson.Unmarshal(doc, &r); err == nil {
		t.Fatal("int32 timestamp accepted")
	}
}

func TestSystemIDTag(t *testing.T) {
	b, err := bson.Marshal(System{ID: "u-1", Name: "n"})
	if err != nil {
		t.Fatal(err)
	}
	if v := bson.Raw(b).Lookup("id"); v.StringValue() != "u-1" {
		t.Fatalf("system id in BSON: %v", v)
	}
}
