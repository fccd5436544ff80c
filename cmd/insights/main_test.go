package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

func TestMain(m *testing.M) {
	if args := os.Getenv("INSIGHTS_TEST_MAIN"); args != "" {
		// Child process: the real command line, as the binary runs it.
		os.Exit(run(context.Background(), strings.Fields(args), os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// env is the environment of one test's service: a Redis DB and a Mongo
// database of its own.
type env struct {
	vars  map[string]string
	store *store.Store
	redis asynq.RedisClientOpt
}

func newEnv(t *testing.T) *env {
	t.Helper()
	opt := testenv.Redis(t)
	st := testenv.Store(t)
	return &env{store: st, redis: opt, vars: map[string]string{
		"REDIS_URL":        fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB),
		"MONGODB_URI":      testenv.MongoURI(t),
		"MONGODB_DB_NAME":  st.Database().Name(),
		"API_TOKEN":        "test-token",
		"ADMIN_PASSWORD":   "test-password",
		"DATA_DIR":         t.TempDir(),
		"HTTP_ADDR":        "127.0.0.1:0",
		"BACKOFF_SCHEDULE": "1s",
	}}
}

// setenv applies the environment to this process (for in-process commands).
func (e *env) setenv(t *testing.T) {
	for k, v := range e.vars {
		t.Setenv(k, v)
	}
}

type proc struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
	done   chan struct{}
	code   int
}

// start runs the binary's command line in a child process.
func (e *env) start(t *testing.T, args string, extra ...string) *proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "INSIGHTS_TEST_MAIN="+args)
	for k, v := range e.vars {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Env = append(cmd.Env, extra...)
	p := &proc{cmd: cmd, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
		}
	}()
	go func() {
		err := cmd.Wait()
		pw.Close()
		p.code = cmd.ProcessState.ExitCode()
		_ = err
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("stderr of %q:\n%s", args, p.log())
		}
	})
	return p
}

func (p *proc) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// runCLI runs a command in process and returns exit code, stdout, stderr.
func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func writeSnapshot(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "snapshot.json")
	b, _ := json.Marshal(tasks.AnalysisData{StateOfCharge: bms.F(76), OverallVoltage: bms.F(52.8), Current: bms.F(-8.5), RemainingCapacity: bms.F(152),
		FullCapacity: bms.F(200), CellVoltageDifference: bms.F(0.018), Temperatures: []float64{24, 25}, CycleCount: bms.F(310)})
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (e *env) trigger(t *testing.T, args ...string) *tasks.SendResult {
	t.Helper()
	code, out, errs := runCLI(append([]string{"trigger"}, args...)...)
	if code != 0 {
		t.Fatalf("trigger %v: exit %d: %s", args, code, errs)
	}
	var res tasks.SendResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("trigger output %q: %v", out, err)
	}
	return &res
}

func (e *env) waitStep(t *testing.T, jobID, step string, within time.Duration) *store.Job {
	t.Helper()
	return testenv.WaitJob(t, e.store, jobID, within, step+" completed", func(j *store.Job) bool {
		return j.Steps[step].Status == store.StepCompleted
	})
}

func allRunsOne(t *testing.T, j *store.Job) {
	t.Helper()
	for _, s := range tasks.Steps {
		if j.Steps[s].Runs != 1 {
			t.Errorf("job %s: step %s ran %d times, want 1 (runs %v)", j.ID, s, j.Steps[s].Runs, j.Steps)
		}
	}
}

func TestTriggerRefusesBadInputNamingTheFlag(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	data := writeSnapshot(t)
	for _, tc := range []struct {
		args []string
		flag string
	}{
		{[]string{"--data", data}, "--system-id"},
		{[]string{"--system-id", "s1"}, "--data"},
		{[]string{"--system-id", "s 1", "--data", data}, "--system-id"},
		{[]string{"--system-id", "s1", "--data", data, "--priority", "11"}, "--priority"},
		{[]string{"--system-id", "s1", "--data", data, "--context-days", "0"}, "--context-days"},
		{[]string{"--system-id", "s1", "--data", data, "--max-iterations", "99"}, "--max-iterations"},
		{[]string{"--system-id", "s1", "--data", data, "--at", "tomorrow"}, "--at"},
		{[]string{"--system-id", "s1", "--data", "/nonexistent.json"}, "--data"},
		{[]string{"--system-id", "s1", "--data", data, "--in", "soon"}, "-in"},
		{[]string{"--system-id", "s1", "--data", data, "--job-id", "has space"}, "--job-id"},
	} {
		code, _, errs := runCLI(append([]string{"trigger"}, tc.args...)...)
		if code != 2 || !strings.Contains(errs, tc.flag) {
			t.Errorf("trigger %v: exit %d, stderr %q; want 2 naming %s", tc.args, code, errs, tc.flag)
		}
	}
	if code, _, _ := runCLI("nonsense"); code != 2 {
		t.Errorf("unknown command: exit %d, want 2", code)
	}
}

