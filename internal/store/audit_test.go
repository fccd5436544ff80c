package store_test

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
)

// The audit trail reads newest first, filtered by user and action, with a
// bulk action's filter kept in its JSON form and its count.
func TestAuditNewestFirst(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	// Times that sort differently as RFC3339Nano strings (".1Z" after
	// ".12Z") than as times: the _id must keep time order.
	base := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	type filter struct {
		Status      string `json:"status,omitempty"`
		FailureKind string `json:"failureKind,omitempty"`
	}
	three := 3
	entries := []store.AuditEntry{
		{At: base.Add(100 * time.Millisecond), User: "admin", Action: "retry", Target: "ev-1"},
		{At: base.Add(120 * time.Millisecond), User: "api-token", Action: "cancel", Target: "ev-2"},
		{At: base.Add(time.Second), User: "admin", Action: "bulk-retry", Target: "jobs",
			Filter: filter{Status: "failed", FailureKind: "transient"}, Count: &three, DryRun: true},
		{At: base.Add(2 * time.Second), User: "admin", Action: "retry", Target: "ev-3"},
	}
	for _, e := range entries {
		if err := st.RecordAudit(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	targets := func(list []store.AuditEntry) []string {
		var out []string
		for _, e := range list {
			out = append(out, e.Target)
		}
		return out
	}
	for _, tc := range []struct {
		q    store.AuditQuery
		want []string
	}{
		{store.AuditQuery{}, []string{"ev-3", "jobs", "ev-2", "ev-1"}},
		{store.AuditQuery{Limit: 2}, []string{"ev-3", "jobs"}},
		{store.AuditQuery{User: "admin"}, []string{"ev-3", "jobs", "ev-1"}},
		{store.AuditQuery{Action: "retry"}, []string{"ev-3", "ev-1"}},
		{store.AuditQuery{User: "api-token", Action: "cancel"}, []string{"ev-2"}},
		{store.AuditQuery{User: "viewer"}, nil},
	} {
		t.Run(fmt.Sprintf("%+v", tc.q), func(t *testing.T) {
			got, err := st.ListAudit(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !reflect.DeepEqual(targets(got), tc.want) {
				t.Fatalf("targets %v (nil list: %v), want %v", targets(got), got == nil, tc.want)
			}
		})
	}
	list, err := st.ListAudit(ctx, store.AuditQuery{Action: "bulk-retry"})
	if err != nil || len(list) != 1 {
		t.Fatalf("bulk entry: %v %v", list, err)
	}
	e := list[0]
	f, _ := e.Filter.(map[string]any)
	if !e.At.Equal(entries[2].At) || e.User != "admin" || e.Count == nil || *e.Count != 3 || !e.DryRun ||
		f["status"] != "failed" || f["failureKind"] != "transient" {
		t.Fatalf("bulk entry read back as %+v (filter %T %v)", e, e.Filter, e.Filter)
	}
}
