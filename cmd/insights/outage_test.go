package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/internal/testenv/fakegemini"
	"github.com/bmsview/insights/tasks"
)

// The fault test of Redis crashes: split api and worker processes on a
// Redis that logs every write (appendonly), the model behind the flow
// control (each system's slot, the shared rate limit, the breaker), sends
// from senders that retry until accepted, and Redis SIGKILLed while runs
// are in their steps, down for a moment, then started again on its data.
// Every job completes with failures 0 (no outage used a job's retry
// budget) and its follow-up is delivered exactly once.
//
// SOAK_JOBS and SOAK_KILLS scale it (defaults 80 and 3).
func TestRedisKilledDuringSteps(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test: about a minute")
	}
	n, kills := envInt("SOAK_JOBS", 80), envInt("SOAK_KILLS", 3)
	red := testenv.StartKillableRedis(t)
	e := newEnv(t)
	e.vars["REDIS_URL"] = "redis://" + red.Addr + "/0"
	apiAddr := testenv.FreeAddr(t)

	// The follow-up's webhook counts deliveries per job.
	var hookMu sync.Mutex
	delivered := map[string]int{}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p tasks.CompletedPayload
		_ = json.NewDecoder(r.Body).Decode(&p)
		hookMu.Lock()
		delivered[p.JobID]++
		hookMu.Unlock()
	}))
	t.Cleanup(hook.Close)
	// The model: while a kill is armed, it holds each call until Redis is
	// down, so the run goes on into the outage (the slot's release, the
	// follow-up's enqueue) as runs did in the soak that found issue 22.
	var (
		gateMu  sync.Mutex
		release chan struct{} // non-nil while armed: closed once Redis is down
		held    = make(chan struct{}, 64)
	)
	gem := fakegemini.Start(t, "test-key", func(c fakegemini.Call, w http.ResponseWriter) {
		gateMu.Lock()
		r := release
		gateMu.Unlock()
		if r != nil {
			held <- struct{}{}
			select {
			case <-r:
			case <-c.Req.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, fakegemini.Text("## KEY FINDINGS\n- fine\n## TREND ANALYSIS\n- flat\n## RECOMMENDATIONS\n- 🟢 keep SOC 20–80 %"))
	})
	extra := []string{"INSIGHTS_PROVIDER=gemini", "GEMINI_API_KEY=test-key", "GEMINI_BASE_URL=" + gem.URL,
		"GEMINI_RPM=100000", "SYSTEM_CONCURRENCY=1", "BREAKER_FAILURES=5", "MAX_RETRIES=3", "RETRY_TRANSIENT_DELAY=1s",
		"WORKER_CONCURRENCY=6", "COMPLETION_WEBHOOK_URL=" + hook.URL, "WEBHOOK_SECRET=soak"}
	e.start(t, "serve --role api", append(extra, "HTTP_ADDR="+apiAddr)...)
	worker := e.start(t, "serve --role worker", extra...)
	waitHTTP(t, "http://"+apiAddr+"/healthz")

	// Senders: four of them, each retrying a refused or failed send (Redis
	// down: 503; the API process's connection refused) until accepted.
	snapshot := `{"stateOfCharge":76,"overallVoltage":52.8,"current":-8.5,"remainingCapacity":152,"fullCapacity":200,"cycleCount":310}`
	var sendRetries atomic.Int64
	var sent sync.WaitGroup
	next := make(chan int)
	for range 4 {
		sent.Add(1)
		go func() {
			defer sent.Done()
			for i := range next {
				body := fmt.Sprintf(`{"eventName":"generate-insights","eventData":{"jobId":"soak-%d","systemId":"sys-%d","analysisData":%s}}`, i, i%12, snapshot)
				for try := 0; ; try++ {
					req, _ := http.NewRequest(http.MethodPost, "http://"+apiAddr+"/api/events", strings.NewReader(body))
					req.Header.Set("Authorization", "Bearer test-token")
					resp, err := http.DefaultClient.Do(req)
					if err == nil {
						resp.Body.Close()
						if resp.StatusCode/100 == 2 {
							break
						}
					}
					if try == 300 {
						t.Errorf("soak-%d never accepted: %v", i, err)
						break
					}
					sendRetries.Add(1)
					time.Sleep(100 * time.Millisecond) // the sender's own backoff
				}
			}
		}()
	}
	// The jobs go out in a batch per kill and one after, paced, so that each
	// kill finds runs in their steps and sends meet the outages too.
	feed := func(from, to int) <-chan struct{} {
		fed := make(chan struct{})
		go func() {
			defer close(fed)
			for i := from; i < to; i++ {
				next <- i
				time.Sleep(300 * time.Millisecond)
			}
		}()
		return fed
	}
	batch := n / (kills + 1)

	jobs := func() []*store.Job {
		out := make([]*store.Job, 0, n)
		for i := range n {
			if j, err := e.store.GetJob(context.Background(), "soak-"+strconv.Itoa(i)); err == nil {
				out = append(out, j)
			}
		}
		return out
	}
	done := func(j *store.Job) bool {
		return j.Status == tasks.StatusCompleted && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted
	}
	// Each kill: the model holds the calls of the batch's runs; once one
	// is held, Redis is SIGKILLed, the calls answered, and Redis stays
	// down until a run has met the outage (its job records a failure after
	// the kill), at most 20 s; then it restarts on its data.
	killed := 0
	for k := range kills {
		gateMu.Lock()
		release = make(chan struct{})
		r := release
		gateMu.Unlock()
		fed := feed(k*batch, (k+1)*batch)
		select {
		case <-held:
		case <-time.After(3 * time.Minute):
			t.Fatalf("kill %d: no model call came", k+1)
		}
		red.Kill(t)
		at := time.Now()
		killed++
		gateMu.Lock()
		release = nil
		gateMu.Unlock()
		close(r)
		met, _ := pollUntil(20*time.Second, func() bool {
			for _, j := range jobs() {
				if j.Failure != nil && j.Failure.At.After(at) {
					return true
				}
			}
			return false
		})
		if !met {
			t.Logf("kill %d: no run recorded meeting the outage within 20 s", k+1)
		}
		red.Restart(t)
		<-fed
	}
	for len(held) > 0 {
		<-held
	}
	<-feed(kills*batch, n)
	close(next)
	sent.Wait()
	testenv.WaitFor(t, 5*time.Minute, fmt.Sprintf("all %d jobs completed with their follow-ups delivered", n), func() (bool, error) {
		all := jobs()
		if len(all) < n {
			return false, nil
		}
		for _, j := range all {
			if !done(j) {
				return false, nil
			}
		}
		hookMu.Lock()
		defer hookMu.Unlock()
		return len(delivered) == n, nil
	})

	failures, outages, jobsWithOutage := 0, 0, 0
	for _, j := range jobs() {
		failures += j.Failures
		if j.Failures != 0 {
			t.Errorf("%s: failures %d (%+v), want 0: an outage used its budget", j.ID, j.Failures, j.Failure)
		}
		seen := 0
		for _, ev := range j.Progress {
			if ev.Data["outage"] != nil {
				seen++
			}
		}
		outages += seen
		if seen > 0 {
			jobsWithOutage++
		}
	}
	hookMu.Lock()
	deliveries := 0
	for id, c := range delivered {
		deliveries += c
		if c != 1 {
			t.Errorf("%s: follow-up delivered %d times, want 1", id, c)
		}
	}
	hookMu.Unlock()
	// asynq holds one completed follow-up task per job.
	insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: red.Addr})
	defer insp.Close()
	followUps := map[string]int{}
	for page := 1; ; page++ {
		infos, err := insp.ListCompletedTasks(tasks.QueueLow, asynq.PageSize(500), asynq.Page(page))
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range infos {
			if info.Type == tasks.EventInsightsCompleted {
				var p tasks.CompletedPayload
				_ = json.Unmarshal(info.Payload, &p)
				followUps[p.JobID]++
			}
		}
		if len(infos) < 500 {
			break
		}
	}
	for i := range n {
		if c := followUps["soak-"+strconv.Itoa(i)]; c != 1 {
			t.Errorf("soak-%d: %d completed insights-completed tasks in Redis, want 1", i, c)
		}
	}
	outageLines := bytes.Count([]byte(worker.log()), []byte("unavailable: retry without budget"))
	t.Logf("%d jobs, %d Redis SIGKILLs (down until a run met the outage): %d completed, failures total %d; follow-ups delivered %d (%d jobs), completed follow-up tasks %d; "+
		"outages recorded on jobs %d (on %d jobs), worker's outage retries logged %d; sends retried %d",
		n, killed, len(jobs()), failures, deliveries, len(delivered), len(followUps), outages, jobsWithOutage, outageLines, sendRetries.Load())
}

// pollUntil polls cond until it holds or within passes.
func pollUntil(within time.Duration, cond func() bool) (bool, time.Duration) {
	start := time.Now()
	for time.Since(start) < within {
		if cond() {
			return true, time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false, within
}

// envInt reads a positive integer from the environment, else def.
func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