func TestTriggerRecordsJobAndRefusesDuplicate(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	data := writeSnapshot(t)
	res := e.trigger(t, "--system-id", "sys-cli", "--data", data, "--job-id", "cli-1", "--priority", "8")
	if res.SendStatus != "succeeded" || res.Queue != "high" || res.State != "pending" || res.JobID != "cli-1" {
		t.Errorf("first send: %+v", res)
	}
	j, err := e.store.GetJob(context.Background(), "cli-1")
	if err != nil || j.Status != tasks.StatusQueued || j.EventID != res.EventID || bms.V(j.Request.AnalysisData.StateOfCharge) != 76 {
		t.Fatalf("job: %+v %v", j, err)
	}
	again := e.trigger(t, "--system-id", "sys-cli", "--data", data, "--job-id", "cli-1")
	if again.SendStatus != "duplicate" || again.EventID != res.EventID {
		t.Errorf("second send: %+v, want duplicate of %s", again, res.EventID)
	}
	later := e.trigger(t, "--system-id", "sys-cli", "--data", data, "--in", "1h", "--urgent")
	if later.State != "scheduled" || later.Queue != "critical" || !strings.HasPrefix(later.JobID, "job-") {
		t.Errorf("scheduled urgent send: %+v", later)
	}
	if j, _ := e.store.GetJob(context.Background(), later.JobID); j == nil || j.Status != tasks.StatusScheduled {
		t.Errorf("scheduled job: %+v", j)
	}
}

// TestServeStatusAndSIGTERM runs the real `serve` in a child process: a
// step is running (an LLM call that hangs) when SIGTERM arrives; the process
// exits 0 within SHUTDOWN_TIMEOUT, and a new worker completes the job
// without re-running its completed steps.
func TestServeStatusAndSIGTERM(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	gem := newFakeGemini(t)
	gem.hang.Store(true)
	extra := gem.env("SHUTDOWN_TIMEOUT=2s")
	addr := testenv.FreeAddr(t)
	first := e.start(t, "serve", append(extra, "HTTP_ADDR="+addr)...)
	waitHTTP(t, "http://"+addr+"/healthz")

	res := e.trigger(t, "--system-id", "sys-term", "--data", writeSnapshot(t), "--job-id", "term-1")
	select {
	case <-gem.called:
	case <-time.After(30 * time.Second):
		t.Fatal("process-insights never called the model")
	}
	// status through the server's API while the step runs.
	code, out, errs := runCLI("status", res.EventID, "--server", "http://"+addr)
	if code != 0 || !strings.Contains(out, `"state": "active"`) || !strings.Contains(out, `"validate"`) {
		t.Errorf("status: exit %d %s %s", code, out, errs)
	}
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sent := time.Now()
	select {
	case <-first.done:
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not exit within 15 s of SIGTERM (SHUTDOWN_TIMEOUT=2s)")
	}
	t.Logf("exited %v after SIGTERM", time.Since(sent).Round(10*time.Millisecond))
	if first.code != 0 {
		t.Fatalf("exit code %d, want 0", first.code)
	}
	j, _ := e.store.GetJob(context.Background(), "term-1")
	if j.Steps[tasks.StepProcessInsights].Status == store.StepCompleted || j.Failures != 0 {
		t.Fatalf("after the cut: process-insights %+v failures %d", j.Steps[tasks.StepProcessInsights], j.Failures)
	}

	gem.hang.Store(false)
	e.start(t, "serve --role worker", append(extra, "HTTP_ADDR=127.0.0.1:0")...)
	j = e.waitStep(t, "term-1", tasks.StepSendCompletion, 60*time.Second)
	allRunsOne(t, j)
	if j.Status != tasks.StatusCompleted || j.Attempts != 2 {
		t.Errorf("job %s attempts %d, want completed in 2", j.Status, j.Attempts)
	}
	// status read straight from Redis and MongoDB.
	code, out, errs = runCLI("status", res.EventID)
	if code != 0 || !strings.Contains(out, `"status": "completed"`) {
		t.Errorf("status direct: exit %d %s %s", code, out, errs)
	}
}

