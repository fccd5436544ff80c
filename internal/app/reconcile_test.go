package app_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// TestReconcileRestoresTasksRedisLost: Redis loses its data (a restart
// without persistence); every live job's task comes back with its eventId,
// visible to the Inspector, and runs to the end.
func TestReconcileRestoresTasksRedisLost(t *testing.T) {
	a, opt := reconcileApp(t)
	ctx := context.Background()

	snap := &tasks.AnalysisData{StateOfCharge: bms.F(70), OverallVoltage: bms.F(52), Current: bms.F(-5), RemainingCapacity: bms.F(140), FullCapacity: bms.F(200)}
	now, err := a.Client.TriggerInsights(ctx, tasks.EventData{JobID: "lost-now", SystemID: "s1", AnalysisData: snap})
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	later, err := a.Client.ScheduleInsights(ctx, tasks.EventData{JobID: "lost-later", SystemID: "s1", AnalysisData: snap}, at)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing is lost yet: the reconciler leaves present tasks alone.
	if n, err := a.Reconcile(ctx, 0); err != nil || n != 0 {
		t.Fatalf("reconcile with tasks present: %d %v", n, err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: opt.Addr, DB: opt.DB})
	defer rdb.Close()
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	// Jobs unchanged for less than the quiet period are left alone.
	if n, _ := a.Reconcile(ctx, time.Hour); n != 0 {
		t.Fatalf("reconciled %d recent jobs, want 0", n)
	}
	n, err := a.Reconcile(ctx, 0)
	if err != nil || n != 2 {
		t.Fatalf("reconcile: %d %v, want 2", n, err)
	}
	info, err := a.Inspector.GetTaskInfo(later.Queue, later.EventID)
	if err != nil || info.State != asynq.TaskStateScheduled || !info.NextProcessAt.Equal(at) {
		t.Fatalf("scheduled task back: %+v %v, want scheduled at %v", info, err, at)
	}
	pending, err := a.Inspector.ListPendingTasks(now.Queue)
	if err != nil || len(pending) != 1 || pending[0].ID != now.EventID {
		t.Fatalf("pending after reconcile: %v %v, want %s", pending, err, now.EventID)
	}
	queues, _ := a.Inspector.Queues()
	if len(queues) == 0 {
		t.Error("queues not announced again: the dashboard would not see the tasks")
	}
	startWorker(t, a, app.WorkerOptions{})
	testenv.WaitFor(t, 60*time.Second, "restored job completes", func() (bool, error) {
		j, err := a.Store.GetJob(ctx, "lost-now")
		return err == nil && j.EventID == now.EventID && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted, err
	})
}

