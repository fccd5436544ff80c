package store_test

import (
	"context"
	"errors"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// ReloadJob reads a job again by its _id: one of this service's (its
// jobId) and one the BMS app created (an ObjectId _id, found by `id`), with
// what changed since; ErrNotFound once deleted.
func TestReloadJob(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	claim(t, st, "job-ours", "ev-ours")
	appID := bson.NewObjectID()
	if _, err := st.Database().Collection("insights-jobs").InsertOne(ctx, bson.D{{Key: "_id", Value: appID}, {Key: "id", Value: "job-app"},
		{Key: "status", Value: tasks.StatusQueued}, {Key: "systemId", Value: "sys"}}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"job-ours", "job-app"} {
		j := testenv.Job(t, st, id)
		if oid, ok := j.DocID.(bson.ObjectID); id == "job-app" && (!ok || oid != appID) {
			t.Fatalf("the app's job has _id %v, want %v", j.DocID, appID)
		}
		if _, err := st.Database().Collection("insights-jobs").UpdateOne(ctx, bson.D{{Key: "_id", Value: j.DocID}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "status", Value: tasks.StatusProcessing}}}}); err != nil {
			t.Fatal(err)
		}
		got, err := st.ReloadJob(ctx, j)
		if err != nil || got.ID != id || got.Status != tasks.StatusProcessing || got.Steps == nil {
			t.Fatalf("reload %s: %+v, %v", id, got, err)
		}
		if _, err := st.Database().Collection("insights-jobs").DeleteOne(ctx, bson.D{{Key: "_id", Value: j.DocID}}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.ReloadJob(ctx, j); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("reload %s once deleted: %v, want ErrNotFound", id, err)
		}
	}
}

// ReloadLive reads what a live stream shows (status, progress, steps) and
// leaves out the snapshot, the prompt and the report, which make a job
// large and which a followed run does not change.
func TestReloadLiveLeavesOutTheSnapshot(t *testing.T) {
	st := testenv.Store(t)
	ctx := context.Background()
	big := make([]float64, 20000)
	if _, err := st.Database().Collection("insights-jobs").InsertOne(ctx, bson.D{{Key: "_id", Value: "job-big"}, {Key: "id", Value: "job-big"},
		{Key: "status", Value: tasks.StatusProcessing}, {Key: "systemId", Value: "sys"}, {Key: "customPrompt", Value: "be brief"},
		{Key: "analysisData", Value: bson.D{{Key: "cellVoltages", Value: big}}}, {Key: "finalInsights", Value: bson.D{{Key: "rawText", Value: "## report"}}},
		{Key: "progress", Value: bson.A{bson.D{{Key: "type", Value: "status"}, {Key: "data", Value: bson.D{{Key: "message", Value: "go"}}}}}}}); err != nil {
		t.Fatal(err)
	}
	full := testenv.Job(t, st, "job-big")
	if full.AnalysisData == nil || full.FinalInsights == nil {
		t.Fatalf("the job as stored: %+v", full)
	}
	got, err := st.ReloadLive(ctx, full)
	if err != nil {
		t.Fatal(err)
	}
	if got.AnalysisData != nil || got.FinalInsights != nil || got.CustomPrompt != "" {
		t.Errorf("live read carries the snapshot, report or prompt: %v %v %v", got.AnalysisData != nil, got.FinalInsights, got.CustomPrompt)
	}
	if got.ID != "job-big" || got.Status != tasks.StatusProcessing || len(got.Progress) != 1 || got.Steps == nil {
		t.Errorf("live read lacks what a stream shows: %+v", got)
	}
}
