package ops_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// bulkOp runs a bulk action to its end and returns it with its outcomes.
func bulkOp(t *testing.T, o *ops.Operator, req ops.BulkRequest) (*store.BulkOp, []store.BulkOutcome) {
	t.Helper()
	ctx := context.Background()
	op, done, err := o.StartBulk(ctx, req)
	if err != nil {
		t.Fatalf("bulk %s: %v", req.Action, err)
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("bulk %s not done within 60 s", req.Action)
	}
	op, outcomes, err := o.GetBulk(ctx, op.ID, -1)
	if err != nil {
		t.Fatal(err)
	}
	return op, outcomes
}

// failArchived makes jobID's run failed with its task archived: the
// dead-letter state a worker leaves.
func (f *fixture) failArchived(t *testing.T, jobID string) string {
	t.Helper()
	ev := f.send(t, jobID).EventID
	if err := f.store.FailEvent(context.Background(), ev, store.KindTransient, "provider down"); err != nil {
		t.Fatal(err)
	}
	f.setFailures(t, jobID, 3)
	if err := f.insp.ArchiveTask(tasks.QueueDefault, ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestBulkRetryByFilterInChunks(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(func(c *ops.Config) { c.BulkChunkSize = 4 })
	t.Cleanup(o.Close)

	// 6 archived (transient), 5 whose task asynq no longer has (business),
	// 2 live: only the failed ones of each kind are matched.
	archived, lost := map[string]string{}, map[string]string{}
	for i := range 6 {
		id := fmt.Sprintf("arch-%d", i)
		archived[id] = f.failArchived(t, id)
	}
	for i := range 5 {
		id := fmt.Sprintf("lost-%d", i)
		lost[id] = f.failLost(t, id)
	}
	f.send(t, "live-1")
	f.send(t, "live-2")

	failed := store.JobFilter{Status: tasks.StatusFailed}
	for _, c := range []struct {
		filter store.JobFilter
		want   int
	}{
		{failed, 11},
		{store.JobFilter{Status: tasks.StatusFailed, FailureKind: store.KindTransient}, 6},
		{store.JobFilter{Status: tasks.StatusFailed, FailureKind: store.KindBusiness, Message: "analysis refused"}, 5},
		{store.JobFilter{Status: tasks.StatusQueued}, 2},
		{store.JobFilter{Status: tasks.StatusFailed, From: new(time.Now().Add(time.Hour))}, 0},
	} {
		n, err := o.CountBulk(ctx, c.filter)
		if err != nil || n != c.want {
			t.Errorf("dry run %+v: %d (%v), want %d", c.filter, n, err, c.want)
		}
	}

	op, outcomes := bulkOp(t, o, ops.BulkRequest{Action: ops.BulkRetry, Filter: failed, User: "admin"})
	if op.Status != store.BulkDone || op.Matched != 11 || op.Done != 11 || op.Failed != 0 || op.Skipped != 0 || op.Chunks != 3 {
		t.Fatalf("bulk retry: %+v, want done 11 of 11 in 3 chunks", op)
	}
	if len(outcomes) != 11 {
		t.Fatalf("%d outcomes, want 11: %+v", len(outcomes), outcomes)
	}
	for _, out := range outcomes {
		want := "run"
		if _, ok := lost[out.JobID]; ok {
			want = "re-enqueued"
		}
		if out.Outcome != store.OutcomeDone || out.Detail != want {
			t.Errorf("outcome of %s: %+v, want done (%s)", out.JobID, out, want)
		}
	}
	// Each run is on its queue again, pending, with its full budget, the
	// trimmed ones with their own eventId.
	for id, ev := range archived {
		testenv.WaitTask(t, f.insp, tasks.QueueDefault, ev, 5*time.Second, testenv.InState(asynq.TaskStatePending))
		if j := testenv.Job(t, f.store, id); j.Failures != 0 {
			t.Errorf("job %s: failures %d after the bulk retry, want 0", id, j.Failures)
		}
	}
	for _, ev := range lost {
		testenv.WaitTask(t, f.insp, tasks.QueueDefault, ev, 5*time.Second, testenv.InState(asynq.TaskStatePending))
	}

	// The same action again: the jobs still read failed (no worker ran
	// them), but their tasks are pending, so each is skipped, not run twice.
	op, outcomes = bulkOp(t, o, ops.BulkRequest{Action: ops.BulkRetry, Filter: failed})
	if op.Matched != 11 || op.Skipped != 11 || op.Done != 0 {
		t.Fatalf("second bulk retry: %+v, want 11 skipped", op)
	}
	if outcomes[0].Detail == "" {
		t.Errorf("a skipped job says why: %+v", outcomes[0])
	}
}

func TestBulkCancelAndDelete(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)
	t.Cleanup(o.Close)

	live := map[string]string{}
	for i := range 3 {
		id := fmt.Sprintf("q-%d", i)
		live[id] = f.send(t, id).EventID
	}
	f.failLost(t, "gone-1")
	archEv := f.failArchived(t, "gone-2")

	// An empty filter is refused unless the request says all.
	if _, _, err := o.StartBulk(ctx, ops.BulkRequest{Action: ops.BulkDelete}); !errors.Is(err, ops.ErrEmptyFilter) {
		t.Fatalf("bulk delete with an empty filter: %v, want ErrEmptyFilter", err)
	}
	// Delete never touches a live job.
	op, _ := bulkOp(t, o, ops.BulkRequest{Action: ops.BulkDelete, All: true})
	if op.Matched != 5 || op.Done != 2 || op.Skipped != 3 {
		t.Fatalf("bulk delete of everything: %+v, want 2 deleted, 3 live skipped", op)
	}
	for _, id := range []string{"gone-1", "gone-2"} {
		if _, err := f.store.GetJob(ctx, id); err != store.ErrNotFound {
			t.Errorf("job %s after delete: %v, want not found", id, err)
		}
	}
	if _, err := f.insp.GetTaskInfo(tasks.QueueDefault, archEv); err == nil {
		t.Errorf("the deleted job's archived task %s is still in Redis", archEv)
	}

	op, outcomes := bulkOp(t, o, ops.BulkRequest{Action: ops.BulkCancel, Filter: store.JobFilter{Status: tasks.StatusQueued}})
	if op.Matched != 3 || op.Done != 3 {
		t.Fatalf("bulk cancel: %+v %+v, want 3 cancelled", op, outcomes)
	}
	for id, ev := range live {
		if j := testenv.Job(t, f.store, id); j.Status != tasks.StatusCancelled {
			t.Errorf("job %s: %s after the bulk cancel", id, j.Status)
		}
		if _, err := f.insp.GetTaskInfo(tasks.QueueDefault, ev); err == nil {
			t.Errorf("cancelled job %s still has its task", id)
		}
	}
}

// A bulk action whose process died is taken over from its next chunk:
// the chunks done before are not done again.
func TestBulkResumesFromItsNextChunk(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(func(c *ops.Config) { c.BulkChunkSize = 2 })
	t.Cleanup(o.Close)
	var refs []store.JobRef
	for i := range 6 {
		id := fmt.Sprintf("r-%d", i)
		refs = append(refs, store.JobRef{JobID: id, EventID: f.send(t, id).EventID})
	}
	// The record a process leaves when it dies after its first chunk.
	op := &store.BulkOp{ID: "bulk-dead", Action: ops.BulkCancel, Status: store.BulkRunning, CreatedAt: time.Now().UTC()}
	if err := f.store.CreateBulkOp(ctx, op); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := f.store.AddBulkChunk(ctx, op.ID, i, refs[2*i:2*i+2]); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Minute).UTC()
	if _, err := f.store.Database().Collection("bulk-ops").UpdateOne(ctx, bson.D{{Key: "_id", Value: op.ID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "matched", Value: 6}, {Key: "chunks", Value: 3}, {Key: "next", Value: 1},
			{Key: "done", Value: 2}, {Key: "updatedAt", Value: old}}}}); err != nil {
		t.Fatal(err)
	}
	n, err := o.ResumeBulk(ctx)
	if err != nil || n != 1 {
		t.Fatalf("ResumeBulk: %d, %v; want 1", n, err)
	}
	testenv.WaitFor(t, 30*time.Second, "the resumed action done", func() (bool, error) {
		op, _, err := o.GetBulk(ctx, op.ID, 0)
		return err == nil && op.Status == store.BulkDone, err
	})
	op, _, _ = o.GetBulk(ctx, op.ID, 0)
	if op.Done != 6 || op.Next != 3 {
		t.Errorf("resumed action: %+v, want done 6, next 3", op)
	}
	for i, r := range refs {
		want := tasks.StatusCancelled
		if i < 2 {
			want = tasks.StatusQueued // chunk 0 was done before the crash: not again
		}
		if j := testenv.Job(t, f.store, r.JobID); j.Status != want {
			t.Errorf("job %s: %s, want %s", r.JobID, j.Status, want)
		}
	}
	// A second resume finds nothing to take over.
	if n, err := o.ResumeBulk(ctx); err != nil || n != 0 {
		t.Errorf("second ResumeBulk: %d, %v; want 0", n, err)
	}
}

