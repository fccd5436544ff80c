package main

import (
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/internal/testenv/fakegemini"
)

// fakeGemini is the fake model API answering with a report; while hang is
// set it holds each call until the caller gives up (a model that never
// answers).
type fakeGemini struct {
	*fakegemini.Server
	hang   atomic.Bool
	called chan struct{} // closed at the first call
	once   sync.Once
}

func newFakeGemini(t *testing.T) *fakeGemini {
	f := &fakeGemini{called: make(chan struct{})}
	f.Server = fakegemini.Start(t, "test-key", func(c fakegemini.Call, w http.ResponseWriter) {
		f.once.Do(func() { close(f.called) })
		if f.hang.Load() {
			c.Hold()
			return
		}
		_, _ = io.WriteString(w, fakegemini.Text("## KEY FINDINGS\n- fine\n## TREND ANALYSIS\n- flat\n## RECOMMENDATIONS\n- 🟢 keep SOC 20–80 %"))
	})
	return f
}

// env is the environment of a service using this fake as its model, with
// extra variables after it.
func (f *fakeGemini) env(extra ...string) []string {
	return append([]string{"INSIGHTS_PROVIDER=gemini", "GEMINI_API_KEY=test-key", "GEMINI_BASE_URL=" + f.URL}, extra...)
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	testenv.WaitFor(t, 60*time.Second, url+" to answer 200", func() (bool, error) {
		resp, err := http.Get(url)
		if err != nil {
			return false, err
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
}
