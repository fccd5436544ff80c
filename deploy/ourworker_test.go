package deploy

// Our worker (app.NewWorker), our producer (a.Client) and our API (web.New)
// built exactly as the service builds them, from config.Load and app.Open,
// on a real Redis Sentinel and on a real three-node Redis Cluster, with the
// embedded FerretDB as MongoDB.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/bmsview/insights/web"
)

const (
	ourJobs     = 10
	ourWithin   = 90 * time.Second
	ourAPIToken = "our-token"
)

// ourLog collects the service's log lines; they are printed only when the
// test fails (the worker's goroutines may log while cleanups run, when
// t.Log is no longer safe).
type ourLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *ourLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *ourLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// ourService is the running service of one test.
type ourService struct {
	a   *app.App
	api *httptest.Server
}

// startOurService loads the configuration from vars (plus the embedded
// FerretDB of the test), opens the app, starts our worker and serves the
// API. Everything stops when the test ends, before the Redis processes do.
func startOurService(t *testing.T, vars map[string]string) *ourService {
	t.Helper()
	vars["API_TOKEN"] = ourAPIToken
	logs := &ourLog{}
	t.Cleanup(func() {
		if t.Failed() {
			fmt.Printf("--- service log of %s:\n%s\n", t.Name(), logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))

	start := time.Now()
	a, cfg := testenv.App(t, vars, log)
	if cfg.EmbeddedRedis() {
		t.Fatalf("config %v: embedded Redis, want the real one", vars)
	}
	if cfg.TaskRetention != 168*time.Hour {
		t.Fatalf("TASK_RETENTION default = %v, want 168h", cfg.TaskRetention)
	}

	e, err := a.NewEngine()
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	w, err := a.NewWorker(app.WorkerOptions{Engine: e})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatalf("worker start: %v", err)
	}
	t.Cleanup(w.Shutdown)

	operator := a.NewOperator(log)
	t.Cleanup(operator.Close)
	ws := web.New(web.Config{Store: a.Store, Client: a.Client, Inspector: a.Inspector, RedisConnOpt: a.Redis,
		APIToken: cfg.APIToken, Operator: operator, Logger: log})
	t.Cleanup(func() { _ = ws.Close() })
	api := httptest.NewServer(ws.Handler())
	t.Cleanup(api.Close)
	t.Logf("service up in %v (redis %T)", time.Since(start).Round(time.Millisecond), a.Redis)
	return &ourService{a: a, api: api}
}

// ourDashTask is a task as the dashboard's API lists it.
type ourDashTask struct {
	ID    string `json:"id"`
	Type  string `json:"type"`
	Queue string `json:"queue"`
}

// get is GET path with the Bearer token.
func (s *ourService) get(path string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, s.api.URL+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+ourAPIToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// getEvent is GET /api/events/{eventId} with the Bearer token.
func (s *ourService) getEvent(eventID string) (int, *web.EventStatus, string, error) {
	code, body, err := s.get("/api/events/" + eventID)
	if err != nil || code != http.StatusOK {
		return code, nil, body, err
	}
	var st web.EventStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		return code, nil, body, fmt.Errorf("decode %s: %w", body, err)
	}
	return code, &st, body, nil
}

// runOurJobs sends ourJobs generate-insights events through the producer
// and waits until each job completed, each of its steps ran once, and the
// API reports its event's asynq task as completed.
func runOurJobs(t *testing.T, s *ourService, prefix string) {
	t.Helper()
	ctx := context.Background()
	snap := &tasks.AnalysisData{StateOfCharge: bms.F(64), OverallVoltage: bms.F(52.1), Current: bms.F(-6), RemainingCapacity: bms.F(128), FullCapacity: bms.F(200)}
	start := time.Now()
	events := map[string]string{} // jobId → eventId
	for i := range ourJobs {
		id := fmt.Sprintf("%s-%02d", prefix, i)
		res, err := s.a.Client.TriggerInsights(ctx, tasks.EventData{JobID: id, SystemID: prefix + "-sys", AnalysisData: snap},
			tasks.WithPriority(i%11))
		if err != nil {
			t.Fatalf("TriggerInsights %s: %v", id, err)
		}
		if res.SendStatus != "succeeded" || res.EventID == "" || res.JobID != id {
			t.Fatalf("TriggerInsights %s: %+v", id, res)
		}
		events[id] = res.EventID
	}
	t.Logf("%d events sent in %v", ourJobs, time.Since(start).Round(time.Millisecond))

	ids := make([]string, 0, len(events))
	for id := range events {
		ids = append(ids, id)
	}
	slices.Sort(ids)

	testenv.WaitFor(t, ourWithin, fmt.Sprintf("%d jobs completed", ourJobs), func() (bool, error) {
		for _, id := range ids {
			j, err := s.a.Store.GetJob(ctx, id)
			if err != nil {
				return false, fmt.Errorf("%s: %w", id, err)
			}
			if j.Status != tasks.StatusCompleted || j.Steps[tasks.StepSendCompletion].Status != store.StepCompleted {
				return false, fmt.Errorf("%s: status %s, send-completion %q", id, j.Status, j.Steps[tasks.StepSendCompletion].Status)
			}
		}
		return true, nil
	})
	t.Logf("%d jobs completed %v after the first send", ourJobs, time.Since(start).Round(time.Millisecond))

	for _, id := range ids {
		j, err := s.a.Store.GetJob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if j.EventID != events[id] {
			t.Errorf("%s: eventId %s, sent %s", id, j.EventID, events[id])
		}
		for _, step := range tasks.Steps {
			st := j.Steps[step]
			if st.Status != store.StepCompleted || st.Runs != 1 {
				t.Errorf("%s: step %s: status %q, runs %d; want completed, 1", id, step, st.Status, st.Runs)
			}
		}
	}

	// asynq marks a task completed just after its handler returns, so the
	// API may briefly still say active.
	for _, id := range ids {
		ev := events[id]
		testenv.WaitFor(t, 30*time.Second, "GET /api/events/"+ev+" completed", func() (bool, error) {
			code, st, body, err := s.getEvent(ev)
			if err != nil {
				return false, err
			}
			if code != http.StatusOK {
				return false, fmt.Errorf("status %d: %s", code, body)
			}
			if st.State == nil || *st.State != "completed" {
				return false, fmt.Errorf("state %v: %s", st.State, body)
			}
			if st.EventID != ev || st.JobID != id || st.EventName != tasks.EventGenerateInsights {
				return false, fmt.Errorf("wrong event: %s", body)
			}
			if st.Job == nil || st.Job.Status != tasks.StatusCompleted {
				return false, fmt.Errorf("job not completed in the answer: %s", body)
			}
			return true, nil
		})
	}
	t.Logf("API reports all %d events completed %v after the first send", ourJobs, time.Since(start).Round(time.Millisecond))

	// The dashboard (asynqmon under /monitoring/) lists them as completed
	// tasks of their queues, and reads the Redis it runs on.
	byQueue := map[string][]string{}
	for _, id := range ids {
		j, err := s.a.Store.GetJob(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		byQueue[j.Queue] = append(byQueue[j.Queue], events[id])
	}
	for q, want := range byQueue {
		var page struct {
			Tasks []ourDashTask `json:"tasks"`
		}
		code, body, err := s.get("/monitoring/api/queues/" + q + "/completed_tasks?size=1000")
		if err != nil || code != http.StatusOK {
			t.Fatalf("dashboard completed tasks of %s: %d %s %v", q, code, body, err)
		}
		if err := json.Unmarshal([]byte(body), &page); err != nil {
			t.Fatalf("dashboard completed tasks of %s: %v: %s", q, err, body)
		}
		for _, ev := range want {
			if !slices.ContainsFunc(page.Tasks, func(tk ourDashTask) bool {
				return tk.ID == ev && tk.Type == tasks.EventGenerateInsights && tk.Queue == q
			}) {
				t.Errorf("dashboard: completed tasks of queue %s lack event %s: %s", q, ev, body)
			}
		}
	}
	if code, body, err := s.get("/monitoring/api/redis_info"); err != nil || code != http.StatusOK {
		t.Errorf("dashboard redis_info: %d %s %v", code, body, err)
	}
	t.Logf("dashboard lists the %d completed tasks in %d queues", ourJobs, len(byQueue))
}

// TestOurWorkerSentinel: the service on REDIS_URL=redis-sentinel://...
// finds the master through the sentinels and runs ten jobs to completion.
// asynq.ParseRedisURI takes several sentinels as a comma-separated host
// list ("redis-sentinel://h1:p1,h2:p2?master=name"); the first one listed
// here is down, so the client must go on to the next.
func TestOurWorkerSentinel(t *testing.T) {
	begin := time.Now()
	master, sentinels := testenv.StartSentinel(t)
	t.Logf("sentinel up in %v: master %s, sentinels %v", time.Since(begin).Round(time.Millisecond), master, sentinels)
	addrs := append([]string{testenv.FreeAddr(t)}, sentinels...)
	uri := "redis-sentinel://" + strings.Join(addrs, ",") + "?master=" + master

	cfg, err := config.Load(func(k string) string {
		if k == "REDIS_URL" {
			return uri
		}
		return ""
	})
	if err != nil {
		t.Fatalf("config.Load(REDIS_URL=%s): %v", uri, err)
	}
	opt, err := cfg.RedisConnOpt()
	if err != nil {
		t.Fatal(err)
	}
	fo, ok := opt.(asynq.RedisFailoverClientOpt)
	if !ok || fo.MasterName != master || !slices.Equal(fo.SentinelAddrs, addrs) {
		t.Fatalf("RedisConnOpt for %s = %#v, want failover to %s via %v", uri, opt, master, addrs)
	}

	s := startOurService(t, map[string]string{"REDIS_URL": uri})
	if _, ok := s.a.Redis.(asynq.RedisFailoverClientOpt); !ok {
		t.Fatalf("app.Redis = %T, want asynq.RedisFailoverClientOpt", s.a.Redis)
	}
	if err := s.a.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	runOurJobs(t, s, "our-sentinel")
	t.Logf("total %v", time.Since(begin).Round(time.Millisecond))
}

// TestOurWorkerCluster: the service on REDIS_CLUSTER_ADDRS runs ten jobs to
// completion, and the reconciler restores a scheduled job's task deleted
// from the cluster with the same eventId.
func TestOurWorkerCluster(t *testing.T) {
	begin := time.Now()
	addrs := testenv.StartCluster(t)
	t.Logf("cluster up in %v: %v", time.Since(begin).Round(time.Millisecond), addrs)

	s := startOurService(t, map[string]string{"REDIS_CLUSTER_ADDRS": strings.Join(addrs, ",")})
	co, ok := s.a.Redis.(asynq.RedisClusterClientOpt)
	if !ok || !slices.Equal(co.Addrs, addrs) {
		t.Fatalf("app.Redis = %#v, want a cluster on %v", s.a.Redis, addrs)
	}
	if err := s.a.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	runOurJobs(t, s, "our-cluster")

	t.Run("Reconcile", func(t *testing.T) {
		ourReconcile(t, s)
	})
	t.Logf("total %v", time.Since(begin).Round(time.Millisecond))
}

// ourReconcile schedules a job an hour ahead, deletes its task from Redis
// while the job is live, and has a.Reconcile put it back.
func ourReconcile(t *testing.T, s *ourService) {
	ctx := context.Background()
	a := s.a
	start := time.Now()
	at := time.Now().Add(time.Hour).Truncate(time.Second)
	res, err := a.Client.TriggerInsights(ctx, tasks.EventData{JobID: "our-cluster-later", SystemID: "our-cluster-sys",
		AnalysisData: &tasks.AnalysisData{StateOfCharge: bms.F(50), OverallVoltage: bms.F(51.2), FullCapacity: bms.F(200), RemainingCapacity: bms.F(100)}},
		tasks.At(at))
	if err != nil {
		t.Fatalf("TriggerInsights at %v: %v", at, err)
	}
	info, err := a.Inspector.GetTaskInfo(res.Queue, res.EventID)
	if err != nil || info.State != asynq.TaskStateScheduled {
		t.Fatalf("sent task: %+v, %v; want scheduled", info, err)
	}
	if j, err := a.Store.GetJob(ctx, res.JobID); err != nil || j.Status != tasks.StatusScheduled || j.EventID != res.EventID {
		t.Fatalf("job before the delete: %+v, %v", j, err)
	}

	// Nothing is missing yet: the reconciler leaves the live task alone.
	if n, err := a.Reconcile(ctx, 0); err != nil || n != 0 {
		t.Fatalf("Reconcile with every task present: %d, %v; want 0, nil", n, err)
	}

	if err := a.Inspector.DeleteTask(res.Queue, res.EventID); err != nil {
		t.Fatalf("DeleteTask: %v", err)
	}
	if _, err := a.Inspector.GetTaskInfo(res.Queue, res.EventID); !errors.Is(err, asynq.ErrTaskNotFound) {
		t.Fatalf("GetTaskInfo after DeleteTask: %v, want ErrTaskNotFound", err)
	}
	if code, st, body, err := s.getEvent(res.EventID); err != nil || code != http.StatusOK || st.State != nil {
		t.Errorf("GET /api/events after the delete: %d %s %v; want 200, state null", code, body, err)
	}

	n, err := a.Reconcile(ctx, 0)
	if err != nil || n != 1 {
		t.Fatalf("Reconcile: %d, %v; want 1, nil", n, err)
	}
	info, err = a.Inspector.GetTaskInfo(res.Queue, res.EventID)
	if err != nil {
		t.Fatalf("restored task: %v", err)
	}
	if info.ID != res.EventID || info.State != asynq.TaskStateScheduled || !info.NextProcessAt.Equal(at) || info.Type != tasks.EventGenerateInsights {
		t.Fatalf("restored task: id %s state %v next %v type %s; want %s scheduled %v %s",
			info.ID, info.State, info.NextProcessAt, info.Type, res.EventID, at, tasks.EventGenerateInsights)
	}
	var p tasks.Run
	if err := json.Unmarshal(info.Payload, &p); err != nil {
		t.Fatalf("restored payload: %v", err)
	}
	if p.EventID != res.EventID || p.JobID != res.JobID || p.Queue != res.Queue {
		t.Fatalf("restored payload %+v, want eventId %s jobId %s queue %s", p, res.EventID, res.JobID, res.Queue)
	}
	// The scheduled set of the queue lists it, as the dashboard shows it.
	sched, err := a.Inspector.ListScheduledTasks(res.Queue)
	if err != nil {
		t.Fatalf("ListScheduledTasks: %v", err)
	}
	if !slices.ContainsFunc(sched, func(ti *asynq.TaskInfo) bool { return ti.ID == res.EventID }) {
		t.Fatalf("ListScheduledTasks(%s) lacks %s: %d tasks", res.Queue, res.EventID, len(sched))
	}
	code, st, body, err := s.getEvent(res.EventID)
	if err != nil || code != http.StatusOK || st.State == nil || *st.State != "scheduled" {
		t.Fatalf("GET /api/events after Reconcile: %d %s %v; want 200, scheduled", code, body, err)
	}
	// A second pass has nothing to do.
	if n, err := a.Reconcile(ctx, 0); err != nil || n != 0 {
		t.Fatalf("second Reconcile: %d, %v; want 0, nil", n, err)
	}
	t.Logf("reconcile round trip in %v", time.Since(start).Round(time.Millisecond))
}
