package store_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// groupSetup opens the embedded store with its Sync behind a gate and one
// group writer, claims jobs j0..j(n-1) and starts an attempt of each: the
// runs whose checkpoints the tests write.
func groupSetup(t *testing.T, n int) (*store.Store, *testenv.SyncGate, []*store.Job) {
	t.Helper()
	if testenv.StoreConfig(t).Sync == nil {
		t.Skip("group commit runs on the embedded store only (MONGODB_URI is set)")
	}
	g := testenv.NewSyncGate()
	st := testenv.StoreWith(t, func(c *store.Config) { c.Sync, c.GroupWriters = g.Wrap(c.Sync), 1 })
	ctx := context.Background()
	jobs := make([]*store.Job, n)
	for i := range n {
		jobID, eventID := fmt.Sprintf("j%d", i), fmt.Sprintf("e%d", i)
		if _, err := st.ClaimRun(ctx, tasks.Run{JobID: jobID, EventID: eventID, SystemID: "sys", Queue: "default"}); err != nil {
			t.Fatal(err)
		}
		j, _, err := st.StartAttempt(ctx, tasks.Run{JobID: jobID, EventID: eventID, Queue: "default"})
		if err != nil {
			t.Fatal(err)
		}
		jobs[i] = j
	}
	return st, g, jobs
}

func checkpoint(j *store.Job, step string) store.Checkpoint {
	now := time.Now().UTC()
	return store.Checkpoint{Job: j, Step: step,
		State: store.StepState{Status: store.StepCompleted, Runs: 1, Attempt: 1, StartedAt: now, FinishedAt: now}}
}

// save runs SaveCheckpoint in the background; its result arrives on the channel.
func save(st *store.Store, ctx context.Context, c store.Checkpoint) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- st.SaveCheckpoint(ctx, c) }()
	return ch
}

func waitQueued(t *testing.T, st *store.Store, n int) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%d writes queued", n), func() (bool, error) { return st.QueuedWrites() == n, nil })
}

func waitEntered(t *testing.T, g *testenv.SyncGate, n int64) {
	t.Helper()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%d syncs", n), func() (bool, error) { return g.Entered() == n, nil })
}

// holdGroup closes the gate and saves c, which becomes a group held in its
// Sync; it returns the save's result channel and the Sync count before it.
func holdGroup(t *testing.T, st *store.Store, g *testenv.SyncGate, c store.Checkpoint) (<-chan error, int64) {
	t.Helper()
	base := g.Entered()
	g.Close()
	ch := save(st, context.Background(), c)
	waitEntered(t, g, base+1)
	return ch, base
}

// A write is acknowledged only once its group is durable; the writes that
// queue meanwhile commit together, with one Sync; each gets its own result.
func TestGroupCommitAcknowledgesWhenDurable(t *testing.T) {
	st, g, jobs := groupSetup(t, 5)
	ctx := context.Background()
	// j4's run goes on writing after its document is gone: its update
	// matches nothing, in a bulk whose other updates do.
	if _, err := st.Database().Collection(store.JobsCollection).DeleteOne(ctx, bson.D{{Key: "_id", Value: "j4"}}); err != nil {
		t.Fatal(err)
	}
	first, base := holdGroup(t, st, g, checkpoint(jobs[0], "initialize"))
	// Committed to the database, not yet durable: not acknowledged.
	if j, err := st.GetJob(ctx, "j0"); err != nil || j.Steps["initialize"].Status != store.StepCompleted {
		t.Fatalf("j0 before its sync: %+v, %v; want the write applied", j, err)
	}
	select {
	case err := <-first:
		t.Fatalf("SaveCheckpoint returned %v before its group was durable", err)
	default:
	}
	rest := []<-chan error{save(st, ctx, checkpoint(jobs[1], "initialize")), save(st, ctx, checkpoint(jobs[2], "initialize")),
		save(st, ctx, checkpoint(jobs[3], "initialize"))}
	missing := save(st, ctx, checkpoint(jobs[4], "initialize"))
	waitQueued(t, st, 4)
	g.Open()
	if err := <-first; err != nil {
		t.Fatalf("first write: %v", err)
	}
	for i, ch := range rest {
		if err := <-ch; err != nil {
			t.Errorf("write j%d: %v", i+1, err)
		}
	}
	if err := <-missing; !errors.Is(err, store.ErrStaleEvent) {
		t.Errorf("write to a missing job: %v, want ErrStaleEvent (and only that write failed)", err)
	}
	if got := g.Entered() - base; got != 2 {
		t.Errorf("%d syncs for 5 writes, want 2: the four queued writes are one group", got)
	}
}

