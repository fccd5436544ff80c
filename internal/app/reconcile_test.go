package app_test

import (
	"context"
	"fmt"
	"github.com/bmsview/insights/internal/bms"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// TestReconcileRestoresTasksRedisLost: Redis loses its data (a restart
// without persistence); every live job's task comes back with its eventId,
// visible to the Inspector, and runs to the end.
func TestReconcileRestoresTasksRedisLost(t *testing.T) {
	opt := testenv.Redis(t, 6).(asynq.RedisClientOpt)
	a, _ := testenv.App(t, map[string]string{
		"REDIS_URL": fmt.Sprintf("redis://%s/%d", opt.Addr, opt.DB), "BACKOFF_SCHEDULE": "1s",
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
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
	e, err := a.NewEngine()
	if err != nil {
		t.Fatal(err)
	}
	w := a.NewWorker(app.WorkerOptions{Engine: e})
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	defer w.Shutdown()
	testenv.WaitFor(t, 60*time.Second, "restored job completes", func() (bool, error) {
		j, err := a.Store.GetJob(ctx, "lost-now")
		return err == nil && j.EventID == now.EventID && j.Steps[tasks.StepSendCompletion].Status == store.StepCompleted, err
	})
}
