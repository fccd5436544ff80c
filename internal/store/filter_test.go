package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// filterJobs are jobs in the states a filter must tell apart, stored as
// documents: live, completed (one with the failure of an attempt it got
// over, as a run completed before failures were cleared left it), failed
// with a failure of each shape, failed by the BMS app (an error, no
// failure), cancelled after a failure, and an app job with an ObjectId _id.
func filterJobs(now time.Time) []*store.Job {
	msg := func(s string) *string { return &s }
	at := func(d time.Duration) time.Time { return now.Add(d).UTC().Truncate(time.Millisecond) }
	biz := &store.Failure{Kind: store.KindBusiness, Message: "analysis refused", Step: tasks.StepValidate, At: at(0)}
	jobs := []*store.Job{
		{ID: "live-scheduled", Status: tasks.StatusScheduled, EventID: "e1"},
		{ID: "live-queued", Status: tasks.StatusQueued, EventID: "e2"},
		{ID: "completed", Status: tasks.StatusCompleted, EventID: "e3"},
		{ID: "completed-stale-failure", Status: tasks.StatusCompleted, EventID: "e4", Failure: biz},
		{ID: "failed-business", Status: tasks.StatusFailed, EventID: "e5", Failure: biz, Error: msg("analysis refused")},
		{ID: "failed-transient", Status: tasks.StatusFailed, EventID: "e6", SystemID: "sys-2",
			Failure: &store.Failure{Kind: store.KindTransient, Message: "provider down", Step: tasks.StepProcessInsights, At: at(0)}, Error: msg("provider down")},
		{ID: "failed-by-app", Status: tasks.StatusFailed, Error: msg("analysis refused")},
		{ID: "cancelled-after-failure", Status: tasks.StatusCancelled, EventID: "e8", Failure: biz},
		{DocID: bson.NewObjectID(), ID: "app-failed", Status: tasks.StatusFailed, Error: msg("quota")},
	}
	for i, j := range jobs {
		if j.SystemID == "" {
			j.SystemID = "sys-1"
		}
		j.CreatedAt, j.UpdatedAt = at(time.Duration(i)*time.Minute), at(time.Duration(i)*time.Minute+time.Second)
		j.Progress, j.Steps = []store.ProgressEvent{}, map[string]store.StepState{}
		if j.DocID == nil {
			j.DocID = j.ID
		}
	}
	return jobs
}

