package tasks

import (
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
)

// MaxSnapshotDepth is how deep objects and arrays may nest in a snapshot
// (analysisData itself is level 1). A BMS snapshot is flat but for its
// cell and sensor lists; the limit keeps every snapshot within what
// MongoDB (100 levels for a whole document) and the embedded FerretDB
// store, with room for the job around it.
const MaxSnapshotDepth = 20

// CheckSnapshot refuses, naming the field (field is the snapshot's own
// name, "eventData.analysisData"), a snapshot that no store can hold or
// that would break the answers that show it: a key with `$`, `.` or NUL,
// nesting deeper than MaxSnapshotDepth, a number that is not finite (JSON
// 1e400 reads as +Inf, which MongoDB would store and no JSON answer could
// then carry).
func CheckSnapshot(field string, s *AnalysisData) error {
	if s == nil {
		return nil
	}
	return walkSnapshot(field, reflect.ValueOf(s).Elem(), 1, false)
}

// CheckSnapshotFerretDB is CheckSnapshot and, besides, what FerretDB v1
// (the embedded default store) cannot store though MongoDB can: an array
// directly inside an array ([[1,2],[3,4]]). The store calls it before it
// writes a run's request.
func CheckSnapshotFerretDB(field string, s *AnalysisData) error {
	if s == nil {
		return nil
	}
	return walkSnapshot(field, reflect.ValueOf(s).Elem(), 1, true)
}

// walkSnapshot checks v, found at path, nested depth levels deep (v itself
// counted when it is an object or an array).
func walkSnapshot(path string, v reflect.Value, depth int, noNestedArrays bool) error {
	for v.Kind() == reflect.Pointer || v.Kind() == reflect.Interface {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Float32, reflect.Float64:
		if f := v.Float(); math.IsInf(f, 0) || math.IsNaN(f) {
			return fieldErr(path, "must be a finite number (JSON numbers beyond ±1.8e308, like 1e400, are not)")
		}
	case reflect.Struct:
		if err := nestedTooDeep(path, depth); err != nil {
			return err
		}
		t := v.Type()
		for i := range t.NumField() {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" && f.Type.Kind() == reflect.Map {
				// The fields the app adds (Snapshot.Extra), inline.
				if err := walkEntries(path, v.Field(i), depth, noNestedArrays); err != nil {
					return err
				}
				continue
			}
			if name == "" || name == "-" {
				continue
			}
			if err := walkSnapshot(path+"."+name, v.Field(i), depth+1, noNestedArrays); err != nil {
				return err
			}
		}
	case reflect.Map:
		if err := nestedTooDeep(path, depth); err != nil {
			return err
		}
		return walkEntries(path, v, depth, noNestedArrays)
	case reflect.Slice, reflect.Array:
		if v.Kind() == reflect.Slice && v.IsNil() {
			return nil
		}
		if err := nestedTooDeep(path, depth); err != nil {
			return err
		}
		for i := range v.Len() {
			e := v.Index(i)
			for e.Kind() == reflect.Interface && !e.IsNil() {
				e = e.Elem()
			}
			at := path + "." + strconv.Itoa(i)
			if noNestedArrays && (e.Kind() == reflect.Slice || e.Kind() == reflect.Array) && e.Type().Elem().Kind() != reflect.Uint8 {
				return fieldErr(at, "is an array inside an array (like [[1,2],[3,4]]), which the embedded store (FerretDB v1) cannot store; send it as an array of objects or flattened")
			}
			if err := walkSnapshot(at, e, depth+1, noNestedArrays); err != nil {
				return err
			}
		}
	}
	return nil
}

// walkEntries checks the keys and values of a map whose keys are strings,
// in key order, so that a snapshot always names the same field.
func walkEntries(path string, m reflect.Value, depth int, noNestedArrays bool) error {
	kt := m.Type().Key()
	if kt.Kind() != reflect.String {
		return nil
	}
	keys := make([]string, 0, m.Len())
	for _, k := range m.MapKeys() {
		keys = append(keys, k.String())
	}
	for _, k := range slices.Sorted(slices.Values(keys)) {
		if strings.ContainsAny(k, "$.\x00") {
			what := "`$` or `.`"
			if strings.ContainsRune(k, 0) {
				what = "NUL"
			}
			return fieldErr(path+"."+strconv.Quote(k), "keys must not contain %s (MongoDB refuses them)", what)
		}
		if err := walkSnapshot(path+"."+k, m.MapIndex(reflect.ValueOf(k).Convert(kt)), depth+1, noNestedArrays); err != nil {
			return err
		}
	}
	return nil
}

func nestedTooDeep(path string, depth int) error {
	if depth > MaxSnapshotDepth {
		return fieldErr(path, "nests objects and arrays %d levels deep, over the limit of %d", depth, MaxSnapshotDepth)
	}
	return nil
}
