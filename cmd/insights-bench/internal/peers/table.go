package peers

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Row is one line of the comparison table. Zero figures are unknown and
// print as –.
type Row struct {
	Name              string
	WorkflowsPerSec   float64
	WritesPerWorkflow float64
	// P50 and P99 of send → completed.
	P50, P99 time.Duration
	// Notes become numbered footnotes under the table.
	Notes []string
	// Err: the row could not be measured; it prints the error.
	Err error
}

// Rows turns peer results into table rows.
func Rows(results []Result) []Row {
	out := make([]Row, 0, len(results))
	for _, r := range results {
		out = append(out, Row{Name: r.Name, WorkflowsPerSec: r.PerSec, Notes: r.Notes, Err: r.Err})
	}
	return out
}

// Header is the table's first line.
const Header = "| | workflows/s | ours ÷ this | writes per workflow | p50 send→completed | p99 send→completed |"

var superscripts = []rune("⁰¹²³⁴⁵⁶⁷⁸⁹")

func superscript(n int) string {
	var b strings.Builder
	for _, d := range strconv.Itoa(n) {
		b.WriteRune(superscripts[d-'0'])
	}
	return b.String()
}

// WriteTable prints rows as one markdown table. The first row is ours, the
// reference of the ratio column: ours ÷ that row's rate. Each distinct note
// is numbered in order of first use, marked after the row's name and
// printed under the table.
func WriteTable(w io.Writer, rows []Row) {
	fmt.Fprintln(w, Header)
	fmt.Fprintln(w, "|---|--:|--:|--:|--:|--:|")
	var ref float64
	if len(rows) > 0 && rows[0].Err == nil {
		ref = rows[0].WorkflowsPerSec
	}
	var notes []string
	for _, r := range rows {
		name := cell(r.Name)
		for _, n := range r.Notes {
			i := slices.Index(notes, n)
			if i < 0 {
				notes = append(notes, n)
				i = len(notes) - 1
			}
			name += " " + superscript(i+1)
		}
		if r.Err != nil {
			fmt.Fprintf(w, "| %s | error: %s | – | – | – | – |\n", name, cell(r.Err.Error()))
			continue
		}
		ratio := "–"
		if ref > 0 && r.WorkflowsPerSec > 0 {
			ratio = fmt.Sprintf("%.2f", ref/r.WorkflowsPerSec)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", name,
			orDash(r.WorkflowsPerSec, func(v float64) string { return fmt.Sprintf("%.0f", v) }), ratio,
			orDash(r.WritesPerWorkflow, func(v float64) string { return fmt.Sprintf("%.1f", v) }),
			orDash(r.P50, FormatDuration), orDash(r.P99, FormatDuration))
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for i, n := range notes {
			fmt.Fprintf(w, "%s %s\n", superscript(i+1), n)
		}
	}
}

// cell keeps a text on one line and out of the table's syntax.
func cell(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	return strings.ReplaceAll(s, "|", `\|`)
}

func orDash[T float64 | time.Duration](v T, f func(T) string) string {
	if v <= 0 {
		return "–"
	}
	return f(v)
}

// FormatDuration prints milliseconds below a second, else seconds.
func FormatDuration(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// Median returns, per row name in the order first seen, the round whose
// rate is the median (the upper one of an even count), so a row's figures
// all come from one run. Failed rounds count as none; a row that failed in
// every round keeps its last error.
func Median(rounds [][]Row) []Row {
	var names []string
	byName := map[string][]Row{}
	for _, round := range rounds {
		for _, r := range round {
			if _, ok := byName[r.Name]; !ok {
				names = append(names, r.Name)
			}
			byName[r.Name] = append(byName[r.Name], r)
		}
	}
	out := make([]Row, 0, len(names))
	for _, n := range names {
		var ok []Row
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
		slices.SortStableFunc(ok, func(a, b Row) int {
			switch {
			case a.WorkflowsPerSec < b.WorkflowsPerSec:
				return -1
			case a.WorkflowsPerSec > b.WorkflowsPerSec:
				return 1
			}
			return 0
		})
		out = append(out, ok[len(ok)/2])
	}
	return out
}
