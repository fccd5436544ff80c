package web

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
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

// redisInfoPath is asynqmon's Redis page's API.
const redisInfoPath = monitorRoot + "/api/redis_info"

// redisInfoHidden are the INFO fields that tell where Redis listens.
var redisInfoHidden = map[string]bool{"tcp_port": true, "executable": true, "config_file": true}

// viewerRedisInfo serves asynqmon's redis_info to the viewer without
// where Redis listens (its address, port, cluster nodes): a read-only
// login must not learn the address of a store that, reached directly,
// might not ask for credentials.
func (s *Server) viewerRedisInfo(w http.ResponseWriter, r *http.Request) {
	rec := &bufferedResponse{header: http.Header{}}
	s.monitorRO.ServeHTTP(rec, r)
	var info map[string]any
	if rec.code != 0 && rec.code != http.StatusOK || json.Unmarshal(rec.body.Bytes(), &info) != nil {
		writeError(w, http.StatusBadGateway, "the dashboard's Redis information could not be read", "")
		return
	}
	info["address"] = "(hidden from the read-only login)"
	if m, ok := info["info"].(map[string]any); ok {
		for k := range redisInfoHidden {
			delete(m, k)
		}
	}
	if raw, ok := info["raw_info"].(string); ok {
		var kept []string
		for _, line := range strings.Split(raw, "\n") {
			k, _, _ := strings.Cut(line, ":")
			if !redisInfoHidden[strings.TrimSpace(k)] {
				kept = append(kept, line)
			}
		}
		info["raw_info"] = strings.Join(kept, "\n")
	}
	if _, ok := info["raw_cluster_nodes"]; ok {
		info["raw_cluster_nodes"] = ""
	}
	if qs, ok := info["queue_locations"].([]any); ok {
		for _, q := range qs {
			if m, ok := q.(map[string]any); ok {
				m["nodes"] = []string{}
			}
		}
	}
	writeJSON(w, http.StatusOK, info)
}

// bufferedResponse keeps a handler's answer to be changed before it is
// sent.
type bufferedResponse struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (b *bufferedResponse) Header() http.Header         { return b.header }
func (b *bufferedResponse) Write(p []byte) (int, error) { return b.body.Write(p) }
func (b *bufferedResponse) WriteHeader(code int) {
	if b.code == 0 {
		b.code = code
	}
}
