package ops_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// These tests cover what web's API tests do not reach: the sentinel errors
// and their messages (web maps them to codes), the lookup of a task in a
// queue of nobody's, a lost task's retry and cancel, the dashboard's budget
// resets and the view of values that cannot be decrypted. No worker runs:
// tasks stay where the test puts them.

type fixture struct {
	redis  asynq.RedisClientOpt
	store  *store.Store
	insp   *asynq.Inspector
	client *tasks.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{redis: testenv.Redis(t), store: testenv.Store(t)}
	f.insp = asynq.NewInspector(f.redis)
	f.client = tasks.NewClient(f.redis, tasks.ClientConfig{Jobs: f.store})
	t.Cleanup(func() { f.client.Close(); f.insp.Close() })
	return f
}

// operator is an Operator on f's stores with MAX_RETRIES 3, changed by
// adjust (nil: none).
func (f *fixture) operator(adjust func(*ops.Config)) *ops.Operator {
	cfg := ops.Config{Store: f.store, Inspector: f.insp, Client: f.client, MaxRetries: 3, Logger: testenv.Logger()}
	if adjust != nil {
		adjust(&cfg)
	}
	return ops.New(cfg)
}

func (f *fixture) send(t *testing.T, jobID string) *tasks.SendResult {
	t.Helper()
	res, err := f.client.TriggerInsights(context.Background(), tasks.EventData{JobID: jobID, SystemID: "sys-1", AnalysisData: testenv.Snapshot()})
	if err != nil {
		t.Fatalf("send %s: %v", jobID, err)
	}
	return res
}

// setFailures writes the job's used budget as the worker would have.
func (f *fixture) setFailures(t *testing.T, jobID string, n int) {
	t.Helper()
	_, err := f.store.Database().Collection("insights-jobs").UpdateOne(context.Background(),
		bson.D{{Key: "id", Value: jobID}}, bson.D{{Key: "$set", Value: bson.D{{Key: "failures", Value: n}}}})
	if err != nil {
		t.Fatal(err)
	}
}

// failLost makes jobID's run failed with its task gone from Redis: the
// state a retry re-enqueues from MongoDB.
func (f *fixture) failLost(t *testing.T, jobID string) string {
	t.Helper()
	ev := f.send(t, jobID).EventID
	if err := f.store.FailEvent(context.Background(), ev, store.KindBusiness, "analysis refused"); err != nil {
		t.Fatal(err)
	}
	if err := f.insp.DeleteTask(tasks.QueueDefault, ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

// wantErr checks that err Is kind and reads msg.
func wantErr(t *testing.T, what string, err, kind error, msg string) {
	t.Helper()
	if !errors.Is(err, kind) || (msg != "" && err.Error() != msg) {
		t.Errorf("%s: error %v, want %v %q", what, err, kind, msg)
	}
}

func TestUnconfigured(t *testing.T) {
	ctx := context.Background()
	none := ops.New(ops.Config{})
	_, err := none.Status(ctx, "e")
	wantErr(t, "Status without a store", err, ops.ErrNoStore, "MongoDB is not configured")
	_, err = none.Retry(ctx, "e")
	wantErr(t, "Retry without a store", err, ops.ErrNoStore, "")
	_, err = none.Cancel(ctx, "e")
	wantErr(t, "Cancel without a store", err, ops.ErrNoStore, "")
	wantErr(t, "ResetBudgets without a store", none.ResetBudgets(ctx, "e"), ops.ErrNoStore, "")
	wantErr(t, "ResetArchivedBudgets without Redis", none.ResetArchivedBudgets(ctx, "default"), ops.ErrNoRedis, "Redis is not configured")

	noRedis := ops.New(ops.Config{Store: testenv.Store(t)})
	_, err = noRedis.Status(ctx, "e")
	wantErr(t, "Status without Redis", err, ops.ErrNoRedis, "Redis is not configured")
}

func TestStatusLooksInEveryQueue(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)

	_, err := o.Status(ctx, "nope")
	wantErr(t, "unknown event", err, ops.ErrNotFound, "event nope not found")

	// A task put by hand in a queue of nobody's, with no job: found, its
	// jobId read from the payload, its budget asynq's own.
	c := asynq.NewClient(f.redis)
	defer c.Close()
	payload, _ := json.Marshal(map[string]string{"jobId": "job-hand"})
	if _, err := c.Enqueue(asynq.NewTask(tasks.EventGenerateInsights, payload), asynq.Queue("manual"), asynq.TaskID("hand-1"), asynq.MaxRetry(7)); err != nil {
		t.Fatal(err)
	}
	st, err := o.Status(ctx, "hand-1")
	if err != nil {
		t.Fatal(err)
	}
	if st.State == nil || *st.State != "pending" || st.Queue != "manual" || st.JobID != "job-hand" || st.Job != nil ||
		st.MaxRetry != 7 || st.EventName != tasks.EventGenerateInsights {
		t.Fatalf("hand task: %+v", st)
	}

	// A negative budget is none.
	ev := f.send(t, "job-budget").EventID
	st, err = f.operator(func(c *ops.Config) { c.MaxRetries = -1 }).Status(ctx, ev)
	if err != nil || st.MaxRetry != 0 || st.Job == nil || st.Job.ID != "job-budget" {
		t.Fatalf("status with MaxRetries -1: %+v %v", st, err)
	}
}

func TestConflictMessages(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)
	ev := f.send(t, "job-wait").EventID
	_, err := o.Retry(ctx, ev)
	wantErr(t, "retry pending", err, ops.ErrConflict, "event "+ev+" is pending: only an archived, retry or scheduled task can be run now")
	if _, err := o.Cancel(ctx, ev); err != nil {
		t.Fatal(err)
	}
	_, err = o.Retry(ctx, ev)
	wantErr(t, "retry cancelled", err, ops.ErrConflict, "job job-wait was cancelled; send the event again to start a new run")

	// A live job whose task Redis lost is the reconciler's, not a retry's.
	ev = f.send(t, "job-live").EventID
	if err := f.insp.DeleteTask(tasks.QueueDefault, ev); err != nil {
		t.Fatal(err)
	}
	_, err = o.Retry(ctx, ev)
	wantErr(t, "retry live without task", err, ops.ErrConflict, "event "+ev+" has no task in Redis and its job is queued: nothing to retry")
}

