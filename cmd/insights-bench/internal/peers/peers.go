// Package peers builds and runs the peer benchmarks of ../shared/peers
// (River, BullMQ, raw asynq) the way their run.sh does, reads the one result
// line each prints, and writes the comparison table of insights-bench.
//
// The peers' code stays in their directory: Go peers are built there into a
// temporary directory, BullMQ runs there with node.
package peers

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Peer names: the first word of each peer's result line.
const (
	Asynq  = "asynq"
	BullMQ = "bullmq"
	River  = "river"
)

// Phase names.
const (
	Noop     = "noop"     // one no-op job: not a workflow, the queue's raw rate
	Steps6   = "steps6"   // six steps, then a follow-up job on a second queue
	Steps6Tx = "steps6tx" // River only: steps6 with each checkpoint committed in its own transaction
)

// Result is one figure of one peer.
type Result struct {
	Peer  string // Asynq, BullMQ or River
	Phase string // Noop, Steps6 or Steps6Tx
	// Name is the row's name in the table.
	Name string
	// PerSec is jobs per second; for the step phases, workflows per second
	// (N six-step jobs and their N follow-ups, over N).
	PerSec float64
	// Notes say what the figure means, for the table's footnotes.
	Notes []string
	// Err: the peer could not run or printed no such figure.
	Err error
}

// figure is one key of a peer's result line and the row it becomes.
type figure struct {
	key, phase, name string
	notes            []string
}

type peer struct {
	name, dir string
	figures   []figure
}

// The table's footnotes.
const (
	NoteRiverTx    = "Each step's checkpoint commits in its own PostgreSQL transaction (ResumableSetStepTx), as ours is durable per step."
	NoteRiverSteps = "ResumableStep saves the last step only with the attempt's result: a killed worker loses the progress."
	NoteBullMQ     = "One updateData round trip to Redis per step; Redis here has no persistence, so that survives a worker crash, not a Redis crash."
	NoteNoop       = "A no-op job, not a workflow: the queue's raw rate."
	NoteRiverTuned = "River tuned as its own benchmark is (-cooldown 2ms -poll 20ms); its default 100 ms FetchCooldown caps a queue at c jobs per 100 ms."
)

// peers in run order (as run.sh runs them).
var peers = []peer{
	{Asynq, "asynqnoop", []figure{
		{"noop_tasks_per_s", Noop, "asynq, no-op task", []string{NoteNoop}},
	}},
	{BullMQ, "bullmq", []figure{
		{"steps6_jobs_per_s", Steps6, "BullMQ, step job (updateData per step) + follow-up", []string{NoteBullMQ}},
		{"noop_jobs_per_s", Noop, "BullMQ, no-op job", []string{NoteNoop}},
	}},
	{River, "river", []figure{
		{"steps6tx_jobs_per_s", Steps6Tx, "River, durable step per tx", []string{NoteRiverTx, NoteRiverTuned}},
		{"steps6_jobs_per_s", Steps6, "River, ResumableStep (not durable per step)", []string{NoteRiverSteps, NoteRiverTuned}},
		{"noop_jobs_per_s", Noop, "River, no-op job", []string{NoteNoop, NoteRiverTuned}},
	}},
}

func lookup(name string) (peer, bool) {
	for _, p := range peers {
		if p.name == name {
			return p, true
		}
	}
	return peer{}, false
}

// ResultLine returns the line of out that starts with the peer's name, the
// one result line each peer prints.
func ResultLine(name, out string) (string, error) {
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if f := strings.Fields(l); len(f) > 0 && f[0] == name {
			return l, nil
		}
	}
	return "", fmt.Errorf("%s printed no result line", name)
}

