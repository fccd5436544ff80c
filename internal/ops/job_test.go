package ops_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"

	"go.mongodb.org/mongo-driver/v2/event"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// Job gives the job page and the job's API answer everything from one read
// of the job: the view, the event's status as Status tells it, and the
// follow-up; what Redis cannot tell is an error beside the job.
func TestJob(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var reads atomic.Int64 // finds of the jobs collection
	f.store = testenv.StoreWith(t, func(c *store.Config) {
		c.Monitor = &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
			if e.CommandName == "find" && e.Command.Lookup("find").StringValue() == store.JobsCollection {
				reads.Add(1)
			}
		}}
	})
	f.client = tasks.NewClient(f.redis, tasks.ClientConfig{Jobs: f.store})
	t.Cleanup(func() { f.client.Close() })
	o := f.operator(nil)
	ev := f.send(t, "job-detail").EventID
	f.setFailures(t, "job-detail", 2)

	reads.Store(0)
	d, err := o.Job(ctx, "job-detail")
	if err != nil {
		t.Fatal(err)
	}
	if n := reads.Load(); n != 1 {
		t.Errorf("Job read the jobs collection %d times, want once", n)
	}
	if d.Job == nil || d.Job.ID != "job-detail" || d.Job.Steps == nil || d.EventErr != nil || d.FollowUpErr != nil {
		t.Fatalf("detail %+v: want the job's view and no errors", d)
	}
	// The event's status is Status's answer, but for the job beside it.
	st, err := o.Status(ctx, ev)
	if err != nil {
		t.Fatal(err)
	}
	st.Job = nil
	got, _ := json.Marshal(d.Event)
	want, _ := json.Marshal(st)
	if string(got) != string(want) {
		t.Errorf("event status\n got %s\nwant %s", got, want)
	}
	if d.Event.State == nil || *d.Event.State != "pending" || d.Event.Retried != 2 || d.Event.MaxRetry != 3 {
		t.Errorf("event status %s: want pending, 2 of 3 retries", got)
	}
	if d.FollowUp == nil || d.FollowUp.TaskID != tasks.FollowUpTaskIDPrefix+ev || d.FollowUp.State != ops.FollowUpUnsent {
		t.Errorf("follow-up %+v: want %s%s unsent", d.FollowUp, tasks.FollowUpTaskIDPrefix, ev)
	}

	_, err = o.Job(ctx, "nope")
	wantErr(t, "unknown job", err, ops.ErrNotFound, "job nope not found")
	_, err = ops.New(ops.Config{}).Job(ctx, "job-detail")
	wantErr(t, "Job without a store", err, ops.ErrNoStore, "")

	// Without Redis the job is still shown, with why the rest is not.
	d, err = ops.New(ops.Config{Store: f.store}).Job(ctx, "job-detail")
	if err != nil || d.Job == nil || d.Event != nil || d.FollowUp != nil {
		t.Fatalf("without Redis: %+v, %v; want the job alone", d, err)
	}
	wantErr(t, "event without Redis", d.EventErr, ops.ErrNoRedis, "")
	wantErr(t, "follow-up without Redis", d.FollowUpErr, ops.ErrNoRedis, "")
}
