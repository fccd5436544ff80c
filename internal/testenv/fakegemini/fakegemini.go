// Package fakegemini is the Gemini REST API (generateContent) on an
// httptest server, for the provider's own tests and the service's end-to-end
// ones. It is apart from testenv because package insights' tests use it and
// testenv imports insights.
package fakegemini

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// DefaultModel is the model a request must name unless ExpectModel says
// otherwise: the provider's default (insights.DefaultGeminiModel, which
// this package cannot import).
const DefaultModel = "gemini-2.5-flash"

// Call is one request to the model, as the answer function sees it.
type Call struct {
	N    int            // 1 for the server's first request
	Body map[string]any // the request's JSON
	Req  *http.Request
	done <-chan struct{}
}

// Hold blocks until the caller gives up on the call (its context ends) or
// the test ends: a model that never answers.
func (c Call) Hold() {
	select {
	case <-c.Req.Context().Done():
	case <-c.done:
	}
}

// Server is a running fake. Each request must carry the key and name the
// model; it is recorded, then answered by the test's function.
type Server struct {
	URL    string
	t      testing.TB
	key    string
	answer func(Call, http.ResponseWriter)
	done   chan struct{}

	mu     sync.Mutex
	model  string
	bodies []string
	times  []time.Time // when each request arrived
}

// Start serves answer until the test ends. key is the API key every
// request must carry ("": any).
func Start(t testing.TB, key string, answer func(c Call, w http.ResponseWriter)) *Server {
	s := &Server{t: t, key: key, answer: answer, model: DefaultModel, done: make(chan struct{})}
	srv := httptest.NewServer(s)
	s.URL = srv.URL
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(s.done) }) // runs first: frees held calls so Close can return
	return s
}

// ExpectModel makes later requests have to name model.
func (s *Server) ExpectModel(model string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.model = model
}

// ServeHTTP checks a request's path and key, records it and has the test's
// function answer it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	model := s.model
	s.mu.Unlock()
	if !strings.HasSuffix(r.URL.Path, "/models/"+model+":generateContent") {
		s.t.Errorf("fake Gemini: unexpected path %s, want model %s", r.URL.Path, model)
	}
	if s.key != "" && r.Header.Get("x-goog-api-key") != s.key {
		s.t.Errorf("fake Gemini: api key header %q", r.Header.Get("x-goog-api-key"))
	}
	b, _ := io.ReadAll(r.Body)
	var body map[string]any
	_ = json.Unmarshal(b, &body)
	s.mu.Lock()
	s.bodies = append(s.bodies, string(b))
	s.times = append(s.times, time.Now())
	n := len(s.bodies)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	s.answer(Call{N: n, Body: body, Req: r, done: s.done}, w)
}

// Bodies are the requests' bodies so far, in order.
func (s *Server) Bodies() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

// Requests are the requests' bodies so far, decoded, in order.
func (s *Server) Requests() []map[string]any {
	var out []map[string]any
	for _, b := range s.Bodies() {
		var m map[string]any
		_ = json.Unmarshal([]byte(b), &m)
		out = append(out, m)
	}
	return out
}

// MostWithin is the most requests that arrived within any span of d: what
// a rate limit's tests compare with the limit.
func (s *Server) MostWithin(d time.Duration) int {
	s.mu.Lock()
	at := slices.Clone(s.times)
	s.mu.Unlock()
	slices.SortFunc(at, func(x, y time.Time) int { return x.Compare(y) })
	most := 0
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < d; j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

// Calls is how many requests came.
func (s *Server) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bodies)
}

// Text is the model's final answer text, as the API sends it.
func Text(text string) string {
	return answer(map[string]any{"role": "model", "parts": []any{map[string]any{"text": text}}}, "STOP")
}

// FunctionCalls is the model asking for the tools calls (each {name, args}).
func FunctionCalls(calls ...map[string]any) string {
	var parts []any
	for _, c := range calls {
		parts = append(parts, map[string]any{"functionCall": c})
	}
	return answer(map[string]any{"role": "model", "parts": parts}, "")
}

func answer(content map[string]any, finishReason string) string {
	cand := map[string]any{"content": content}
	if finishReason != "" {
		cand["finishReason"] = finishReason
	}
	b, _ := json.Marshal(map[string]any{"candidates": []any{cand}})
	return string(b)
}