// ParseLine reads a peer's result line ("river noop_jobs_per_s=6445
// steps6_jobs_per_s=2205 ...") into its results, in the order of the peer's
// figures. A figure missing from the line is a result carrying an error.
func ParseLine(name, line string) ([]Result, error) {
	p, ok := lookup(name)
	if !ok {
		return nil, fmt.Errorf("unknown peer %q", name)
	}
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != name {
		return nil, fmt.Errorf("%s: unexpected line %q", name, line)
	}
	vals := map[string]string{}
	for _, kv := range f[1:] {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vals[k] = v
		}
	}
	out := make([]Result, 0, len(p.figures))
	for _, fg := range p.figures {
		r := Result{Peer: name, Phase: fg.phase, Name: fg.name, Notes: fg.notes}
		v, ok := vals[fg.key]
		if !ok {
			r.Err = fmt.Errorf("%s printed no %s", name, fg.key)
		} else if r.PerSec, r.Err = strconv.ParseFloat(v, 64); r.Err != nil {
			r.Err = fmt.Errorf("%s: %s=%q: not a number", name, fg.key, v)
		}
		out = append(out, r)
	}
	return out, nil
}

// Failed returns the peer's rows, each carrying err.
func Failed(name string, err error) []Result {
	p, ok := lookup(name)
	if !ok {
		return []Result{{Peer: name, Name: name, Err: err}}
	}
	out := make([]Result, 0, len(p.figures))
	for _, fg := range p.figures {
		out = append(out, Result{Peer: name, Phase: fg.phase, Name: fg.name, Notes: fg.notes, Err: err})
	}
	return out
}

// Options say where the peers are and how to run them.
type Options struct {
	// Dir holds river/, bullmq/ and asynqnoop/.
	Dir         string
	N           int
	Concurrency int
	// RiverDSN is River's PostgreSQL database, created beforehand
	// (createdb riverbench). Empty: the peer's own default.
	RiverDSN string
	// RedisAddr (host:port) for BullMQ and asynq, which flush their own
	// databases 11 and 12. Empty: their default, 127.0.0.1:6379.
	RedisAddr string
	// Timeout of one peer's run. 0: 20 minutes (the peers time out each
	// phase after 5).
	Timeout time.Duration
	// Log receives the peers' build and run output. Nil: discarded.
	Log io.Writer
}

// Runner builds the Go peers once, into a temporary directory, and runs
// the peers as often as asked. Close removes the directory.
type Runner struct {
	o   Options
	bin string
	log io.Writer
	// built maps a Go peer to its binary once built.
	built map[string]string
}

// NewRunner checks Dir and makes the binaries' directory.
func NewRunner(o Options) (*Runner, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("peers: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("peers: %s is not a directory", dir)
	}
	o.Dir = dir
	if o.Timeout <= 0 {
		o.Timeout = 20 * time.Minute
	}
	bin, err := os.MkdirTemp("", "insights-peers-")
	if err != nil {
		return nil, err
	}
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	return &Runner{o: o, bin: bin, log: log, built: map[string]string{}}, nil
}

// Close removes the built binaries.
func (r *Runner) Close() error { return os.RemoveAll(r.bin) }

// RunAll runs every peer once, in run order (asynq, BullMQ, River tuned),
// and returns their results, ordered for the table by Sort. A peer that
// cannot run gives rows carrying its error, so one missing tool never hides
// the others.
func (r *Runner) RunAll(ctx context.Context) []Result {
	var out []Result
	for _, p := range peers {
		out = append(out, r.Run(ctx, p.name)...)
	}
	Sort(out)
	return out
}

// phaseRank orders the table: the rows most like our workflow first.
var phaseRank = map[string]int{Steps6Tx: 0, Steps6: 1, Noop: 2}

// Sort orders results by phase (durable steps, steps, no-op), keeping the
// run order within a phase.
func Sort(rs []Result) {
	slices.SortStableFunc(rs, func(a, b Result) int {
		ra, oka := phaseRank[a.Phase]
		rb, okb := phaseRank[b.Phase]
		if !oka {
			ra = len(phaseRank)
		}
		if !okb {
			rb = len(phaseRank)
		}
		return ra - rb
	})
}

