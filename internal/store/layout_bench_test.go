package store

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/devstack"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/tasks"
)

// stepsCollection holds layout B's step documents (_id eventId/step).
const stepsCollection = "insights-steps"

// layoutConcurrency is the bench's worker concurrency (bench -c 20).
const layoutConcurrency = 20

// layoutDocs are the pieces every workflow writes, made once.
type layoutDocs struct {
	snap    bms.Snapshot
	result  *insights.Result // process-insights' output
	final   *FinalInsights   // finalInsights
	systems []bms.System
}

// layoutWorkflow runs one workflow's writes, each durable before the next;
// written, when set, is told of each write (collection, _id).
type layoutWorkflow func(ctx context.Context, s *Store, d *layoutDocs, i int, written func(coll *mongo.Collection, id string)) error

// BenchmarkCheckpointLayout measures, on the store alone (no asynq, no
// Redis), the workflows/s ceiling of candidate checkpoint layouts (issue
// 14) on the embedded FerretDB as the service wires it: group commit,
// Sync, Checkpoint and the _id indexes. On FerretDB v1 every update
// re-reads, decodes, re-encodes and rewrites the whole document, while
// small inserts are cheap when batched; which layout to build depends on how
// those costs add up at the real document sizes, so the documents are made
// by the real generators (bmsgen's snapshot, the rules engine's result,
// the handlers' step outputs and progress events).
//
// It is an internal test so that it can send its writes through s.update
// and s.group; it cannot use testenv (which imports this package), so it
// wires the embedded FerretDB from devstack as testenv.StoreConfig does.
//
//	go test -run '^$' -bench BenchmarkCheckpointLayout -benchtime 2000x -count 3 ./internal/store/
func BenchmarkCheckpointLayout(b *testing.B) {
	if os.Getenv("MONGODB_URI") != "" {
		b.Skip("measures the embedded FerretDB (MONGODB_URI is set)")
	}
	dir := b.TempDir()
	m, err := devstack.StartMongo(context.Background(), dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.Close)
	for _, l := range []struct {
		name string
		run  layoutWorkflow
	}{
		{"A", layoutA},
		{"B", func(ctx context.Context, s *Store, d *layoutDocs, i int, w func(*mongo.Collection, string)) error {
			return layoutB(ctx, s, d, i, true, w)
		}},
		{"B2", func(ctx context.Context, s *Store, d *layoutDocs, i int, w func(*mongo.Collection, string)) error {
			return layoutB(ctx, s, d, i, false, w)
		}},
	} {
		b.Run(l.name, func(b *testing.B) { benchLayout(b, m, l.run, false) })
		if l.name == "A" {
			// A as the service runs it: with the jobs' SQLite indexes
			// (jobindex.go), which every job write maintains.
			b.Run("A-indexed", func(b *testing.B) { benchLayout(b, m, l.run, true) })
		}
	}
}

var layoutDBSeq atomic.Int64

