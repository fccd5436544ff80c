package loadtest

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParsePeerLine(t *testing.T) {
	for _, c := range []struct {
		name, line, key string
		want            float64
	}{
		{"river", "river noop_jobs_per_s=4798 steps6_jobs_per_s=2420 steps6tx_jobs_per_s=475 insert_jobs_per_s=47422 n=500 c=20 fetch_cooldown=2ms", "steps6tx_jobs_per_s", 475},
		{"bullmq", "bullmq noop_jobs_per_s=7608 steps6_jobs_per_s=2073 add_jobs_per_s=14315 n=500 c=20", "steps6_jobs_per_s", 2073},
		{"asynq", "asynq noop_tasks_per_s=16432 enqueue_tasks_per_s=36753 n=500 c=20", "noop_tasks_per_s", 16432},
	} {
		vals, err := parsePeerLine(c.name, c.line)
		if err != nil || vals[c.key] != c.want {
			t.Errorf("%s: %s = %v (%v), want %v", c.name, c.key, vals[c.key], err, c.want)
		}
	}
	if _, err := parsePeerLine("river", "bullmq steps6_jobs_per_s=1"); err == nil {
		t.Error("another peer's line was accepted")
	}
}

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	WriteTable(&b, []Result{
		{Name: "ours", PerSec: 120, WritesPerWorkflow: 8, P50: 41500 * time.Microsecond, P99: 1500 * time.Millisecond},
		{Name: "River", PerSec: 300},
		{Name: "BullMQ", Err: errors.New("node: not found")},
	})
	want := `| | workflows/s | ours ÷ this | writes per workflow | p50 send→completed | p99 send→completed |
|---|---|---|---|---|---|
| ours | 120 | 1.00 | 8.0 | 41.5 ms | 1.5s |
| River | 300 | 0.40 | – | – | – |
| BullMQ | error: node: not found | | | | |
`
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestMedian(t *testing.T) {
	got := Median([][]Result{
		{{Name: "a", PerSec: 3}, {Name: "b", Err: errors.New("x")}},
		{{Name: "a", PerSec: 1}, {Name: "b", PerSec: 7}},
		{{Name: "a", PerSec: 2}, {Name: "b", Err: errors.New("y")}},
	})
	if len(got) != 2 || got[0].PerSec != 2 || got[1].PerSec != 7 || got[1].Err != nil {
		t.Errorf("median = %+v, want a 2 and b 7", got)
	}
	if s := strings.TrimSpace(got[0].Name); s != "a" {
		t.Errorf("order: %v", got)
	}
}
