package loadtest_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"testing"

	"github.com/bmsview/insights/internal/loadtest"
)

// TestRun runs a small benchmark on the embedded store: every workflow
// completes, writes are counted and the latencies are ordered.
func TestRun(t *testing.T) {
	u := os.Getenv("REDIS_URL")
	if u == "" {
		t.Skip("REDIS_URL not set")
	}
	// Database 14 is this test's (13 is the bench command's); Run flushes it.
	res, err := loadtest.Run(context.Background(), loadtest.Options{N: 60, Concurrency: 10, Latency: 20,
		RedisURL: redisDB(t, u, 14)})
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

func redisDB(t *testing.T, u string, db int) string {
	p, err := url.Parse(u)
	if err != nil {
		t.Fatalf("REDIS_URL %q: %v", u, err)
	}
	p.Path = fmt.Sprintf("/%d", db)
	return p.String()
}
