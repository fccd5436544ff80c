package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/bmsview/insights/tasks"
)

// RunsCollection keeps each job's ended runs, one document per run (`_id`
// its eventId), written when a new run of the job is claimed: the job
// document holds only its current run, so it stays small (on FerretDB an
// update rewrites the whole document), and the job page still shows the
// runs before it.
const RunsCollection = "insights-runs"

// RunRecord is an ended run of a job as it stood when the next run was
// claimed: its outcome, its result and its steps' checkpoints without
// their outputs.
type RunRecord struct {
	EventID  string               `json:"eventId" bson:"_id"`
	JobID    string               `json:"jobId" bson:"jobId"`
	Status   string               `json:"status" bson:"status"`
	Queue    string               `json:"queue,omitempty" bson:"queue,omitempty"`
	Priority int                  `json:"priority" bson:"priority"`
	Attempts int                  `json:"attempts" bson:"attempts"`
	Failures int                  `json:"failures" bson:"failures"`
	Failure  *Failure             `json:"failure,omitempty" bson:"failure,omitempty"`
	Error    *string              `json:"error,omitempty" bson:"error,omitempty"`
	Steps    map[string]StepState `json:"steps" bson:"steps"`
	RerunOf  *RerunOf             `json:"rerunOf,omitempty" bson:"rerunOf,omitempty"`
	// Request is the request the run worked on (a re-run may edit it).
	Request tasks.Request `json:"request" bson:"request"`
	// FinalInsights is the run's result as the job held it (sealed when
	// DATA_ENCRYPTION_KEY is set, as the job's is), so that a new send or
	// a re-run of the job never loses it; nil when the run had none.
	FinalInsights any        `json:"finalInsights,omitempty" bson:"finalInsights,omitempty"`
	CompletedAt   *time.Time `json:"completedAt,omitempty" bson:"completedAt,omitempty"`
	EndedAt       time.Time  `json:"endedAt" bson:"endedAt"` // its job's last change in this run
}

// RerunOf marks a run an operator started from a step of an earlier run
// (POST /api/jobs/{jobId}/rerun): the steps before FromStep that had
// completed in run EventID were kept (StepState.ReusedFrom).
type RerunOf struct {
	EventID  string    `json:"eventId" bson:"eventId"`
	FromStep string    `json:"fromStep" bson:"fromStep"`
	At       time.Time `json:"at" bson:"at"`
}

// archiveRun records cur's current run before a new run replaces it. A run
// recorded already (a claim tried again) is left as it is.
func (s *Store) archiveRun(ctx context.Context, cur *Job) error {
	if cur.EventID == "" {
		return nil // the app's own job, never sent: no run yet
	}
	steps := make(map[string]StepState, len(cur.Steps))
	for name, st := range cur.Steps {
		st.Output = nil // the job page shows a run's steps, not their outputs
		steps[name] = st
	}
	rec := RunRecord{EventID: cur.EventID, JobID: cur.ID, Status: cur.Status, Queue: cur.Queue, Priority: cur.Priority,
		Attempts: cur.Attempts, Failures: cur.Failures, Failure: cur.Failure, Error: cur.Error, Steps: steps,
		RerunOf: cur.RerunOf, Request: cur.Request, FinalInsights: cur.FinalInsights, CompletedAt: cur.CompletedAt, EndedAt: cur.UpdatedAt}
	rec.Request.AnalysisData = nil // the snapshot stays on the job; a re-run never edits it
	err := s.write(ctx, func(ctx context.Context) error { _, err := s.runs.InsertOne(ctx, rec); return err })
	if mongo.IsDuplicateKeyError(err) {
		// Recorded already: by a claim tried again (the same), or, with its
		// failure alone, when the run completed (keepFailure). The rest is
		// written now; a failure recorded there stays.
		set := bson.D{}
		raw, merr := bson.Marshal(rec)
		if merr == nil {
			merr = bson.Unmarshal(raw, &set)
		}
		if merr != nil {
			return fmt.Errorf("record the ended run %s: %w", cur.EventID, merr)
		}
		set = slices.DeleteFunc(set, func(e bson.E) bool { return e.Key == "_id" || (e.Key == "failure" && rec.Failure == nil) })
		_, err = s.update(ctx, s.runs, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: rec.EventID}}).
			SetUpdate(bson.D{{Key: "$set", Value: set}}))
	}
	if err != nil {
		return fmt.Errorf("record the ended run %s: %w", cur.EventID, unavailable(ctx, err))
	}
	return nil
}

