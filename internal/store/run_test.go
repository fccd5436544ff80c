package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

func claim(t *testing.T, st *store.Store, jobID, eventID string) {
	t.Helper()
	ex, err := st.ClaimRun(context.Background(), tasks.Run{JobID: jobID, EventID: eventID, SystemID: "sys", Queue: "default"})
	if err != nil || ex != nil {
		t.Fatalf("claim %s for %s: existing %+v, %v", eventID, jobID, ex, err)
	}
}

func stepDone(j *store.Job, step string) store.Checkpoint {
	now := time.Now().UTC()
	return store.Checkpoint{Job: j, Step: step, State: store.StepState{Status: store.StepCompleted, Runs: 1, Attempt: 1, StartedAt: now, FinishedAt: now}}
}

// A cancel racing an attempt's start is never lost: once MarkCancelled
// has answered, the job reads cancelled and the attempt, if it started,
// can write nothing more. On FerretDB an update is a read, a change in Go
// and a write-back, so without the run lock the attempt's write-back could
// land on top of the cancel.
func TestCancelRacingAttemptStartIsNeverLost(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	const rounds = 40
	for i := range rounds {
		jobID, eventID := fmt.Sprintf("race-%d", i), fmt.Sprintf("e-race-%d", i)
		claim(t, st, jobID, eventID)
		var (
			wg        sync.WaitGroup
			job       *store.Job
			startErr  error
			cancelErr error
		)
		wg.Add(2)
		go func() {
			defer wg.Done()
			job, _, startErr = st.StartAttempt(ctx, tasks.Run{JobID: jobID, EventID: eventID, Queue: "default"})
		}()
		go func() { defer wg.Done(); cancelErr = st.MarkCancelled(ctx, jobID, eventID) }()
		wg.Wait()
		if cancelErr != nil {
			t.Fatalf("round %d: cancel: %v", i, cancelErr)
		}
		if startErr != nil && !errors.Is(startErr, store.ErrCancelled) {
			t.Fatalf("round %d: start: %v", i, startErr)
		}
		got, err := st.GetJob(ctx, jobID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status != tasks.StatusCancelled {
			t.Fatalf("round %d: the cancel was answered but the job reads %s (attempt started: %v)", i, got.Status, startErr == nil)
		}
		if job != nil {
			if err := st.SaveCheckpoint(ctx, stepDone(job, tasks.StepInitialize)); !errors.Is(err, store.ErrCancelled) {
				t.Fatalf("round %d: a checkpoint of the cancelled run: %v, want ErrCancelled", i, err)
			}
		}
	}
}

// A handler of a cancelled run that is still going (its cancel not yet
// delivered) writes nothing into the run that a new send started: its
// checkpoint is refused, and the new run's steps stay its own.
func TestStaleRunCannotWriteIntoNewRun(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	claim(t, st, "resent", "e-first")
	first, _, err := st.StartAttempt(ctx, tasks.Run{JobID: "resent", EventID: "e-first", Queue: "default"})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.SaveCheckpoint(ctx, stepDone(first, tasks.StepInitialize)); err != nil {
		t.Fatal(err)
	}
	if err := st.MarkCancelled(ctx, "resent", "e-first"); err != nil {
		t.Fatal(err)
	}
	claim(t, st, "resent", "e-second")
	err = st.SaveCheckpoint(ctx, stepDone(first, tasks.StepFetchJob))
	if !errors.Is(err, store.ErrStaleEvent) {
		t.Fatalf("the first run's checkpoint after the second run's claim: %v, want ErrStaleEvent", err)
	}
	j, err := st.GetJob(ctx, "resent")
	if err != nil {
		t.Fatal(err)
	}
	if j.EventID != "e-second" || j.Status != tasks.StatusQueued || len(j.Steps) != 0 {
		t.Fatalf("the new run: eventId %s status %s steps %v; want e-second, queued, no steps", j.EventID, j.Status, j.Steps)
	}
}

// A claim left behind by a process that died between the claim and its job
// write does not block the job for ever: the next send removes it and
// starts the run (before, every send answered "duplicate" with an eventId
// that was never enqueued).
func TestLeftoverClaimIsRepaired(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	claim(t, st, "orphan", "e-1")
	if err := st.MarkCancelled(ctx, "orphan", "e-1"); err != nil {
		t.Fatal(err)
	}
	// What a send that died after its claim leaves: a claim on e-1 for a
	// run e-ghost that the job never recorded and Redis never saw.
	if _, err := st.Database().Collection("run_claims").InsertOne(ctx, bson.D{{Key: "_id", Value: "orphan|e-1"},
		{Key: "next", Value: "e-ghost"}, {Key: "at", Value: time.Now().UTC().Add(-time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	ex, err := st.ClaimRun(ctx, tasks.Run{JobID: "orphan", EventID: "e-2", SystemID: "sys", Queue: "default"})
	if err != nil || ex != nil {
		t.Fatalf("a send after the left-over claim: existing %+v, %v; want a new run", ex, err)
	}
	j, err := st.GetJob(ctx, "orphan")
	if err != nil || j.EventID != "e-2" || j.Status != tasks.StatusQueued {
		t.Fatalf("job after the repair: %+v, %v", j, err)
	}
	// A second send now finds the live run, not the ghost.
	ex, err = st.ClaimRun(ctx, tasks.Run{JobID: "orphan", EventID: "e-3", SystemID: "sys", Queue: "default"})
	if err != nil || ex == nil || ex.EventID != "e-2" {
		t.Fatalf("a second send: existing %+v, %v; want e-2", ex, err)
	}
}

// A task whose payload cannot be read fails its job's run for good, so
// that a new send starts a run instead of answering "duplicate".
func TestFailEventEndsTheRun(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	claim(t, st, "poison", "e-poison")
	if err := st.FailEvent(ctx, "e-poison", store.KindBusiness, "payload is not a valid event"); err != nil {
		t.Fatal(err)
	}
	j, err := st.GetJob(ctx, "poison")
	if err != nil || j.Status != tasks.StatusFailed || j.Failure == nil || j.Failure.Kind != store.KindBusiness ||
		j.Error == nil || *j.Error != "payload is not a valid event" || len(j.Progress) != 1 {
		t.Fatalf("job: %+v, %v", j, err)
	}
	if err := st.FailEvent(ctx, "e-poison", store.KindBusiness, "again"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("failing an ended run again: %v, want ErrNotFound", err)
	}
	if err := st.FailEvent(ctx, "e-unknown", store.KindBusiness, "x"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("an unknown event: %v, want ErrNotFound", err)
	}
	ex, err := st.ClaimRun(ctx, tasks.Run{JobID: "poison", EventID: "e-next", SystemID: "sys", Queue: "default"})
	if err != nil || ex != nil {
		t.Fatalf("a new send after the failed run: existing %+v, %v", ex, err)
	}
}

// A follow-up retried late never replaces the lastInsights of a run that
// completed after it, whether the stored time is ours (a date) or the
// app's (an ISO string).
func TestLastInsightsKeepsTheNewest(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	sys := bmsgen.Systems()[0]
	if err := st.UpsertSystem(ctx, sys); err != nil {
		t.Fatal(err)
	}
	older := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	newer := older.Add(time.Hour)
	if err := st.SetLastInsights(ctx, sys.ID, map[string]any{"jobId": "new", "completedAt": newer}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetLastInsights(ctx, sys.ID, map[string]any{"jobId": "old", "completedAt": older}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.System(ctx, sys.ID); got.LastInsights["jobId"] != "new" {
		t.Fatalf("lastInsights %v: the older follow-up replaced the newer", got.LastInsights)
	}
	// The app's own lastInsights, with an ISO string time.
	if _, err := st.Database().Collection(store.SystemsCollection).UpdateOne(ctx, bson.D{{Key: "_id", Value: sys.ID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "lastInsights", Value: bson.D{{Key: "jobId", Value: "app"},
			{Key: "completedAt", Value: newer.Format("2006-01-02T15:04:05.000Z")}}}}}}); err != nil {
		t.Fatal(err)
	}
	if err := st.SetLastInsights(ctx, sys.ID, map[string]any{"jobId": "old", "completedAt": older}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.System(ctx, sys.ID); got.LastInsights["jobId"] != "app" {
		t.Fatalf("lastInsights %v: the older follow-up replaced the app's newer one", got.LastInsights)
	}
	if err := st.SetLastInsights(ctx, sys.ID, map[string]any{"jobId": "newest", "completedAt": newer.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if got, _ := st.System(ctx, sys.ID); got.LastInsights["jobId"] != "newest" {
		t.Fatalf("lastInsights %v: a newer follow-up was not stored", got.LastInsights)
	}
}

// A read the store cannot make is the store's failure (ErrUnavailable),
// which the runner retries without using the run's budget.
func TestReadFailureIsUnavailable(t *testing.T) {
	// History through the driver: the embedded window reads SQLite itself.
	st := testenv.StoreWith(t, func(c *store.Config) { c.HistoryWindow = nil })
	ctx := context.Background()
	if err := st.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := st.System(ctx, "sys"); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("System on a closed store: %v, want ErrUnavailable", err)
	}
	err := st.EachRecord(ctx, "sys", time.Now().Add(-time.Hour), time.Now(), func(bms.Record) error { return nil })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("EachRecord on a closed store: %v, want ErrUnavailable", err)
	}
	// The caller's own deadline is not the store's failure.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := st.System(cctx, "sys"); errors.Is(err, store.ErrUnavailable) {
		t.Errorf("System with a cancelled ctx: %v, want no ErrUnavailable", err)
	}
}