func benchLayout(b *testing.B, m *devstack.Mongo, run layoutWorkflow, indexed bool) {
	ctx := context.Background()
	name := fmt.Sprintf("layout%d_%d", time.Now().UnixNano()%1e6, layoutDBSeq.Add(1))
	cfg := Config{URI: m.URI, Database: name, Prepare: m.Prepare, Sync: m.Sync, Checkpoint: m.Checkpoint, HistoryWindow: m.HistoryWindow}
	if indexed {
		cfg.SQLite = m.SQLite
	}
	s, err := Open(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = s.db.Drop(context.Background())
		_ = s.Close(context.Background())
	})
	if err := s.db.CreateCollection(ctx, stepsCollection); err != nil {
		b.Fatal(err)
	}
	if err := m.Prepare(ctx, name); err != nil { // the _id index of insights-steps too
		b.Fatal(err)
	}

	// The documents, as the bench makes them: the systems (bmsgen), one
	// snapshot, and the rules engine's result on that store (no history).
	d := &layoutDocs{systems: bmsgen.Systems()}
	for _, sys := range d.systems {
		if err := s.UpsertSystem(ctx, sys); err != nil {
			b.Fatal(err)
		}
	}
	now := time.Now().UTC()
	d.snap = bmsgen.Snapshot(d.systems[0], 1, now)
	d.result, err = insights.NewRules(s).Generate(ctx, insights.Request{SystemID: d.systems[0].ID, Snapshot: d.snap,
		ContextWindowDays: tasks.DefaultContextWindow, MaxIterations: tasks.DefaultMaxIterations, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	d.final = NewFinalInsights(d.result)

	// b.N jobs as ClaimRun leaves them (queued, the request at the top
	// level), plus one probe job whose workflow runs before the timer to
	// measure the bytes each write stores.
	probe := b.N
	docs := make([]any, 0, 500)
	for i := 0; i <= b.N; i++ {
		docs = append(docs, layoutJob(d, i, now))
		if len(docs) == cap(docs) || i == b.N {
			if _, err := s.jobs.InsertMany(ctx, docs); err != nil {
				b.Fatal(err)
			}
			docs = docs[:0]
		}
	}
	if err := m.Sync(ctx, name); err != nil {
		b.Fatal(err)
	}
	startBytes := docBytes(b, s.jobs, layoutJobID(probe))
	var writes, bytesWritten int
	if err := run(ctx, s, d, probe, func(coll *mongo.Collection, id string) {
		writes++
		bytesWritten += docBytes(b, coll, id)
	}); err != nil {
		b.Fatal(err)
	}
	finalBytes := docBytes(b, s.jobs, layoutJobID(probe))
	if b.N > 1 {
		b.Logf("BSON bytes: process-insights output %d, finalInsights %d, progress events %d, system %d",
			bsonLen(b, d.result), bsonLen(b, d.final), bsonLen(b, bson.D{{Key: "p", Value: layoutSteps(d, layoutRun(d, 0), now)[0].push[0]}})-8,
			docBytes(b, s.systems, d.systems[0].ID))
	}

	var next atomic.Int64
	next.Store(-1)
	errs := make(chan error, layoutConcurrency)
	var wg sync.WaitGroup
	b.ResetTimer()
	for range layoutConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1))
				if i >= b.N {
					return
				}
				if err := run(ctx, s, d, i, nil); err != nil {
					errs <- fmt.Errorf("workflow %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "workflows/s")
	b.ReportMetric(float64(startBytes), "job-start-B")
	b.ReportMetric(float64(finalBytes), "job-final-B")
	b.ReportMetric(float64(writes), "writes/wf")
	b.ReportMetric(float64(bytesWritten), "B-stored/wf")
}

// docBytes is the BSON size of coll's document id.
func docBytes(b *testing.B, coll *mongo.Collection, id string) int {
	b.Helper()
	raw, err := coll.FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Raw()
	if err != nil {
		b.Fatalf("read %s %s: %v", coll.Name(), id, err)
	}
	return len(raw)
}

func bsonLen(b *testing.B, v any) int {
	raw, err := bson.Marshal(v)
	if err != nil {
		b.Fatal(err)
	}
	return len(raw)
}

func layoutJobID(i int) string   { return fmt.Sprintf("bench-%d", i) }
func layoutEventID(i int) string { return fmt.Sprintf("ev-%08d", i) }

func layoutRun(d *layoutDocs, i int) tasks.Run {
	snap := d.snap
	return tasks.Run{EventID: layoutEventID(i), JobID: layoutJobID(i), SystemID: d.systems[i%len(d.systems)].ID,
		Request: &tasks.Request{AnalysisData: &snap}, Priority: tasks.DefaultPriority, Queue: tasks.QueueFor(tasks.DefaultPriority)}
}

func layoutJob(d *layoutDocs, i int, now time.Time) *Job {
	return newJobDoc(layoutRun(d, i), tasks.StatusQueued, now)
}

// layoutStep is one step as the workflow runs it: its output, the job
// fields it sets and its progress events (handlers/workload.go).
type layoutStep struct {
	name   string
	output any
	set    bson.D
	push   []ProgressEvent
}

func layoutSteps(d *layoutDocs, run tasks.Run, now time.Time) []layoutStep {
	started := func(step string) ProgressEvent {
		return ProgressEvent{Timestamp: now, Type: insights.ProgressStatus,
			Data: map[string]any{"message": "Step " + step + " started", "step": step, "attempt": 1}}
	}
	followUp := map[string]any{"eventId": tasks.FollowUpTaskIDPrefix + run.EventID, "enqueuedAt": now}
	return []layoutStep{
		{tasks.StepInitialize, bson.D{{Key: "eventId", Value: run.EventID}, {Key: "queue", Value: run.Queue}, {Key: "priority", Value: run.Priority}},
			bson.D{{Key: "queue", Value: run.Queue}, {Key: "priority", Value: run.Priority}},
			[]ProgressEvent{started(tasks.StepInitialize)}},
		{tasks.StepFetchJob, bson.D{{Key: "systemId", Value: run.SystemID}, {Key: "source", Value: "job"}}, nil,
			[]ProgressEvent{started(tasks.StepFetchJob)}},
		{tasks.StepValidate, bson.D{{Key: "valid", Value: true}}, nil,
			[]ProgressEvent{started(tasks.StepValidate)}},
		{tasks.StepProcessInsights, d.result, nil,
			[]ProgressEvent{started(tasks.StepProcessInsights)}},
		{tasks.StepStoreResults, bson.D{{Key: "healthScore", Value: d.result.HealthScore}, {Key: "status", Value: d.result.Status}, {Key: "storedAt", Value: now}},
			bson.D{{Key: "finalInsights", Value: d.final}, {Key: "partialInsights", Value: nil}, {Key: "status", Value: tasks.StatusCompleted},
				{Key: "completedAt", Value: now}, {Key: "error", Value: nil}},
			[]ProgressEvent{started(tasks.StepStoreResults),
				{Timestamp: now, Type: insights.ProgressStatus, Data: map[string]any{"message": "Analysis completed successfully"}}}},
		{tasks.StepSendCompletion, bson.D{{Key: "followUpEventId", Value: followUp["eventId"]}, {Key: "duplicate", Value: false}},
			bson.D{{Key: "followUp", Value: followUp}},
			[]ProgressEvent{started(tasks.StepSendCompletion)}},
	}
}

func stepState(output any, now time.Time) StepState {
	return StepState{Status: StepCompleted, Runs: 1, Attempt: 1, StartedAt: now, FinishedAt: now, Output: output}
}

// layoutJobUpdate updates job document id, filtered by _id alone (FerretDB).
func (s *Store) layoutJobUpdate(ctx context.Context, id string, update bson.D) error {
	matched, err := s.update(ctx, s.jobs, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}}).SetUpdate(update))
	if err == nil && !matched {
		err = fmt.Errorf("job %s not found", id)
	}
	return err
}

