package ops_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// The follow-up of a run through its life as Redis and the job tell it:
// not sent, sent (the task handlers build), archived, gone.
func TestFollowUp(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)
	ev := f.send(t, "job-chain").EventID
	job := testenv.Job(t, f.store, "job-chain")

	get := func(what string) *ops.FollowUpStatus {
		t.Helper()
		j := testenv.Job(t, f.store, "job-chain")
		st, err := o.FollowUp(ctx, j)
		if err != nil || st == nil {
			t.Fatalf("%s: FollowUp %+v, %v", what, st, err)
		}
		if st.TaskID != tasks.FollowUpTaskIDPrefix+ev || st.Queue != tasks.QueueLow || st.EventName != tasks.EventInsightsCompleted || st.MaxRetry != 3 {
			t.Fatalf("%s: %+v, want task %s%s on queue low, budget 3", what, st, tasks.FollowUpTaskIDPrefix, ev)
		}
		return st
	}

	if st := get("before send-completion"); st.State != ops.FollowUpUnsent || st.InRedis() || st.EnqueuedAt != nil {
		t.Fatalf("before send-completion: %+v, want unsent", st)
	}

	// send-completion's task, and the run's record of it.
	task, opts, err := handlers.NewCompletedTask(tasks.CompletedPayload{EventID: ev, JobID: job.ID, SystemID: "sys-1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := asynq.NewClient(f.redis)
	defer c.Close()
	if _, err := c.Enqueue(task, opts...); err != nil {
		t.Fatal(err)
	}
	if st := get("enqueued, not recorded yet"); st.State != "pending" || !st.InRedis() {
		t.Fatalf("enqueued: %+v, want pending", st)
	}
	sentAt := time.Now().UTC().Truncate(time.Millisecond)
	if _, err := f.store.Database().Collection("insights-jobs").UpdateOne(ctx, bson.D{{Key: "id", Value: job.ID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "followUp", Value: store.FollowUp{EventID: tasks.FollowUpTaskIDPrefix + ev, EnqueuedAt: sentAt}}}}}); err != nil {
		t.Fatal(err)
	}
	if st := get("recorded"); st.State != "pending" || st.EnqueuedAt == nil || !st.EnqueuedAt.Equal(sentAt) || st.LastError != nil || st.CompletedAt != nil {
		t.Fatalf("recorded: %+v, want pending, enqueued at %v", st, sentAt)
	}

	if err := f.insp.ArchiveTask(tasks.QueueLow, tasks.FollowUpTaskIDPrefix+ev); err != nil {
		t.Fatal(err)
	}
	if st := get("archived"); st.State != "archived" {
		t.Fatalf("archived: %+v", st)
	}

	// Retention passed, or Redis lost it: the run says it was sent.
	if err := f.insp.DeleteTask(tasks.QueueLow, tasks.FollowUpTaskIDPrefix+ev); err != nil {
		t.Fatal(err)
	}
	if st := get("deleted"); st.State != ops.FollowUpGone || st.InRedis() {
		t.Fatalf("deleted: %+v, want gone", st)
	}

	// No run, no chain; no Redis, an error.
	if st, err := o.FollowUp(ctx, &store.Job{ID: "job-app"}); st != nil || err != nil {
		t.Errorf("job without a run: %+v, %v; want nil, nil", st, err)
	}
	if _, err := ops.New(ops.Config{Store: f.store}).FollowUp(ctx, job); !errors.Is(err, ops.ErrNoRedis) {
		t.Errorf("without Redis: %v, want ErrNoRedis", err)
	}
	down := asynq.NewInspector(asynq.RedisClientOpt{Addr: "127.0.0.1:1", DialTimeout: 200 * time.Millisecond})
	defer down.Close()
	_, err = ops.New(ops.Config{Store: f.store, Inspector: down}).FollowUp(ctx, job)
	if err == nil || errors.Is(err, ops.ErrNoRedis) || err.Error()[:7] != "Redis: " {
		t.Errorf("Redis unreachable: %v, want a Redis failure", err)
	}
}
