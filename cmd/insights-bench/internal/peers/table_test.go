package peers

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestWriteTable(t *testing.T) {
	for _, c := range []struct {
		name string
		rows []Row
		want string
	}{
		{"ours first, unknowns, an error, shared notes", []Row{
			{Name: "ours, FerretDB SQLite (embedded)", WorkflowsPerSec: 120, WritesPerWorkflow: 8, P50: 41500 * time.Microsecond, P99: 1500 * time.Millisecond},
			{Name: "River, durable step per tx", WorkflowsPerSec: 480, Notes: []string{"durable", "tuned"}},
			{Name: "BullMQ | step job", WorkflowsPerSec: 2400, Notes: []string{"no persistence"}},
			{Name: "River, no-op job", WorkflowsPerSec: 6000, Notes: []string{"no-op", "tuned"}},
			{Name: "asynq, no-op task", Err: errors.New("asynq: go build: exit status 1:\nno | go")},
		}, `| | workflows/s | ours ÷ this | writes per workflow | p50 send→completed | p99 send→completed |
|---|--:|--:|--:|--:|--:|
| ours, FerretDB SQLite (embedded) | 120 | 1.00 | 8.0 | 41.5 ms | 1.50 s |
| River, durable step per tx ¹ ² | 480 | 0.25 | – | – | – |
| BullMQ \| step job ³ | 2400 | 0.05 | – | – | – |
| River, no-op job ⁴ ² | 6000 | 0.02 | – | – | – |
| asynq, no-op task | error: asynq: go build: exit status 1: no \| go | – | – | – | – |

¹ durable
² tuned
³ no persistence
⁴ no-op
`},
		{"ours failed: no ratios", []Row{
			{Name: "ours", Err: errors.New("redis: connection refused")},
			{Name: "River", WorkflowsPerSec: 300},
		}, `| | workflows/s | ours ÷ this | writes per workflow | p50 send→completed | p99 send→completed |
|---|--:|--:|--:|--:|--:|
| ours | error: redis: connection refused | – | – | – | – |
| River | 300 | – | – | – | – |
`},
		{"no rows", nil, `| | workflows/s | ours ÷ this | writes per workflow | p50 send→completed | p99 send→completed |
|---|--:|--:|--:|--:|--:|
`},
	} {
		var b bytes.Buffer
		WriteTable(&b, c.rows)
		if b.String() != c.want {
			t.Errorf("%s: table\n%s\nwant\n%s", c.name, b.String(), c.want)
		}
	}
}

func TestRows(t *testing.T) {
	err := errors.New("x")
	rows := Rows([]Result{{Name: "River", PerSec: 5, Notes: []string{"n"}}, {Name: "BullMQ", Err: err}})
	if len(rows) != 2 || !reflect.DeepEqual(rows[0], Row{Name: "River", WorkflowsPerSec: 5, Notes: []string{"n"}}) || rows[1].Err != err {
		t.Errorf("Rows = %+v", rows)
	}
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		name   string
		rounds [][]Row
		want   []Row
	}{
		{"odd, failures ignored, order kept", [][]Row{
			{{Name: "a", WorkflowsPerSec: 3, P50: 3}, {Name: "b", Err: errors.New("x")}},
			{{Name: "a", WorkflowsPerSec: 1, P50: 1}, {Name: "b", WorkflowsPerSec: 7}},
			{{Name: "a", WorkflowsPerSec: 2, P50: 2}, {Name: "b", Err: errors.New("y")}},
		}, []Row{{Name: "a", WorkflowsPerSec: 2, P50: 2}, {Name: "b", WorkflowsPerSec: 7}}},
		{"even: the upper middle run", [][]Row{
			{{Name: "a", WorkflowsPerSec: 4}}, {{Name: "a", WorkflowsPerSec: 1}},
			{{Name: "a", WorkflowsPerSec: 3}}, {{Name: "a", WorkflowsPerSec: 2}},
		}, []Row{{Name: "a", WorkflowsPerSec: 3}}},
		{"one round", [][]Row{{{Name: "a", WorkflowsPerSec: 9}, {Name: "b", WorkflowsPerSec: 1}}},
			[]Row{{Name: "a", WorkflowsPerSec: 9}, {Name: "b", WorkflowsPerSec: 1}}},
	} {
		if got := Median(c.rounds); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
	// A row failing in every round keeps its last error.
	last := errors.New("last")
	got := Median([][]Row{{{Name: "a", Err: errors.New("first")}}, {{Name: "a", Err: last}}})
	if len(got) != 1 || got[0].Err != last {
		t.Errorf("all failed: %+v", got)
	}
}