// TestReconcilePagesAndFinishesFollowUps: the reconciler reads every stale
// live job, not a first page of 1000, and a completed job whose follow-up
// was still to be sent when Redis lost its data gets it sent, once.
func TestReconcilePagesAndFinishesFollowUps(t *testing.T) {
	a, opt := reconcileApp(t)
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: opt.Addr, DB: opt.DB})
	defer rdb.Close()

	// A run completes, then loses its follow-up record and Redis its data.
	w := startWorker(t, a, app.WorkerOptions{})
	snap := &tasks.AnalysisData{StateOfCharge: bms.F(70), OverallVoltage: bms.F(52), Current: bms.F(-5)}
	sent, err := a.Client.TriggerInsights(ctx, tasks.EventData{JobID: "follow-up-lost", SystemID: "s1", AnalysisData: snap})
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 60*time.Second, "the run completes", func() (bool, error) {
		j, err := a.Store.GetJob(ctx, "follow-up-lost")
		return err == nil && j.FollowUp != nil, err
	})
	jobs := a.Store.Database().Collection(store.JobsCollection)
	if _, err := jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: "follow-up-lost"}}, bson.D{
		{Key: "$unset", Value: bson.D{{Key: "steps.send-completion", Value: ""}}},
		{Key: "$set", Value: bson.D{{Key: "followUp", Value: nil}}}}); err != nil {
		t.Fatal(err)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}

	// 1,005 live jobs whose tasks are gone, more than any first page.
	old := time.Now().Add(-time.Hour).UTC()
	var docs []any
	for i := range 1005 {
		id := fmt.Sprintf("lost-%04d", i)
		docs = append(docs, bson.D{{Key: "_id", Value: id}, {Key: "id", Value: id}, {Key: "status", Value: tasks.StatusQueued},
			{Key: "eventId", Value: "ev-" + id}, {Key: "queue", Value: "low"}, {Key: "priority", Value: 1}, {Key: "systemId", Value: "s1"},
			{Key: "createdAt", Value: old}, {Key: "updatedAt", Value: old}})
	}
	if _, err := jobs.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	w.Shutdown() // the 1,005 stay queued: only counted here
	n, err := a.Reconcile(ctx, 0)
	if err != nil || n != 1006 {
		t.Fatalf("reconciled %d (%v), want 1005 live jobs and the completed one", n, err)
	}
	if size, _ := a.Inspector.GetQueueInfo("low"); size == nil || size.Size < 1005 {
		t.Fatalf("queue low after reconcile: %+v", size)
	}
	startWorker(t, a, app.WorkerOptions{})
	testenv.WaitFor(t, 60*time.Second, "the follow-up is sent again", func() (bool, error) {
		j, err := a.Store.GetJob(ctx, "follow-up-lost")
		if err != nil || j.FollowUp == nil {
			return false, err
		}
		_, err = a.Inspector.GetTaskInfo("low", tasks.FollowUpTaskIDPrefix+sent.EventID)
		return err == nil, nil
	})
	j, _ := a.Store.GetJob(ctx, "follow-up-lost")
	if r := j.Steps[tasks.StepProcessInsights].Runs; r != 1 || j.Steps[tasks.StepSendCompletion].Runs != 1 || j.Status != tasks.StatusCompleted {
		t.Fatalf("process-insights ran %d times, send-completion %d, status %s: want 1, 1, completed", r, j.Steps[tasks.StepSendCompletion].Runs, j.Status)
	}
}

// startWorker starts a worker with options o (no engine: the app's own),
// shut down when the test ends (or earlier by the caller).
func startWorker(t *testing.T, a *app.App, o app.WorkerOptions) *handlers.Worker {
	t.Helper()
	if o.Engine == nil {
		e, err := a.NewEngine()
		if err != nil {
			t.Fatal(err)
		}
		o.Engine = e
	}
	w, err := a.NewWorker(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Shutdown)
	return w
}

// reconcileApp is the app on the reconciler tests' own Redis database,
// with no worker running.
func reconcileApp(t *testing.T) (*app.App, asynq.RedisClientOpt) {
	t.Helper()
	opt := testenv.RedisFor(t, "reconcile")
	a, _ := testenv.App(t, map[string]string{
		"REDIS_URL": fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB), "BACKOFF_SCHEDULE": "1s",
	}, testenv.Logger())
	return a, opt
}

// TestReconcileStopsAtRedisOutage: while Redis answers LOADING (restarted,
// its data not yet loaded), nothing is known of the tasks: the reconciler
// re-enqueues nothing, stops at the first job with an error that names
// Redis's outage, and the next pass, Redis back, finds the task present.
func TestReconcileStopsAtRedisOutage(t *testing.T) {
	opt := testenv.RedisFor(t, "reconcile")
	proxy := testenv.NewRedisProxy(t, opt.Addr)
	a, _ := testenv.App(t, map[string]string{
		"REDIS_URL": fmt.Sprintf("redis://%s/%d", proxy.Addr, opt.DB), "BACKOFF_SCHEDULE": "1s",
	}, testenv.Logger())
	ctx := context.Background()
	snap := &tasks.AnalysisData{StateOfCharge: bms.F(70), Current: bms.F(-5)}
	for _, id := range []string{"loading-1", "loading-2"} {
		if _, err := a.Client.TriggerInsights(ctx, tasks.EventData{JobID: id, SystemID: "s1", AnalysisData: snap}); err != nil {
			t.Fatal(err)
		}
	}
	proxy.SetLoading(true)
	n, err := a.Reconcile(ctx, 0)
	if name, ok := outage.Of(err); n != 0 || !ok || name != outage.Redis {
		t.Fatalf("reconcile while Redis loads: %d re-enqueued, err %v; want none and Redis's outage", n, err)
	}
	proxy.SetLoading(false)
	if n, err := a.Reconcile(ctx, 0); n != 0 || err != nil {
		t.Fatalf("reconcile once Redis is back: %d %v, want 0 (the tasks are there)", n, err)
	}
}