func TestTwoWorkerProcessesShareTheQueues(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	w1 := e.start(t, "serve --role worker", "WORKER_CONCURRENCY=3", "LOG_LEVEL=debug")
	w2 := e.start(t, "serve --role worker", "WORKER_CONCURRENCY=3", "LOG_LEVEL=debug")
	data := writeSnapshot(t)
	const n = 24
	for i := range n {
		e.trigger(t, "--system-id", "sys-"+strconv.Itoa(i%3), "--data", data, "--job-id", fmt.Sprintf("shared-%d", i))
	}
	for i := range n {
		j := e.waitStep(t, fmt.Sprintf("shared-%d", i), tasks.StepSendCompletion, 90*time.Second)
		allRunsOne(t, j)
		if j.Attempts != 1 {
			t.Errorf("%s: %d attempts, want 1", j.ID, j.Attempts)
		}
	}
	eachHandledSome(t, w1, w2)
}

// Two worker processes share the model's rate limit through Redis: 60 jobs
// under GEMINI_RPM=30 never bring more than 30 calls into one minute, and
// all complete with no failure (the runs over the limit waited).
func TestTwoWorkersShareTheRateLimit(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	gem := newFakeGemini(t)
	extra := gem.env("GEMINI_RPM=30", "SYSTEM_CONCURRENCY=0", "MAX_RETRIES=0", "WORKER_CONCURRENCY=3")
	w1 := e.start(t, "serve --role worker", extra...)
	w2 := e.start(t, "serve --role worker", extra...)
	data := writeSnapshot(t)
	const n = 60
	for i := range n {
		e.trigger(t, "--system-id", "sys-rate", "--data", data, "--job-id", fmt.Sprintf("rate-%d", i))
	}
	for i := range n {
		j := e.waitStep(t, fmt.Sprintf("rate-%d", i), tasks.StepSendCompletion, 150*time.Second)
		if j.Failures != 0 || j.OwnFailure() { // a store's outage is no failure of the run
			t.Errorf("%s: failures %d %+v, want none", j.ID, j.Failures, j.Failure)
		}
	}
	if got := gem.MostWithin(time.Minute); got > 30 {
		t.Errorf("%d model calls within one minute from two workers, the limit is 30", got)
	}
	eachHandledSome(t, w1, w2)
}

// A worker SIGKILLed while it holds a system's slot (SYSTEM_CONCURRENCY=1)
// blocks that system no longer than the slot's lease: another worker then
// runs the next job of the system.
func TestKilledWorkerHoldsASystemSlotOnlyForItsLease(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	gem := newFakeGemini(t)
	gem.hang.Store(true)
	extra := gem.env("SYSTEM_CONCURRENCY=1")
	first := e.start(t, "serve --role worker", extra...)
	data := writeSnapshot(t)
	e.trigger(t, "--system-id", "sys-slot", "--data", data, "--job-id", "slot-held")
	select {
	case <-gem.called: // the first job holds the slot, in a model call that never answers
	case <-time.After(30 * time.Second):
		t.Fatal("the first job never called the model")
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	gem.hang.Store(false)
	e.start(t, "serve --role worker", extra...)
	e.trigger(t, "--system-id", "sys-slot", "--data", data, "--job-id", "slot-next")
	j := e.waitStep(t, "slot-next", tasks.StepProcessInsights, 90*time.Second)
	// The lease is 30 s; the waiting run looks again every 2 s.
	switch waited := j.Steps[tasks.StepProcessInsights].StartedAt.Sub(killed); {
	case waited > 40*time.Second:
		t.Errorf("the next job of the system started %v after the kill, the lease is 30s", waited.Round(time.Second))
	case waited < 20*time.Second:
		t.Errorf("the next job of the system started %v after the kill: the dead worker's slot was not held", waited.Round(time.Second))
	}
}

// eachHandledSome checks that every worker process completed some job.
func eachHandledSome(t *testing.T, workers ...*proc) {
	t.Helper()
	for i, w := range workers {
		if c := strings.Count(w.log(), `msg="completion handled"`); c == 0 {
			t.Errorf("worker %d handled no job", i+1)
		}
	}
}
