package store

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// FerretDB v1 stores a document in SQLite as JSON with its BSON types beside
// it ("sjson"): `{"$s": {"p": {field: elem}, "$k": [keys in order]},
// field: value, ...}`, an elem being `{"t": type}` plus the schema of an
// object (`$s`), the items of an array (`i`), a binary's subtype (`s`) or
// a regex's options (`o`). Dates are Unix milliseconds, ObjectIds hex,
// binaries base64. Reading a page of jobs this way, straight from the rows
// the index selected, costs a JSON decode per job instead of a FerretDB
// round trip (measured: 4–10 ms per 10 KB job through FerretDB, docs/bench.md).

// decodeSJSON turns one FerretDB row into the document it stores. The row
// is parsed once (numbers kept as text), then walked with its schema.
func decodeSJSON(doc []byte) (bson.D, error) {
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("sjson: %w", err)
	}
	sch, _ := v["$s"].(map[string]any)
	if sch == nil {
		return nil, fmt.Errorf("sjson: no schema")
	}
	return sjDoc(v, sch)
}

// sjDoc is the object v with schema sch (`{"p": {...}, "$k": [...]}`).
func sjDoc(v map[string]any, sch map[string]any) (bson.D, error) {
	props, _ := sch["p"].(map[string]any)
	keys, _ := sch["$k"].([]any)
	d := make(bson.D, 0, len(keys))
	for _, k := range keys {
		key, _ := k.(string)
		e, _ := props[key].(map[string]any)
		if e == nil {
			return nil, fmt.Errorf("sjson: field %q has no schema", key)
		}
		x, err := sjValue(v[key], e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		d = append(d, bson.E{Key: key, Value: x})
	}
	return d, nil
}

func sjValue(v any, e map[string]any) (any, error) {
	t, _ := e["t"].(string)
	str := func() (string, error) {
		s, ok := v.(string)
		if !ok {
			return "", fmt.Errorf("sjson: %s is not a string", t)
		}
		return s, nil
	}
	num := func() (string, error) {
		n, ok := v.(json.Number)
		if !ok {
			return "", fmt.Errorf("sjson: %s is not a number", t)
		}
		return string(n), nil
	}
	switch t {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("sjson: object is not one")
		}
		sch, _ := e["$s"].(map[string]any)
		if sch == nil {
			return bson.D{}, nil
		}
		return sjDoc(m, sch)
	case "array":
		items, ok := v.([]any)
		if !ok {
			return nil, fmt.Errorf("sjson: array is not one")
		}
		schemas, _ := e["i"].([]any)
		if len(items) != len(schemas) {
			return nil, fmt.Errorf("sjson: %d items, %d in the schema", len(items), len(schemas))
		}
		a := make(bson.A, len(items))
		for i := range items {
			ie, _ := schemas[i].(map[string]any)
			x, err := sjValue(items[i], ie)
			if err != nil {
				return nil, err
			}
			a[i] = x
		}
		return a, nil
	case "double":
		n, err := num()
		if err != nil {
			return nil, err
		}
		return strconv.ParseFloat(n, 64)
	case "string":
		return str()
	case "binData":
		s, err := str()
		if err != nil {
			return nil, err
		}
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, err
		}
		sub, _ := e["s"].(json.Number)
		st, _ := strconv.ParseUint(string(sub), 10, 8)
		return bson.Binary{Subtype: byte(st), Data: b}, nil
	case "objectId":
		s, err := str()
		if err != nil {
			return nil, err
		}
		return bson.ObjectIDFromHex(s)
	case "bool":
		b, ok := v.(bool)
		if !ok {
			return nil, fmt.Errorf("sjson: bool is not one")
		}
		return b, nil
	case "date":
		n, err := num()
		if err != nil {
			return nil, err
		}
		ms, err := strconv.ParseInt(n, 10, 64)
		return bson.DateTime(ms), err
	case "null":
		return nil, nil
	case "regex":
		s, err := str()
		if err != nil {
			return nil, err
		}
		o, _ := e["o"].(string)
		return bson.Regex{Pattern: s, Options: o}, nil
	case "int":
		n, err := num()
		if err != nil {
			return nil, err
		}
		x, err := strconv.ParseInt(n, 10, 32)
		return int32(x), err
	case "timestamp":
		n, err := num()
		if err != nil {
			return nil, err
		}
		x, err := strconv.ParseUint(n, 10, 64)
		return bson.Timestamp{T: uint32(x >> 32), I: uint32(x)}, err
	case "long":
		n, err := num()
		if err != nil {
			return nil, err
		}
		return strconv.ParseInt(n, 10, 64)
	}
	return nil, fmt.Errorf("sjson: unknown type %q", t)
}

// decodeJobSJSON reads a job from its FerretDB row, as the driver would
// decode it (nested documents in `any` fields as maps).
func decodeJobSJSON(doc []byte) (*Job, error) {
	d, err := decodeSJSON(doc)
	if err != nil {
		return nil, err
	}
	b, err := bson.Marshal(d)
	if err != nil {
		return nil, err
	}
	dec := bson.NewDecoder(bson.NewDocumentReader(bytes.NewReader(b)))
	dec.DefaultDocumentMap()
	var j Job
	if err := dec.Decode(&j); err != nil {
		return nil, err
	}
	if j.Steps == nil {
		j.Steps = map[string]StepState{}
	}
	return &j, nil
}