// A failed Sync fails every write of its group, and only those.
func TestGroupCommitSyncFailureFailsOnlyItsGroup(t *testing.T) {
	st, g, jobs := groupSetup(t, 3)
	ctx := context.Background()
	g.FailNext(1)
	first, _ := holdGroup(t, st, g, checkpoint(jobs[0], "validate"))
	second, third := save(st, ctx, checkpoint(jobs[1], "validate")), save(st, ctx, checkpoint(jobs[2], "validate"))
	waitQueued(t, st, 2)
	g.Open()
	if err := <-first; !errors.Is(err, testenv.ErrInjected) {
		t.Errorf("write in the failed group: %v, want the sync error", err)
	}
	for i, ch := range []<-chan error{second, third} {
		if err := <-ch; err != nil {
			t.Errorf("write j%d in the next group: %v", i+1, err)
		}
	}
}

// A write the server refuses fails alone or takes its bulk's other writes
// with it, but never lets one of them be acknowledged unwritten: FerretDB
// runs a bulk's updates in order, stops at the first error and reports it
// at index 0, whatever the bulk's order or which write it was.
func TestGroupCommitRefusedWriteAcknowledgesNothingUnwritten(t *testing.T) {
	st, g, jobs := groupSetup(t, 3)
	ctx := context.Background()
	first, _ := holdGroup(t, st, g, checkpoint(jobs[0], "validate"))
	refused := make(chan error, 1)
	go func() {
		refused <- st.RawJobUpdate(ctx, "j1", bson.D{{Key: "$inc", Value: bson.D{{Key: "eventId", Value: 1}}}})
	}()
	waitQueued(t, st, 1)
	after := save(st, ctx, checkpoint(jobs[2], "validate"))
	waitQueued(t, st, 2)
	g.Open()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-refused; err == nil {
		t.Error("$inc of a string field was acknowledged")
	}
	if err := <-after; err == nil {
		j, err := st.GetJob(ctx, "j2")
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := j.Steps["validate"]; !ok {
			t.Errorf("j2's checkpoint was acknowledged but is not in the store: %+v", j.Steps)
		}
	}
}

// A write whose caller gave up before its group started is not written.
func TestGroupCommitSkipsAbandonedWrite(t *testing.T) {
	st, g, jobs := groupSetup(t, 3)
	ctx := context.Background()
	first, _ := holdGroup(t, st, g, checkpoint(jobs[0], "fetch-job"))
	cctx, cancel := context.WithCancel(ctx)
	abandoned := save(st, cctx, checkpoint(jobs[1], "fetch-job"))
	waitQueued(t, st, 1)
	cancel()
	if err := <-abandoned; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned write: %v, want context.Canceled", err)
	}
	g.Open()
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	// Queued after the abandoned one: once it is acknowledged, the abandoned
	// one has been passed over.
	if err := <-save(st, ctx, checkpoint(jobs[2], "fetch-job")); err != nil {
		t.Fatal(err)
	}
	j, err := st.GetJob(ctx, "j1")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := j.Steps["fetch-job"]; ok {
		t.Errorf("the abandoned checkpoint was written: %+v", j.Steps)
	}
}

// Racing upserts of new _ids all succeed and are all in the store: FerretDB's
// upsert is a find then an insert, so all but one insert of an _id hit the
// unique index, and the store tries those again, as updates. Several _ids
// race at once, so a group's bulk mixes them: a bulk that stops at its
// first error must not acknowledge the upserts it never ran.
func TestRacingUpsertsOfNewDocument(t *testing.T) {
	for _, mode := range []struct {
		name   string
		adjust func(*store.Config)
	}{
		{"direct", func(c *store.Config) { c.Sync = nil }},
		{"grouped", nil},
	} {
		t.Run(mode.name, func(t *testing.T) {
			st := testenv.StoreWith(t, mode.adjust)
			ctx := context.Background()
			const writers, systems = 24, 6
			for round := range 10 {
				id := func(i int) string { return fmt.Sprintf("sys-race-%d-%d", round, i%systems) }
				errs := make(chan error, writers)
				for i := range writers {
					go func() { errs <- st.UpsertSystem(ctx, bms.System{ID: id(i), LastInsights: map[string]any{"n": i}}) }()
				}
				for range writers {
					if err := <-errs; err != nil {
						t.Fatalf("round %d: %v", round, err)
					}
				}
				for i := range systems {
					sys, err := st.System(ctx, id(i))
					if err != nil || sys == nil {
						t.Fatalf("round %d: %s, acknowledged, is not in the store: %v", round, id(i), err)
					}
					if sys.LastInsights["n"] == nil {
						t.Errorf("round %d: %s has no lastInsights: %+v", round, id(i), sys)
					}
				}
			}
		})
	}
}

// Close gives up when its ctx ends while a group waits on its Sync, and the
// held write is still acknowledged once the Sync returns.
func TestCloseBoundedByContext(t *testing.T) {
	st, g, jobs := groupSetup(t, 1)
	ctx := context.Background()
	held, _ := holdGroup(t, st, g, checkpoint(jobs[0], "initialize"))
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := st.Close(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Close with a group held: %v, want context.Canceled", err)
	}
	g.Open()
	if err := <-held; err != nil {
		t.Errorf("held write: %v", err)
	}
}