// attemptStart is StartAttempt's update.
func attemptStart(now time.Time, more ...bson.E) bson.D {
	return bson.D{{Key: "$set", Value: append(bson.D{{Key: "updatedAt", Value: now}, {Key: "status", Value: tasks.StatusProcessing}}, more...)},
		{Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}}}
}

// layoutLastInsights is the follow-up's system update (handlers/completed.go).
func (s *Store) layoutLastInsights(ctx context.Context, d *layoutDocs, run tasks.Run, now time.Time) error {
	v := map[string]any{"eventId": run.EventID, "jobId": run.JobID, "healthScore": d.result.HealthScore, "status": d.result.Status,
		"completedAt": now, "hasInsights": true}
	_, err := s.update(ctx, s.systems, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: run.SystemID}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "lastInsights", Value: v}}}}))
	return err
}

// layoutA is today's layout: the attempt's start, then each step's state,
// fields and progress in one update of the job (checkpointUpdate), then
// the system's lastInsights: 8 writes.
func layoutA(ctx context.Context, s *Store, d *layoutDocs, i int, written func(*mongo.Collection, string)) error {
	run, now := layoutRun(d, i), time.Now().UTC()
	if err := s.layoutJobUpdate(ctx, run.JobID, attemptStart(now)); err != nil {
		return err
	}
	if written != nil {
		written(s.jobs, run.JobID)
	}
	for _, st := range layoutSteps(d, run, now) {
		c := Checkpoint{Step: st.name, State: stepState(st.output, now), Set: st.set, Push: st.push}
		if err := s.layoutJobUpdate(ctx, run.JobID, checkpointUpdate(c)); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		if written != nil {
			written(s.jobs, run.JobID)
		}
	}
	if err := s.layoutLastInsights(ctx, d, run, now); err != nil {
		return err
	}
	if written != nil {
		written(s.systems, run.SystemID)
	}
	return nil
}

