package store_test

import (
	"testing"

	"github.com/bmsview/insights/internal/store"
)

// One cause is one group: messages that differ only in the job's ids,
// UUIDs, times, hex ids, durations and numbers have one fingerprint, and
// messages that say different things do not.
func TestFailurePatternGroupsOneCause(t *testing.T) {
	same := []struct {
		a, b       string
		aIDs, bIDs []string
	}{
		{"job orphan-3 is missing its request", "job orphan-7 is missing its request", []string{"orphan-3"}, []string{"orphan-7"}},
		{"job orphan-3 is missing its request", "job orphan-12 is missing its request", nil, nil},
		{"event 0f8fad5b-d9cb-469f-a165-70867728950e not found", "event 7c9e6679-7425-40de-944b-e07fc1f90ae7 not found", nil, nil},
		{"provider timeout after 30s at 2026-12-07T10:00:01Z", "provider timeout after 1m5s at 2026-12-08T23:59:59.123Z", nil, nil},
		{"object 65a1f0c2e4b0a1b2c3d4e5f6 is gone", "object 65a1f0c2e4b0a1b2c3d4e5f7 is gone", nil, nil},
		{"dial tcp 10.0.0.7:27017: connection refused", "dial tcp 10.0.0.9:27018: connection refused", nil, nil},
		{"system sys-a has no history", "system sys-b has no history", []string{"job-1", "ev-1", "sys-a"}, []string{"job-2", "ev-2", "sys-b"}},
	}
	for _, c := range same {
		pa, pb := store.FailurePattern(c.a, c.aIDs...), store.FailurePattern(c.b, c.bIDs...)
		if pa != pb || store.Fingerprint(pa) != store.Fingerprint(pb) {
			t.Errorf("%q and %q differ: %q vs %q", c.a, c.b, pa, pb)
		}
	}
	differ := [][2]string{
		{"job orphan-3 is missing its request", "analysis refused: the snapshot's cell data is inconsistent"},
		{"provider timeout", "provider unavailable"},
	}
	for _, c := range differ {
		if store.Fingerprint(store.FailurePattern(c[0])) == store.Fingerprint(store.FailurePattern(c[1])) {
			t.Errorf("%q and %q share a fingerprint", c[0], c[1])
		}
	}
	if got, want := store.FailurePattern("job orphan-3 is missing its request", "orphan-3"), "job <id> is missing its request"; got != want {
		t.Errorf("pattern %q, want %q", got, want)
	}
	// Words stay words: no digits, no placeholder.
	if got := store.FailurePattern("deadline exceeded in process-insights"); got != "deadline exceeded in process-insights" {
		t.Errorf("pattern %q", got)
	}
	if fp := store.Fingerprint("x"); len(fp) != 16 {
		t.Errorf("fingerprint %q is not 16 hex digits", fp)
	}
}
