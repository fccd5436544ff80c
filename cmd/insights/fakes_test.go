package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeGemini answers generateContent; while hang is set it holds each call
// until the caller gives up (a model that never answers).
type fakeGemini struct {
	srv    *httptest.Server
	hang   atomic.Bool
	called chan struct{}
	// release frees calls held by hang when the test ends.
	release chan struct{}
	once    sync.Once
}

func newFakeGemini(t *testing.T) *fakeGemini {
	f := &fakeGemini{called: make(chan struct{}), release: make(chan struct{})}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.once.Do(func() { close(f.called) })
		if f.hang.Load() {
			select {
			case <-r.Context().Done():
			case <-f.release:
			}
			return
		}
		b, _ := json.Marshal(map[string]any{"candidates": []any{map[string]any{
			"content":      map[string]any{"role": "model", "parts": []any{map[string]any{"text": "## KEY FINDINGS\n- fine\n## TREND ANALYSIS\n- flat\n## RECOMMENDATIONS\n- 🟢 keep SOC 20–80 %"}}},
			"finishReason": "STOP"}}})
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	}))
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.release) }) // runs first: free held calls
	return f
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s did not answer", url)
}