// A failed run whose task Redis lost: without a producer the retry is
// refused before the budget is touched; with one it is enqueued again with
// its eventId and its full budget.
func TestRetryLostTask(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ev := f.failLost(t, "job-lost")
	f.setFailures(t, "job-lost", 2)

	_, err := f.operator(func(c *ops.Config) { c.Client = nil }).Retry(ctx, ev)
	wantErr(t, "retry without a client", err, ops.ErrNoClient, "the event producer is not configured")
	if j := testenv.Job(t, f.store, "job-lost"); j.Failures != 2 {
		t.Fatalf("failures %d after a refused retry, want 2 (untouched)", j.Failures)
	}

	res, err := f.operator(nil).Retry(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if res.Action != "re-enqueued" || res.State != "pending" || res.Queue != tasks.QueueDefault || res.JobID != "job-lost" || res.PreviousState != "" {
		t.Fatalf("retry: %+v", res)
	}
	if j := testenv.Job(t, f.store, "job-lost"); j.Failures != 0 {
		t.Fatalf("failures %d after the retry, want 0", j.Failures)
	}
	testenv.WaitTask(t, f.insp, tasks.QueueDefault, ev, 5*time.Second, testenv.InState(asynq.TaskStatePending))
}

// After Redis lost all its data (the queue set included), a retry's
// re-enqueued task is seen by the Inspector: the long-lived client
// announces a queue once per process, so Restore announces it itself.
func TestRetryAfterRedisFlushIsVisible(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ev := f.failLost(t, "job-flushed")
	rdb := redis.NewClient(&redis.Options{Addr: f.redis.Addr, DB: f.redis.DB})
	t.Cleanup(func() { rdb.Close() })
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.operator(nil).Retry(ctx, ev); err != nil {
		t.Fatal(err)
	}
	st, err := f.operator(nil).Status(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if st.State == nil || *st.State != "pending" {
		t.Fatalf("state after the retry: %v, want pending (the task visible)", st.State)
	}
	// Every queue is announced again, the follow-ups' low one included.
	queues, err := f.insp.Queues()
	if err != nil || len(queues) != len(tasks.Queues) {
		t.Fatalf("queues after the retry: %v, %v; want all of %v", queues, err, tasks.Queues)
	}
}

// Restore enqueues only the run its job records as current: a producer
// cannot get round Send's claim and checks with it.
func TestRestoreOnlyTheRecordedRun(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ev := f.send(t, "job-recorded").EventID
	for name, run := range map[string]tasks.Run{
		"unknown job":   {JobID: "job-none", EventID: "e-none", Queue: tasks.QueueDefault},
		"another run":   {JobID: "job-recorded", EventID: "e-other", Queue: tasks.QueueDefault},
		"the run again": {JobID: "job-recorded", EventID: ev, Queue: tasks.QueueDefault},
	} {
		_, err := f.client.Restore(ctx, run)
		if name == "the run again" {
			// Recorded, and its task is still there: asynq refuses the id.
			if !errors.Is(err, asynq.ErrTaskIDConflict) {
				t.Errorf("%s: %v, want asynq.ErrTaskIDConflict", name, err)
			}
			continue
		}
		if !errors.Is(err, tasks.ErrNotRecorded) {
			t.Errorf("%s: %v, want tasks.ErrNotRecorded", name, err)
		}
	}
	bare := tasks.NewClient(f.redis, tasks.ClientConfig{})
	t.Cleanup(func() { bare.Close() })
	if _, err := bare.Restore(ctx, tasks.Run{JobID: "job-recorded", EventID: ev, Queue: tasks.QueueDefault}); !errors.Is(err, tasks.ErrNotRecorded) {
		t.Errorf("a client without the store: %v, want tasks.ErrNotRecorded", err)
	}
}

// Cancelling a run whose task Redis lost cancels the job; there is no task
// to delete.
func TestCancelLostTask(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)
	ev := f.send(t, "job-gone").EventID
	if err := f.insp.DeleteTask(tasks.QueueDefault, ev); err != nil {
		t.Fatal(err)
	}
	res, err := o.Cancel(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	if res.JobID != "job-gone" || res.Status != tasks.StatusCancelled || res.TaskDeleted || res.Queue != "" || res.PreviousState != "" {
		t.Fatalf("cancel: %+v", res)
	}
	if j := testenv.Job(t, f.store, "job-gone"); j.Status != tasks.StatusCancelled {
		t.Fatalf("job %s, want cancelled", j.Status)
	}
	// Again: already cancelled, nothing left to do, no error.
	if _, err := o.Cancel(ctx, ev); err != nil {
		t.Fatalf("second cancel: %v", err)
	}
}

// asynqmon's Run all and batch Run: every archived run of the queue gets
// its budget back; a task without a job (a follow-up) and an id nobody
// knows are passed over.
func TestResetArchivedBudgets(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)
	var ids []string
	for _, job := range []string{"job-a1", "job-a2"} {
		ev := f.send(t, job).EventID
		if err := f.insp.ArchiveTask(tasks.QueueDefault, ev); err != nil {
			t.Fatal(err)
		}
		f.setFailures(t, job, 3)
		ids = append(ids, ev)
	}
	c := asynq.NewClient(f.redis)
	defer c.Close()
	if _, err := c.Enqueue(asynq.NewTask(tasks.EventInsightsCompleted, []byte(`{}`)), asynq.Queue(tasks.QueueDefault), asynq.TaskID("no-job")); err != nil {
		t.Fatal(err)
	}
	if err := f.insp.ArchiveTask(tasks.QueueDefault, "no-job"); err != nil {
		t.Fatal(err)
	}

	if err := o.ResetArchivedBudgets(ctx, tasks.QueueDefault); err != nil {
		t.Fatal(err)
	}
	for _, job := range []string{"job-a1", "job-a2"} {
		if j := testenv.Job(t, f.store, job); j.Failures != 0 {
			t.Errorf("%s: failures %d after Run all, want 0", job, j.Failures)
		}
	}

	f.setFailures(t, "job-a2", 3)
	if err := o.ResetBudgets(ctx, "unknown", ids[1]); err != nil {
		t.Fatal(err)
	}
	if j := testenv.Job(t, f.store, "job-a2"); j.Failures != 0 {
		t.Errorf("failures %d after a batch Run, want 0", j.Failures)
	}
}

func TestView(t *testing.T) {
	sealed := map[string]any{"encrypted": true, "algorithm": "aes-256-gcm", "data": "x"}
	job := &store.Job{ID: "job-v", FinalInsights: sealed,
		Steps: map[string]store.StepState{"store-results": {Output: bson.D{{Key: "encrypted", Value: true}}}, "validate": {Output: "ok"}}}
	opened := map[string]any{"healthScore": 92.0}

	o := ops.New(ops.Config{Decrypt: func(any) (any, error) { return opened, nil }, Logger: testenv.Logger()})
	v := o.View(job)
	if got, _ := v.FinalInsights.(map[string]any); got["healthScore"] != 92.0 {
		t.Errorf("finalInsights %v, want decrypted", v.FinalInsights)
	}
	if got, _ := v.Steps["store-results"].Output.(map[string]any); got["healthScore"] != 92.0 {
		t.Errorf("bson.D envelope %v, want decrypted", v.Steps["store-results"].Output)
	}
	if v.Steps["validate"].Output != "ok" || job.FinalInsights.(map[string]any)["encrypted"] != true {
		t.Errorf("plain output %v changed, or the stored job was changed", v.Steps["validate"].Output)
	}

	// A value that does not open (a wrong key) is shown as stored.
	bad := ops.New(ops.Config{Decrypt: func(any) (any, error) { return nil, errors.New("wrong key") }, Logger: testenv.Logger()})
	if got, _ := bad.View(job).FinalInsights.(map[string]any); got["encrypted"] != true {
		t.Errorf("undecryptable finalInsights %v, want as stored", got)
	}

	// Without steps the view has an empty map, so the JSON is {} not null.
	b, _ := json.Marshal(ops.New(ops.Config{}).View(&store.Job{ID: "j"}))
	if !strings.Contains(string(b), `"steps":{}`) {
		t.Errorf("view JSON %s, want \"steps\":{}", b)
	}
	if ops.New(ops.Config{}).View(nil) != nil {
		t.Error("View(nil) is not nil")
	}
}