// keepFailure records, in job's run record, the failure its run got over
// before it completed (the job's own failure is cleared then).
func (s *Store) keepFailure(ctx context.Context, job *Job) error {
	_, err := s.update(ctx, s.runs, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: job.EventID}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "jobId", Value: job.ID}, {Key: "failure", Value: job.Failure}}}}).
		SetUpsert(true))
	if err != nil {
		return fmt.Errorf("record the failure of run %s: %w", job.EventID, unavailable(ctx, err))
	}
	return nil
}

// PreviousRuns returns the job's ended runs, newest first, at most limit
// (0: 20): each read by its `_id`, the one lookup FerretDB indexes. A run
// ended before runs were recorded is missing.
func (s *Store) PreviousRuns(ctx context.Context, job *Job, limit int) ([]*RunRecord, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if limit <= 0 {
		limit = 20
	}
	ids := slices.Clone(job.PreviousEventIDs)
	slices.Reverse(ids)
	var out []*RunRecord
	for _, id := range ids {
		if len(out) == limit {
			break
		}
		var r RunRecord
		err := s.runs.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&r)
		if errors.Is(err, mongo.ErrNoDocuments) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read run %s: %w", id, unavailable(ctx, err))
		}
		out = append(out, &r)
	}
	return out, nil
}

// reusedSteps are the checkpoints of cur's run that a re-run from fromStep
// keeps: those of the steps before it that completed, marked with the run
// they come from.
func reusedSteps(cur *Job, fromStep string) bson.D {
	steps := bson.D{}
	for _, name := range tasks.Steps {
		if name == fromStep {
			break
		}
		st, ok := cur.Steps[name]
		if !ok || st.Status != StepCompleted {
			continue
		}
		if st.ReusedFrom == "" {
			st.ReusedFrom = cur.EventID
		}
		steps = append(steps, bson.E{Key: name, Value: st})
	}
	return steps
}

// ErrLive: the job has a live run; cancel it first.
var ErrLive = errors.New("job has a live run")

// DeleteJob removes a job that has no live run, and its recorded runs
// (ErrLive otherwise; ErrNotFound when eventID is no longer its run).
func (s *Store) DeleteJob(ctx context.Context, jobID, eventID string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	held, job, err := s.lockedRun(ctx, jobID, eventID)
	if err != nil {
		return fmt.Errorf("delete job %s: %w", jobID, err)
	}
	defer held.unlock()
	if tasks.Live(job.Status) {
		return fmt.Errorf("delete job %s: %w (%s)", jobID, ErrLive, job.Status)
	}
	held.transition()
	q := bson.D{{Key: "_id", Value: job.DocID}}
	if !s.ferret {
		// MongoDB: the run must still be the one checked, atomically.
		q = append(q, bson.E{Key: "eventId", Value: eventID}, bson.E{Key: "status", Value: job.Status})
	}
	var n int64
	err = s.write(ctx, func(ctx context.Context) error {
		res, err := s.jobs.DeleteOne(ctx, q)
		if err == nil {
			n = res.DeletedCount
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("delete job %s: %w", jobID, unavailable(ctx, err))
	}
	if n == 0 {
		return fmt.Errorf("delete job %s: %w", jobID, ErrNotFound)
	}
	for _, id := range job.PreviousEventIDs {
		if err := s.write(ctx, func(ctx context.Context) error {
			_, err := s.runs.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
			return err
		}); err != nil {
			return fmt.Errorf("delete the runs of job %s: %w", jobID, unavailable(ctx, err))
		}
	}
	return nil
}
