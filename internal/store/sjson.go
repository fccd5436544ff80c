package store

import (
	"bytes"
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

type sjSchema struct {
	P map[string]*sjElem `json:"p"`
	K []string           `json:"$k"`
}

type sjElem struct {
	T string    `json:"t"`
	S *sjSchema `json:"$s"`
	I []*sjElem `json:"i"`
	B *byte     `json:"s"`
	O *string   `json:"o"`
}

// decodeSJSON turns one FerretDB row into the document it stores.
func decodeSJSON(doc []byte) (bson.D, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("sjson: %w", err)
	}
	var sch sjSchema
	if err := json.Unmarshal(raw["$s"], &sch); err != nil {
		return nil, fmt.Errorf("sjson schema: %w", err)
	}
	return sjDoc(raw, &sch)
}

func sjDoc(raw map[string]json.RawMessage, sch *sjSchema) (bson.D, error) {
	d := make(bson.D, 0, len(sch.K))
	for _, k := range sch.K {
		e := sch.P[k]
		if e == nil {
			return nil, fmt.Errorf("sjson: field %q has no schema", k)
		}
		v, err := sjValue(raw[k], e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
		d = append(d, bson.E{Key: k, Value: v})
	}
	return d, nil
}

func sjValue(raw json.RawMessage, e *sjElem) (any, error) {
	switch e.T {
	case "object":
		var m map[string]json.RawMessage
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
		if e.S == nil {
			return bson.D{}, nil
		}
		return sjDoc(m, e.S)
	case "array":
		var items []json.RawMessage
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, err
		}
		if len(items) != len(e.I) {
			return nil, fmt.Errorf("sjson: %d items, %d in the schema", len(items), len(e.I))
		}
		a := make(bson.A, len(items))
		for i := range items {
			v, err := sjValue(items[i], e.I[i])
			if err != nil {
				return nil, err
			}
			a[i] = v
		}
		return a, nil
	case "double":
		return strconv.ParseFloat(string(raw), 64)
	case "string":
		var s string
		err := json.Unmarshal(raw, &s)
		return s, err
	case "binData":
		var b []byte
		if err := json.Unmarshal(raw, &b); err != nil {
			return nil, err
		}
		var sub byte
		if e.B != nil {
			sub = *e.B
		}
		return bson.Binary{Subtype: sub, Data: b}, nil
	case "objectId":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return bson.ObjectIDFromHex(s)
	case "bool":
		return bytes.Equal(raw, []byte("true")), nil
	case "date":
		ms, err := strconv.ParseInt(string(raw), 10, 64)
		return bson.DateTime(ms), err
	case "null":
		return nil, nil
	case "regex":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		o := ""
		if e.O != nil {
			o = *e.O
		}
		return bson.Regex{Pattern: s, Options: o}, nil
	case "int":
		n, err := strconv.ParseInt(string(raw), 10, 32)
		return int32(n), err
	case "timestamp":
		n, err := strconv.ParseUint(string(raw), 10, 64)
		return bson.Timestamp{T: uint32(n >> 32), I: uint32(n)}, err
	case "long":
		return strconv.ParseInt(string(raw), 10, 64)
	}
	return nil, fmt.Errorf("sjson: unknown type %q", e.T)
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
