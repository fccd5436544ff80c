package insights

import (
	"context"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
)

// BenchmarkRules1M runs the engine over 1,000,000 in-memory records (one a
// minute for 694 days): raw streaming (fullContextMode) and hourly rollups.
func BenchmarkRules1M(b *testing.B) {
	sys := bmsgen.Systems()[0]
	to := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)
	from := to.Add(-1_000_000 * time.Minute)
	recs := bmsgen.History(sys, 1, from, to, time.Minute)
	src := NewMemorySource([]bms.System{sys}, recs)
	days := int(to.Sub(from).Hours()/24) + 1
	snap := recs[len(recs)-1].Analysis
	for _, mode := range []struct {
		name string
		full bool
	}{{"raw", true}, {"rollups", false}} {
		b.Run(mode.name, func(b *testing.B) {
			req := Request{SystemID: sys.ID, Snapshot: snap, ContextWindowDays: days, Now: to, FullContextMode: mode.full}
			b.ReportAllocs()
			var n int
			for b.Loop() {
				res, err := NewRules(src).Generate(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				n = res.ContextSummary.Records
			}
			b.ReportMetric(float64(n), "records")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/record")
		})
	}
}
