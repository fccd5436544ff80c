package peers

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Lines as the peers printed them on this machine (n=2000, c=20).
const (
	riverLine  = "river noop_jobs_per_s=6445 steps6_jobs_per_s=2205 steps6tx_jobs_per_s=526 insert_jobs_per_s=71885 n=2000 c=20 fetch_cooldown=2ms"
	bullmqLine = "bullmq noop_jobs_per_s=8752 steps6_jobs_per_s=3677 add_jobs_per_s=16116 n=2000 c=20"
	asynqLine  = "asynq noop_tasks_per_s=15442 enqueue_tasks_per_s=15224 n=2000 c=20"
)

func TestParseLine(t *testing.T) {
	type fig struct {
		phase, name string
		perSec      float64
	}
	for _, c := range []struct {
		peer, line string
		want       []fig
	}{
		{River, riverLine, []fig{
			{Steps6Tx, "River, durable step per tx", 526},
			{Steps6, "River, ResumableStep (not durable per step)", 2205},
			{Noop, "River, no-op job", 6445},
		}},
		{BullMQ, bullmqLine, []fig{
			{Steps6, "BullMQ, step job (updateData per step) + follow-up", 3677},
			{Noop, "BullMQ, no-op job", 8752},
		}},
		{Asynq, asynqLine, []fig{
			{Noop, "asynq, no-op task", 15442},
		}},
		// Fractions and extra spaces read too.
		{Asynq, "  asynq   noop_tasks_per_s=12.5 ", []fig{{Noop, "asynq, no-op task", 12.5}}},
	} {
		got, err := ParseLine(c.peer, strings.TrimSpace(c.line))
		if err != nil {
			t.Fatalf("%s: %v", c.peer, err)
		}
		if len(got) != len(c.want) {
			t.Fatalf("%s: %d results, want %d: %+v", c.peer, len(got), len(c.want), got)
		}
		for i, w := range c.want {
			g := got[i]
			if g.Err != nil || g.Peer != c.peer || g.Phase != w.phase || g.Name != w.name || g.PerSec != w.perSec || len(g.Notes) == 0 {
				t.Errorf("%s #%d = %+v, want %+v with a note", c.peer, i, g, w)
			}
		}
	}
}

func TestParseLineErrors(t *testing.T) {
	if _, err := ParseLine(River, bullmqLine); err == nil {
		t.Error("another peer's line was accepted")
	}
	if _, err := ParseLine("sidekiq", "sidekiq x=1"); err == nil {
		t.Error("an unknown peer was accepted")
	}
	if _, err := ParseLine(River, ""); err == nil {
		t.Error("an empty line was accepted")
	}
	// A figure missing or unreadable fails its row only.
	got, err := ParseLine(River, "river noop_jobs_per_s=10 steps6_jobs_per_s=NaNx n=1")
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Err == nil || !strings.Contains(got[0].Err.Error(), "steps6tx_jobs_per_s") {
		t.Errorf("missing steps6tx: %+v", got[0])
	}
	if got[1].Err == nil || !strings.Contains(got[1].Err.Error(), "not a number") {
		t.Errorf("bad steps6: %+v", got[1])
	}
	if got[2].Err != nil || got[2].PerSec != 10 {
		t.Errorf("noop: %+v", got[2])
	}
}

func TestResultLine(t *testing.T) {
	out := "npm warn something\nbullmq-ish noise\n" + bullmqLine + "\n"
	if l, err := ResultLine(BullMQ, out); err != nil || l != bullmqLine {
		t.Errorf("ResultLine = %q, %v", l, err)
	}
	if _, err := ResultLine(River, out); err == nil {
		t.Error("found a river line in bullmq's output")
	}
}

func TestSort(t *testing.T) {
	var rs []Result
	for _, l := range [][2]string{{Asynq, asynqLine}, {BullMQ, bullmqLine}, {River, riverLine}} {
		r, err := ParseLine(l[0], l[1])
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, r...)
	}
	Sort(rs)
	var got []string
	for _, r := range rs {
		got = append(got, r.Peer+"/"+r.Phase)
	}
	want := "river/steps6tx bullmq/steps6 river/steps6 asynq/noop bullmq/noop river/noop"
	if strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
}

func TestFailed(t *testing.T) {
	err := errors.New("node: not found")
	rs := Failed(BullMQ, err)
	if len(rs) != 2 || rs[0].Err != err || rs[1].Err != err || rs[0].Name == "" {
		t.Errorf("Failed = %+v", rs)
	}
}

func TestWithOutput(t *testing.T) {
	base := errors.New("exit status 1")
	for _, c := range []struct{ out, want string }{
		{"", "exit status 1"},
		{"2026/11/29 00:40:01 failed to connect to `user=postgres database=riverbench`\n", "exit status 1: failed to connect to `user=postgres database=riverbench`"},
		{"file:///x/bench.js:52\nawait redis.flushdb();\n^\n\nError: connect ECONNREFUSED 127.0.0.1:6379\n    at TCPConnectWrap\n\nNode.js v20.20.2\n", "exit status 1: Error: connect ECONNREFUSED 127.0.0.1:6379"},
	} {
		if got := withOutput(base, c.out).Error(); got != c.want {
			t.Errorf("withOutput(%q) = %q, want %q", c.out, got, c.want)
		}
	}
}

// A peer directory that is missing, a Go peer that prints its line and one
// that fails: each gives its own rows and none stops the others.
func TestRunnerFakePeers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two Go programs")
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool")
	}
	dir := t.TempDir()
	write := func(sub, main string) {
		d := filepath.Join(dir, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, text := range map[string]string{"go.mod": "module fake\n\ngo 1.22\n", "main.go": main} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	write("asynqnoop", `package main

import ("flag"; "fmt")

func main() {
	n := flag.Int("n", 0, ""); c := flag.Int("c", 0, ""); flag.String("redis", "", ""); flag.Parse()
	fmt.Println("starting")
	fmt.Printf("asynq noop_tasks_per_s=%d enqueue_tasks_per_s=1 n=%d c=%d\n", *n**c, *n, *c)
}
`)
	write("river", `package main

import "log"

func main() { log.Fatal("failed to connect to riverbench") }
`)
	r, err := NewRunner(Options{Dir: dir, N: 30, Concurrency: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rs := r.RunAll(context.Background())
	byName := map[string]Result{}
	for _, x := range rs {
		byName[x.Peer+"/"+x.Phase] = x
	}
	if len(rs) != 6 {
		t.Fatalf("%d results, want 6: %+v", len(rs), rs)
	}
	if a := byName["asynq/noop"]; a.Err != nil || a.PerSec != 120 {
		t.Errorf("asynq: %+v, want 120 (n*c from the flags)", a)
	}
	if b := byName["bullmq/steps6"]; b.Err == nil {
		t.Errorf("bullmq without a directory: %+v", b)
	}
	if rv := byName["river/steps6tx"]; rv.Err == nil || !strings.Contains(rv.Err.Error(), "failed to connect to riverbench") {
		t.Errorf("river: %+v, want its log.Fatal message", rv)
	}
	// The second run reuses the built binary: its source no longer builds.
	if err := os.WriteFile(filepath.Join(dir, "asynqnoop", "main.go"), []byte("package main\n\nnot go\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if a := r.Run(context.Background(), Asynq); a[0].Err != nil || a[0].PerSec != 120 {
		t.Errorf("second run: %+v", a)
	}
}

func TestNewRunnerNoDir(t *testing.T) {
	if _, err := NewRunner(Options{Dir: filepath.Join(t.TempDir(), "none")}); err == nil {
		t.Error("a missing peers directory was accepted")
	}
}
