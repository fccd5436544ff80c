package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Limits of what the dashboard shows of a payload or result.
const (
	maxShownArray = 8
	maxShownBytes = 8 << 10
)

// FormatPayload is asynqmon's PayloadFormatter: the event as readable
// JSON, with long arrays of the BMS snapshot (cellVoltages, temperatures…)
// cut to their first values and a note of how many there were, long
// strings (customPrompt) cut at 500 bytes and anything over 8 KB cut. A
// payload that is not JSON is shown as text.
func FormatPayload(_ string, payload []byte) string {
	var v any
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return shorten(fmt.Sprintf("(not JSON, %d bytes) %s", len(payload), payload))
	}
	v = shortenValue(v, 0)
	return indent(v)
}

// FormatResult is asynqmon's ResultFormatter: a task's result as
// indented JSON (or text), cut at 8 KB.
func FormatResult(_ string, result []byte) string {
	if len(result) == 0 {
		return ""
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(result))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return shorten(string(result))
	}
	return indent(shortenValue(v, 0))
}

func indent(v any) string {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err.Error()
	}
	return shorten(string(b))
}

// shortenValue cuts long arrays and strings, recursively.
func shortenValue(v any, depth int) any {
	if depth > 8 {
		return "…"
	}
	switch x := v.(type) {
	case []any:
		n := len(x)
		if n > maxShownArray {
			out := make([]any, 0, maxShownArray+1)
			for _, e := range x[:maxShownArray] {
				out = append(out, shortenValue(e, depth+1))
			}
			return append(out, "… "+strconv.Itoa(n-maxShownArray)+" more ("+strconv.Itoa(n)+" values)")
		}
		for i, e := range x {
			x[i] = shortenValue(e, depth+1)
		}
		return x
	case map[string]any:
		for k, e := range x {
			x[k] = shortenValue(e, depth+1)
		}
		return x
	case string:
		if len(x) > 500 {
			return truncateUTF8(x, 500) + "… (" + strconv.Itoa(len(x)) + " bytes)"
		}
	}
	return v
}

func shorten(s string) string {
	if len(s) <= maxShownBytes {
		return s
	}
	return truncateUTF8(s, maxShownBytes) + "\n… (" + strconv.Itoa(len(s)) + " bytes in all)"
}

func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