// A bulk action acts only on jobs its filter still selects when it reaches
// them: a failed job completed meanwhile is not deleted by a filter of
// failures, a live job is never cancelled by failureKind=unknown, and
// neither is selected in the first place.
func TestBulkActsOnlyOnJobsThatStillMatch(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.operator(nil)
	t.Cleanup(o.Close)
	bizEv := f.failLost(t, "biz")
	doneEv := f.failLost(t, "done")
	liveEv := f.send(t, "live").EventID
	// "done" was retried and completed since: as a run completed before
	// failures were cleared left it, its failure still there.
	if _, err := f.store.Database().Collection("insights-jobs").UpdateOne(ctx, bson.D{{Key: "_id", Value: "done"}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "status", Value: tasks.StatusCompleted}}}}); err != nil {
		t.Fatal(err)
	}
	business := store.JobFilter{FailureKind: store.KindBusiness}
	unknown := store.JobFilter{FailureKind: store.KindUnknown}
	if n, err := o.CountBulk(ctx, business); err != nil || n != 1 {
		t.Errorf("dry run of business failures: %d (%v), want 1", n, err)
	}
	if n, err := o.CountBulk(ctx, unknown); err != nil || n != 0 {
		t.Errorf("dry run of unknown failures: %d (%v), want 0", n, err)
	}

	// Actions matched before the jobs changed (their processes died after
	// selecting): taken over, they skip what no longer matches.
	old := time.Now().Add(-2 * time.Minute).UTC()
	for _, c := range []struct {
		id     string
		action string
		filter store.JobFilter
		refs   []store.JobRef
	}{
		{"bulk-delete", ops.BulkDelete, business, []store.JobRef{{JobID: "biz", EventID: bizEv}, {JobID: "done", EventID: doneEv}}},
		{"bulk-cancel", ops.BulkCancel, unknown, []store.JobRef{{JobID: "live", EventID: liveEv}}},
	} {
		op := &store.BulkOp{ID: c.id, Action: c.action, Filter: c.filter, Status: store.BulkRunning, Matched: len(c.refs), Chunks: 1,
			CreatedAt: old, UpdatedAt: old}
		if err := f.store.CreateBulkOp(ctx, op); err != nil {
			t.Fatal(err)
		}
		if err := f.store.AddBulkChunk(ctx, op.ID, 0, c.refs); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := o.ResumeBulk(ctx); err != nil || n != 2 {
		t.Fatalf("ResumeBulk: %d, %v; want 2", n, err)
	}
	for _, id := range []string{"bulk-delete", "bulk-cancel"} {
		testenv.WaitFor(t, 30*time.Second, id+" done", func() (bool, error) {
			op, _, err := o.GetBulk(ctx, id, 0)
			return err == nil && op.Status == store.BulkDone, err
		})
	}
	if _, err := f.store.GetJob(ctx, "biz"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the failed business job: %v, want deleted", err)
	}
	if j := testenv.Job(t, f.store, "done"); j.Status != tasks.StatusCompleted {
		t.Errorf("the completed job: %s", j.Status)
	}
	if j := testenv.Job(t, f.store, "live"); j.Status != tasks.StatusQueued {
		t.Errorf("the live job: %s, want queued (not cancelled by failureKind=unknown)", j.Status)
	}
	_, outcomes, err := o.GetBulk(ctx, "bulk-cancel", -1)
	if err != nil || len(outcomes) != 1 || outcomes[0].Outcome != store.OutcomeSkipped {
		t.Errorf("cancel outcomes: %+v, %v; want the live job skipped", outcomes, err)
	}
}
