package testenv

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"testing"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/insights"
)

// Logger is the service's logger in tests: silent, unless TEST_LOG is set,
// then debug lines on stderr (to follow a failing test step by step).
func Logger() *slog.Logger {
	if os.Getenv("TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// Engine is a small deterministic insights engine for the workflow's tests
// (the real engines have tests of their own): health score 92, a short
// Markdown report and the snapshot's state of charge as a metric.
type Engine struct{}

// Generate answers every request with the same report.
func (Engine) Generate(_ context.Context, req insights.Request) (*insights.Result, error) {
	return &insights.Result{HealthScore: 92, Status: "Normal", Provider: "rules",
		Markdown: "## KEY FINDINGS\n\n- 🟢 Cell imbalance **20 mV** (excellent)\n\n## RECOMMENDATIONS\n\n- Keep SOC above 20 %\n",
		Metrics:  map[string]any{"soc": req.Snapshot.StateOfCharge, "customPrompt": req.CustomPrompt}}, nil
}

// Snapshot is a valid BMS snapshot of a healthy 4-cell pack at 80 %.
func Snapshot() *bms.Snapshot {
	return &bms.Snapshot{StateOfCharge: bms.F(80), OverallVoltage: bms.F(53.2), Current: bms.F(-12), RemainingCapacity: bms.F(160), FullCapacity: bms.F(200),
		CellVoltageDifference: bms.F(0.02), CellVoltages: []float64{3.32, 3.33, 3.34, 3.32}, Temperatures: []float64{25, 26}}
}

// Systems is the systems store of the follow-up handler
// (handlers.CompletedConfig.Systems): it stores nothing and counts the
// lastInsights updates per jobId. The zero value is ready.
type Systems struct {
	mu sync.Mutex
	n  map[string]int
}

// SetLastInsights counts one update of v's jobId.
func (s *Systems) SetLastInsights(_ context.Context, _ string, v map[string]any) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	if id, ok := v["jobId"].(string); ok {
		s.n[id]++
	}
	return nil
}

// Count is how many updates carried jobID.
func (s *Systems) Count(jobID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[jobID]
}

// FreeAddr is a 127.0.0.1 address nothing listens on now: for a server to
// start on, or for a connection that must be refused.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
}