// TestFilterMeansWhatItSays: a failure filter (kind, step, message)
// selects failed jobs only, the same jobs in the list, the count, a bulk
// action's selection, the failures' groups and JobFilter.Matches (which a
// bulk action checks again when it reaches a job), on the embedded
// store's SQLite indexes and on plain finds (MongoDB's path) alike.
func TestFilterMeansWhatItSays(t *testing.T) {
	for _, c := range []struct {
		name   string
		adjust func(*store.Config)
	}{
		{"indexed", nil},
		{"finds", func(c *store.Config) { c.SQLite = nil }},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := testenv.StoreWith(t, c.adjust)
			ctx := context.Background()
			now := time.Now()
			jobs := filterJobs(now)
			for _, j := range jobs {
				if _, err := s.Database().Collection(store.JobsCollection).InsertOne(ctx, j); err != nil {
					t.Fatal(err)
				}
			}
			failed := []string{"failed-business", "failed-transient", "failed-by-app", "app-failed"}
			for _, tc := range []struct {
				name string
				f    store.JobFilter
				want []string
			}{
				{"kind unknown: failed without a failure, never live or completed", store.JobFilter{FailureKind: store.KindUnknown}, []string{"failed-by-app", "app-failed"}},
				{"kind business: not the completed job nor the cancelled one", store.JobFilter{FailureKind: store.KindBusiness}, []string{"failed-business"}},
				{"step", store.JobFilter{Step: tasks.StepValidate}, []string{"failed-business"}},
				{"message: a failure's or an app's error", store.JobFilter{Message: "analysis refused"}, []string{"failed-business", "failed-by-app"}},
				{"kind with status failed", store.JobFilter{Status: tasks.StatusFailed, FailureKind: store.KindTransient}, []string{"failed-transient"}},
				{"kind with another status selects nothing", store.JobFilter{Status: tasks.StatusCompleted, FailureKind: store.KindBusiness}, nil},
				{"status", store.JobFilter{Status: tasks.StatusFailed}, failed},
				{"system", store.JobFilter{SystemID: "sys-2"}, []string{"failed-transient"}},
				{"from, to", store.JobFilter{From: new(jobs[2].UpdatedAt), To: new(jobs[4].UpdatedAt)}, []string{"completed", "completed-stale-failure"}},
				{"empty: every job", store.JobFilter{}, ids(jobs)},
			} {
				t.Run(tc.name, func(t *testing.T) {
					want := slices.Sorted(slices.Values(tc.want))
					list, err := s.ListJobs(ctx, store.JobFilter{Status: tc.f.Status, SystemID: tc.f.SystemID, FailureKind: tc.f.FailureKind,
						Step: tc.f.Step, Message: tc.f.Message, From: tc.f.From, To: tc.f.To, Limit: 500})
					if err != nil {
						t.Fatal(err)
					}
					if got := slices.Sorted(slices.Values(ids(list))); !slices.Equal(got, want) {
						t.Errorf("ListJobs: %v, want %v", got, want)
					}
					if n, err := s.CountJobs(ctx, tc.f); err != nil || int(n) != len(want) {
						t.Errorf("CountJobs: %d (%v), want %d", n, err, len(want))
					}
					var refs []string
					if err := s.EachJobRef(ctx, tc.f, func(r store.JobRef) error { refs = append(refs, r.JobID); return nil }); err != nil {
						t.Fatal(err)
					}
					if slices.Sort(refs); !slices.Equal(refs, want) {
						t.Errorf("EachJobRef: %v, want %v", refs, want)
					}
					var matched []string
					for _, j := range jobs {
						if tc.f.Matches(j) {
							matched = append(matched, j.ID)
						}
					}
					if slices.Sort(matched); !slices.Equal(matched, want) {
						t.Errorf("Matches: %v, want %v", matched, want)
					}
					groups, err := s.FailureGroups(ctx, tc.f)
					if err != nil {
						t.Fatal(err)
					}
					n := 0
					for _, g := range groups {
						n += g.Count
					}
					wantFailed := 0
					for _, id := range want {
						if slices.Contains(failed, id) {
							wantFailed++
						}
					}
					if tc.f.Status == "" || tc.f.Status == tasks.StatusFailed {
						if n != wantFailed {
							t.Errorf("FailureGroups count %d jobs, want %d: %+v", n, wantFailed, groups)
						}
					}
				})
			}
			// Newest first, paged.
			page, err := s.ListJobs(ctx, store.JobFilter{Limit: 3, Offset: 2})
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(page); !slices.Equal(got, []string{"failed-by-app", "failed-transient", "failed-business"}) {
				t.Errorf("page 2 of 3: %v", got)
			}
			counts, err := s.CountByStatus(ctx)
			if err != nil || counts[tasks.StatusFailed] != 4 || counts[tasks.StatusCompleted] != 2 || counts[tasks.StatusScheduled] != 1 {
				t.Errorf("CountByStatus: %v, %v", counts, err)
			}
			// The app's job with an ObjectId _id is found by its id.
			if j, err := s.GetJob(ctx, "app-failed"); err != nil || j.Error == nil || *j.Error != "quota" {
				t.Errorf("GetJob of the app's job: %+v, %v", j, err)
			}
			if j, err := s.GetJobByEvent(ctx, "e6"); err != nil || j.ID != "failed-transient" {
				t.Errorf("GetJobByEvent: %+v, %v", j, err)
			}
			if _, err := s.GetJobByEvent(ctx, "nope"); err != store.ErrNotFound {
				t.Errorf("GetJobByEvent of no job: %v", err)
			}
			// The reconciler: the live jobs and the completed ones without
			// a follow-up, quiet since before.
			var stale []string
			if err := s.EachStale(ctx, now.Add(time.Hour), func(j *store.Job) error { stale = append(stale, j.ID); return nil }); err != nil {
				t.Fatal(err)
			}
			slices.Sort(stale)
			if want := []string{"completed", "completed-stale-failure", "live-queued", "live-scheduled"}; !slices.Equal(stale, want) {
				t.Errorf("EachStale: %v, want %v", stale, want)
			}
		})
	}
}

