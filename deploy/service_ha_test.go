package deploy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/bmsview/insights/web"
)

// runService starts the real service (worker, producer, API) on the Redis
// named by vars and the embedded FerretDB, sends jobs and waits until each
// completed every step once; the API shows each event's asynq state.
func runService(t *testing.T, vars map[string]string, jobs int) *app.App {
	t.Helper()
	vars["MONGODB_URI"] = testenv.MongoURI(t)
	vars["MONGODB_DB_NAME"] = testenv.DBName(t)
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := app.Open(ctx, cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Store.Database().Drop(context.Background()); a.Close() })
	e, _ := a.NewEngine()
	w := a.NewWorker(app.WorkerOptions{Engine: e})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	ws := web.New(web.Config{Store: a.Store, Client: a.Client, Inspector: a.Inspector, RedisConnOpt: a.Redis, APIToken: "tok", Logger: log})
	t.Cleanup(func() { _ = ws.Close() })
	srv := httptest.NewServer(ws.Handler())
	t.Cleanup(srv.Close)

	snap := &tasks.AnalysisData{StateOfCharge: 64, OverallVoltage: 52.1, Current: -6, RemainingCapacity: 128, FullCapacity: 200}
	events := map[string]string{}
	for i := range jobs {
		id := fmt.Sprintf("ha-%d", i)
		res, err := a.Client.TriggerInsights(ctx, tasks.EventData{JobID: id, SystemID: "ha-sys", AnalysisData: snap}, tasks.WithPriority(i%11))
		if err != nil {
			t.Fatal(err)
		}
		events[id] = res.EventID
	}
	for id, ev := range events {
		var j *store.Job
		testenv.WaitFor(t, 60*time.Second, id+" completed", func() (bool, error) {
			var err error
			j, err = a.Store.GetJob(ctx, id)
			return err == nil && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted, err
		})
		for _, s := range tasks.Steps {
			if j.Steps[s].Runs != 1 {
				t.Errorf("%s: step %s ran %d times", id, s, j.Steps[s].Runs)
			}
		}
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/events/"+ev, nil)
		req.Header.Set("Authorization", "Bearer tok")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), `"state":"completed"`) {
			t.Errorf("GET /api/events/%s: %d %s", ev, resp.StatusCode, body)
		}
	}
	return a
}

func TestServiceOnRedisSentinel(t *testing.T) {
	master, sentinels := testenv.StartSentinel(t)
	runService(t, map[string]string{"REDIS_URL": "redis-sentinel://" + strings.Join(sentinels, ",") + "?master=" + master}, 10)
}

func TestServiceOnRedisCluster(t *testing.T) {
	addrs := testenv.StartCluster(t)
	a := runService(t, map[string]string{"REDIS_CLUSTER_ADDRS": strings.Join(addrs, ",")}, 10)
	// The reconciler works on a cluster too: a scheduled job whose task was
	// deleted by hand comes back with its eventId.
	ctx := context.Background()
	at := time.Now().Add(time.Hour).Truncate(time.Second)
	res, err := a.Client.ScheduleInsights(ctx, tasks.EventData{JobID: "ha-later", SystemID: "ha-sys",
		AnalysisData: &tasks.AnalysisData{StateOfCharge: 50}}, at)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Inspector.DeleteTask(res.Queue, res.EventID); err != nil {
		t.Fatal(err)
	}
	if n, err := a.Reconcile(ctx, 0); err != nil || n != 1 {
		t.Fatalf("reconcile: %d %v, want 1", n, err)
	}
	info, err := a.Inspector.GetTaskInfo(res.Queue, res.EventID)
	if err != nil || info.State.String() != "scheduled" || !info.NextProcessAt.Equal(at) {
		t.Fatalf("restored task: %+v %v", info, err)
	}
}
