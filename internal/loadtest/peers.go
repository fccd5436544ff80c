package loadtest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// PeerOptions say where the peer benchmarks of ../shared/peers are and how
// to run them (their README gives the method; run.sh starts them the same
// way).
type PeerOptions struct {
	// Dir holds river/, bullmq/ and asynqnoop/.
	Dir         string
	N           int
	Concurrency int
	// RiverDSN is River's PostgreSQL database (created beforehand:
	// createdb riverbench). Empty: the peers' own default.
	RiverDSN string
	// Log receives the peers' build and run output. Nil: discarded.
	Log io.Writer
}

// peer is one program and the rows its output line gives.
type peer struct {
	name string
	dir  string
	rows []peerRow
}

type peerRow struct {
	key, name string
}

var peers = []peer{
	{"asynq", "asynqnoop", []peerRow{{"noop_tasks_per_s", "raw asynq, no-op task (one task, no steps)"}}},
	{"bullmq", "bullmq", []peerRow{{"steps6_jobs_per_s", "BullMQ step job: 6 updateData + follow-up (Redis without persistence)"}}},
	{"river", "river", []peerRow{
		{"steps6tx_jobs_per_s", "River: 6 ResumableSteps, each checkpoint its own transaction"},
		{"steps6_jobs_per_s", "River: 6 ResumableSteps, progress saved only on error"},
	}},
}

// RunPeers builds and runs each peer once with N and Concurrency and
// returns a row per figure; a peer that cannot run (no node, no database)
// gives rows carrying its error, so one missing tool never hides the rest.
func RunPeers(ctx context.Context, o PeerOptions) []Result {
	log := o.Log
	if log == nil {
		log = io.Discard
	}
	bin, err := os.MkdirTemp("", "insights-peers-")
	if err != nil {
		return []Result{{Name: "peers", Err: err}}
	}
	defer os.RemoveAll(bin)
	var out []Result
	for _, p := range peers {
		line, err := runPeer(ctx, p, o, bin, log)
		var vals map[string]float64
		if err == nil {
			vals, err = parsePeerLine(p.name, line)
		}
		for _, r := range p.rows {
			res := Result{Name: r.name, N: o.N, Err: err}
			if err == nil {
				v, ok := vals[r.key]
				if !ok {
					res.Err = fmt.Errorf("%s printed no %s in %q", p.name, r.key, line)
				}
				res.PerSec = v
			}
			out = append(out, res)
		}
	}
	return out
}

func runPeer(ctx context.Context, p peer, o PeerOptions, bin string, log io.Writer) (string, error) {
	dir := filepath.Join(o.Dir, p.dir)
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("peer %s: %w", p.name, err)
	}
	args := []string{"-n", strconv.Itoa(o.N), "-c", strconv.Itoa(o.Concurrency)}
	var cmd *exec.Cmd
	switch p.name {
	case "bullmq":
		if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
			npm := exec.CommandContext(ctx, "npm", "ci", "--silent")
			npm.Dir, npm.Stdout, npm.Stderr = dir, log, log
			if err := npm.Run(); err != nil {
				return "", fmt.Errorf("peer bullmq: npm ci: %w", err)
			}
		}
		cmd = exec.CommandContext(ctx, "node", append([]string{"bench.js"}, args...)...)
	default:
		exe := filepath.Join(bin, p.name)
		build := exec.CommandContext(ctx, "go", "build", "-o", exe, ".")
		build.Dir, build.Stdout, build.Stderr = dir, log, log
		if err := build.Run(); err != nil {
			return "", fmt.Errorf("peer %s: build: %w", p.name, err)
		}
		if p.name == "river" {
			// River's own benchmark settings (the peers' "tuned" rows).
			args = append(args, "-cooldown", "2ms", "-poll", "20ms")
			if o.RiverDSN != "" {
				args = append(args, "-dsn", o.RiverDSN)
			}
		}
		cmd = exec.CommandContext(ctx, exe, args...)
	}
	var stdout bytes.Buffer
	cmd.Dir, cmd.Stdout, cmd.Stderr = dir, io.MultiWriter(&stdout, log), log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("peer %s: %w", p.name, err)
	}
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(l, p.name+" ") {
			return l, nil
		}
	}
	return "", fmt.Errorf("peer %s printed no result line", p.name)
}

// parsePeerLine reads "name key=value ..." as the peers print it.
func parsePeerLine(name, line string) (map[string]float64, error) {
	f := strings.Fields(line)
	if len(f) == 0 || f[0] != name {
		return nil, fmt.Errorf("peer %s: unexpected line %q", name, line)
	}
	out := map[string]float64{}
	for _, kv := range f[1:] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		if x, err := strconv.ParseFloat(v, 64); err == nil {
			out[k] = x
		}
	}
	return out, nil
}