// Run runs one peer once.
func (r *Runner) Run(ctx context.Context, name string) []Result {
	p, ok := lookup(name)
	if !ok {
		return Failed(name, fmt.Errorf("unknown peer %q", name))
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.Timeout)
	defer cancel()
	cmd, err := r.command(ctx, p)
	if err != nil {
		return Failed(name, err)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.MultiWriter(&stdout, r.log), io.MultiWriter(&stderr, r.log)
	if err := cmd.Run(); err != nil {
		return Failed(name, withOutput(fmt.Errorf("%s: %w", name, err), stderr.String()))
	}
	line, err := ResultLine(name, stdout.String())
	if err != nil {
		return Failed(name, withOutput(err, stderr.String()))
	}
	res, err := ParseLine(name, line)
	if err != nil {
		return Failed(name, err)
	}
	return res
}

// command returns the peer's command, building a Go peer first if needed.
func (r *Runner) command(ctx context.Context, p peer) (*exec.Cmd, error) {
	dir := filepath.Join(r.o.Dir, p.dir)
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	args := []string{"-n", strconv.Itoa(r.o.N), "-c", strconv.Itoa(r.o.Concurrency)}
	var cmd *exec.Cmd
	switch p.name {
	case BullMQ:
		node, err := exec.LookPath("node")
		if err != nil {
			return nil, fmt.Errorf("bullmq: %w", err)
		}
		if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
			if err := r.exec(ctx, dir, "npm", "ci", "--silent"); err != nil {
				return nil, fmt.Errorf("bullmq: npm ci: %w", err)
			}
		}
		if r.o.RedisAddr != "" {
			args = append(args, "--redis", r.o.RedisAddr)
		}
		cmd = exec.CommandContext(ctx, node, append([]string{"bench.js"}, args...)...)
	default:
		exe, err := r.build(ctx, p.name, dir)
		if err != nil {
			return nil, err
		}
		switch p.name {
		case River:
			// River's own benchmark settings: the peers' "tuned" rows.
			args = append(args, "-cooldown", "2ms", "-poll", "20ms")
			if r.o.RiverDSN != "" {
				args = append(args, "-dsn", r.o.RiverDSN)
			}
		case Asynq:
			if r.o.RedisAddr != "" {
				args = append(args, "-redis", r.o.RedisAddr)
			}
		}
		cmd = exec.CommandContext(ctx, exe, args...)
	}
	cmd.Dir = dir
	return cmd, nil
}

// build runs `go build -o BIN/name .` in the peer's directory, once.
func (r *Runner) build(ctx context.Context, name, dir string) (string, error) {
	if exe, ok := r.built[name]; ok {
		return exe, nil
	}
	exe := filepath.Join(r.bin, name)
	if err := r.exec(ctx, dir, "go", "build", "-o", exe, "."); err != nil {
		return "", fmt.Errorf("%s: go build: %w", name, err)
	}
	r.built[name] = exe
	return exe, nil
}

// exec runs a tool in dir; its error carries the last line of its output.
func (r *Runner) exec(ctx context.Context, dir, tool string, args ...string) error {
	path, err := exec.LookPath(tool)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, io.MultiWriter(&out, r.log), io.MultiWriter(&out, r.log)
	if err := cmd.Run(); err != nil {
		return withOutput(err, out.String())
	}
	return nil
}

// logTime is the date and time Go's log package puts before a message.
var logTime = regexp.MustCompile(`^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d(\.\d+)? `)

// withOutput adds to err the line of a command's output that says why it
// failed: node's first "Error:" line, else the last line (Go's log.Fatal).
func withOutput(err error, out string) error {
	why := ""
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		if strings.Contains(l, "Error:") {
			why = l
			break
		}
		if l != "" {
			why = l
		}
	}
	why = logTime.ReplaceAllString(why, "")
	if why == "" {
		return err
	}
	if r := []rune(why); len(r) > 200 {
		why = string(r[:200]) + "…"
	}
	return fmt.Errorf("%w: %s", err, why)
}