// layoutB keeps step states in step documents of their own, inserted in
// the committer's bulk writes; the job is updated at the attempt's start,
// at store-results (status, finalInsights and the progress so far) and,
// when followUpInJob, at send-completion (followUp): 3 updates, 6 inserts
// and the system's lastInsights. Without followUpInJob (B2) the follow-up
// is recorded in its step document alone: 2 updates.
func layoutB(ctx context.Context, s *Store, d *layoutDocs, i int, followUpInJob bool, written func(*mongo.Collection, string)) error {
	run, now := layoutRun(d, i), time.Now().UTC()
	steps := s.db.Collection(stepsCollection)
	if err := s.layoutJobUpdate(ctx, run.JobID, attemptStart(now,
		bson.E{Key: "queue", Value: run.Queue}, bson.E{Key: "priority", Value: run.Priority})); err != nil {
		return err
	}
	if written != nil {
		written(s.jobs, run.JobID)
	}
	var progress []ProgressEvent // the progress not yet in the job
	for _, st := range layoutSteps(d, run, now) {
		progress = append(progress, st.push...)
		var jobSet bson.D
		switch st.name {
		case tasks.StepStoreResults:
			jobSet = st.set
		case tasks.StepSendCompletion:
			if followUpInJob {
				jobSet = st.set
			}
		}
		if jobSet != nil {
			u := bson.D{{Key: "$set", Value: append(bson.D{{Key: "updatedAt", Value: now}}, jobSet...)}, pushProgress(progress)}
			if err := s.layoutJobUpdate(ctx, run.JobID, u); err != nil {
				return fmt.Errorf("%s: %w", st.name, err)
			}
			if written != nil {
				written(s.jobs, run.JobID)
			}
			progress = nil
		}
		id := run.EventID + "/" + st.name
		doc := bson.D{{Key: "_id", Value: id}, {Key: "jobId", Value: run.JobID}, {Key: "eventId", Value: run.EventID},
			{Key: "step", Value: st.name}, {Key: "state", Value: stepState(st.output, now)}}
		if jobSet == nil {
			// The step's progress waits here until a job update carries it;
			// B2's followUp stays here.
			if st.name == tasks.StepSendCompletion {
				doc = append(doc, st.set...)
			}
			doc = append(doc, bson.E{Key: "progress", Value: st.push})
		}
		w := &write{coll: steps, model: mongo.NewInsertOneModel().SetDocument(doc)}
		if err := s.group.do(ctx, w); err != nil {
			return fmt.Errorf("%s: insert step: %w", st.name, err)
		}
		if written != nil {
			written(steps, id)
		}
	}
	if err := s.layoutLastInsights(ctx, d, run, now); err != nil {
		return err
	}
	if written != nil {
		written(s.systems, run.SystemID)
	}
	return nil
}
