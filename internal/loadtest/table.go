package loadtest

import (
	"fmt"
	"io"
	"slices"
	"time"
)

// WriteTable prints rows as one markdown table. The first row is ours, the
// reference of the ratio column (ours ÷ that row's rate). Unknown figures
// print as –; a row that failed prints its error.
func WriteTable(w io.Writer, rows []Result) {
	fmt.Fprintln(w, "| | workflows/s | ours ÷ this | writes per workflow | p50 send→completed | p99 send→completed |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	var ref float64
	if len(rows) > 0 && rows[0].Err == nil {
		ref = rows[0].PerSec
	}
	for _, r := range rows {
		if r.Err != nil {
			fmt.Fprintf(w, "| %s | error: %v | | | | |\n", r.Name, r.Err)
			continue
		}
		ratio := "–"
		if ref > 0 && r.PerSec > 0 {
			ratio = fmt.Sprintf("%.2f", ref/r.PerSec)
		}
		fmt.Fprintf(w, "| %s | %.0f | %s | %s | %s | %s |\n", r.Name, r.PerSec, ratio,
			orDash(r.WritesPerWorkflow, func(v float64) string { return fmt.Sprintf("%.1f", v) }),
			orDash(r.P50, fmtDuration), orDash(r.P99, fmtDuration))
	}
}

func orDash[T float64 | time.Duration](v T, f func(T) string) string {
	if v == 0 {
		return "–"
	}
	return f(v)
}

func fmtDuration(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return d.Round(10 * time.Millisecond).String()
}

// Median returns, per row name in the order first seen, the run with the
// median rate over rounds (a failed run counts as none; a row with no
// successful run keeps its last error).
func Median(rounds [][]Result) []Result {
	var names []string
	byName := map[string][]Result{}
	for _, round := range rounds {
		for _, r := range round {
			if _, ok := byName[r.Name]; !ok {
				names = append(names, r.Name)
			}
			byName[r.Name] = append(byName[r.Name], r)
		}
	}
	out := make([]Result, 0, len(names))
	for _, n := range names {
		var ok []Result
		for _, r := range byName[n] {
			if r.Err == nil {
				ok = append(ok, r)
			}
		}
		if len(ok) == 0 {
			all := byName[n]
			out = append(out, all[len(all)-1])
			continue
		}
		slices.SortFunc(ok, func(a, b Result) int {
			switch {
			case a.PerSec < b.PerSec:
				return -1
			case a.PerSec > b.PerSec:
				return 1
			}
			return 0
		})
		out = append(out, ok[len(ok)/2])
	}
	return out
}
