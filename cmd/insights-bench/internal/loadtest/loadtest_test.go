package loadtest_test

import (
	"context"
	"testing"

	"github.com/bmsview/insights/cmd/insights-bench/internal/loadtest"
	"github.com/bmsview/insights/internal/testenv"
)

// TestRun runs a small benchmark on the embedded store: every workflow
// completes, writes are counted and the latencies are ordered.
func TestRun(t *testing.T) {
	// Run flushes the package's database.
	res, err := loadtest.Run(context.Background(), loadtest.Options{N: 60, Concurrency: 10, Latency: 20,
		RedisURL: testenv.RealRedisURL(t, "")})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	if res.PerSec <= 0 || res.P50 <= 0 {
		t.Fatalf("result %+v: want a rate and latencies", res)
	}
	// Seven job updates (attempt start and six steps) and lastInsights,
	// which is not written when a later completion of the same system was
	// stored first (follow-ups run out of order under load).
	if res.WritesPerWorkflow < 7 || res.WritesPerWorkflow > 8 {
		t.Fatalf("writes per workflow %.2f, want 7 to 8", res.WritesPerWorkflow)
	}
}