func ids(jobs []*store.Job) []string {
	var out []string
	for _, j := range jobs {
		out = append(out, j.ID)
	}
	return out
}

// TestCompletedRunClearsItsFailure: a run that failed, was retried and
// completed has no failure (a filter of failures never selects it); its run
// record keeps the failure, and keeps it once the next run archives it.
func TestCompletedRunClearsItsFailure(t *testing.T) {
	s := testenv.Store(t)
	ctx := context.Background()
	run := tasks.Run{EventID: "ev-1", JobID: "job-1", SystemID: "sys-1", Request: &tasks.Request{AnalysisData: testenv.Snapshot()},
		Queue: tasks.QueueDefault, ProcessAt: time.Now()}
	if _, err := s.ClaimRun(ctx, run); err != nil {
		t.Fatal(err)
	}
	job, _, err := s.StartAttempt(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	fl := store.Failure{Kind: store.KindTransient, Message: "provider down", Step: tasks.StepProcessInsights, At: time.Now().UTC().Truncate(time.Millisecond)}
	if err := s.SaveCheckpoint(ctx, store.Checkpoint{Job: job, Set: bson.D{{Key: "status", Value: tasks.StatusRetrying},
		{Key: "failure", Value: fl}, {Key: "error", Value: fl.Message}, {Key: "failures", Value: 1}}}); err != nil {
		t.Fatal(err)
	}
	job, _, err = s.StartAttempt(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if job.Failure == nil {
		t.Fatal("the retried attempt does not see its run's failure")
	}
	if err := s.SaveCheckpoint(ctx, store.Checkpoint{Job: job, Step: tasks.StepStoreResults, State: store.StepState{Status: store.StepCompleted},
		Set: bson.D{{Key: "status", Value: tasks.StatusCompleted}, {Key: "error", Value: nil}}}); err != nil {
		t.Fatal(err)
	}
	got := testenv.Job(t, s, "job-1")
	if got.Status != tasks.StatusCompleted || got.Failure != nil {
		t.Fatalf("completed job: status %s, failure %+v; want completed without a failure", got.Status, got.Failure)
	}
	if n, err := s.CountJobs(ctx, store.JobFilter{FailureKind: store.KindTransient}); err != nil || n != 0 {
		t.Errorf("a filter of transient failures counts %d (%v), want 0", n, err)
	}
	var rec store.RunRecord
	if err := s.Database().Collection(store.RunsCollection).FindOne(ctx, bson.D{{Key: "_id", Value: "ev-1"}}).Decode(&rec); err != nil {
		t.Fatalf("the run's record: %v", err)
	}
	if rec.Failure == nil || rec.Failure.Message != fl.Message {
		t.Errorf("the run's record keeps no failure: %+v", rec)
	}
	// The next run archives this one whole, its failure kept.
	run2 := run
	run2.EventID = "ev-2"
	if _, err := s.ClaimRun(ctx, run2); err != nil {
		t.Fatal(err)
	}
	prev, err := s.PreviousRuns(ctx, testenv.Job(t, s, "job-1"), 0)
	if err != nil || len(prev) != 1 {
		t.Fatalf("previous runs: %+v, %v", prev, err)
	}
	if p := prev[0]; p.Status != tasks.StatusCompleted || p.Failure == nil || p.Failure.Kind != store.KindTransient || p.Steps[tasks.StepStoreResults].Status != store.StepCompleted {
		t.Errorf("archived run: %+v; want completed with its failure and steps", p)
	}
}
