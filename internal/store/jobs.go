package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bmsview/insights/tasks"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Job is one insights_jobs document (DESIGN.md section 7).
type Job struct {
	ID          string               `json:"jobId" bson:"_id"`
	EventID     string               `json:"eventId" bson:"eventId"`
	EventName   string               `json:"eventName" bson:"eventName"`
	SystemID    string               `json:"systemId" bson:"systemId"`
	Request     *tasks.Request       `json:"request,omitempty" bson:"request,omitempty"`
	Priority    int                  `json:"priority" bson:"priority"`
	Queue       string               `json:"queue" bson:"queue"`
	ProcessAt   *time.Time           `json:"processAt,omitempty" bson:"processAt,omitempty"`
	Status      string               `json:"status" bson:"status"`
	Attempts    int                  `json:"attempts" bson:"attempts"`
	Failures    int                  `json:"failures" bson:"failures"` // failures of the current run: the retry budget used
	Steps       map[string]StepState `json:"steps" bson:"steps"`
	Result      any                  `json:"result,omitempty" bson:"result,omitempty"`
	Error       *JobError            `json:"error,omitempty" bson:"error,omitempty"`
	FollowUp    *FollowUp            `json:"followUp,omitempty" bson:"followUp,omitempty"`
	CreatedAt   time.Time            `json:"createdAt" bson:"createdAt"`
	UpdatedAt   time.Time            `json:"updatedAt" bson:"updatedAt"`
	CompletedAt *time.Time           `json:"completedAt,omitempty" bson:"completedAt,omitempty"`
}

// StepState is one step's checkpoint.
type StepState struct {
	Status     string     `json:"status" bson:"status"` // completed | failed | sleeping
	Runs       int        `json:"runs" bson:"runs"`
	Attempt    int        `json:"attempt" bson:"attempt"`
	StartedAt  time.Time  `json:"startedAt" bson:"startedAt"`
	FinishedAt time.Time  `json:"finishedAt" bson:"finishedAt"`
	DurationMs int64      `json:"durationMs" bson:"durationMs"`
	Error      string     `json:"error,omitempty" bson:"error,omitempty"`
	Output     any        `json:"output,omitempty" bson:"output,omitempty"`
	SleepUntil *time.Time `json:"sleepUntil,omitempty" bson:"sleepUntil,omitempty"`
}

// Step statuses.
const (
	StepCompleted = "completed"
	StepFailed    = "failed"
	StepSleeping  = "sleeping"
)

// JobError is the job's last failure.
type JobError struct {
	Kind    string    `json:"kind" bson:"kind"`
	Message string    `json:"message" bson:"message"`
	Step    string    `json:"step,omitempty" bson:"step,omitempty"`
	At      time.Time `json:"at" bson:"at"`
}

// FollowUp records the chained insights-completed event.
type FollowUp struct {
	EventID    string    `json:"eventId" bson:"eventId"`
	EnqueuedAt time.Time `json:"enqueuedAt" bson:"enqueuedAt"`
}

// Sentinel errors that steer the handler.
var (
	// ErrCancelled: the job was cancelled; the task is revoked.
	ErrCancelled = errors.New("job cancelled")
	// ErrStaleEvent: the job has moved on to another run (another eventId);
	// this task is left over and is revoked.
	ErrStaleEvent = errors.New("event is not the job's current run")
)

func newJobDoc(run tasks.Run, status string, now time.Time) *Job {
	j := &Job{
		ID: run.JobID, EventID: run.EventID, EventName: tasks.EventGenerateInsights,
		SystemID: run.SystemID, Request: run.Request, Priority: run.Priority, Queue: run.Queue,
		Status: status, Steps: map[string]StepState{}, CreatedAt: now, UpdatedAt: now,
	}
	if !run.ProcessAt.IsZero() {
		at := run.ProcessAt.UTC()
		j.ProcessAt = &at
	}
	return j
}

// ClaimRun implements tasks.JobStore: it records run as the job's current
// run, queued or scheduled, unless the job has a live run, which it returns.
//
// Claims are unique inserts (atomic even on FerretDB): the job document
// itself for a new jobId, and a run_claims document keyed by the previous
// eventId for a job whose last run ended, so two sends racing to restart it
// start one run.
func (s *Store) ClaimRun(ctx context.Context, run tasks.Run) (*tasks.Existing, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	now := time.Now().UTC()
	status := tasks.StatusQueued
	if run.Scheduled {
		status = tasks.StatusScheduled
	}
	doc := newJobDoc(run, status, now)
	for range 3 {
		err := s.write(ctx, func(ctx context.Context) error { _, err := s.jobs.InsertOne(ctx, doc); return err })
		if err == nil {
			return nil, nil
		}
		if !mongo.IsDuplicateKeyError(err) {
			return nil, fmt.Errorf("insert job: %w", err)
		}
		var cur Job
		if err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: run.JobID}}).Decode(&cur); err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				continue // deleted meanwhile: insert again
			}
			return nil, fmt.Errorf("read job: %w", err)
		}
		if tasks.Live(cur.Status) {
			return &tasks.Existing{EventID: cur.EventID, Queue: cur.Queue}, nil
		}
		// The last run ended: claim the restart against that run's eventId.
		err = s.write(ctx, func(ctx context.Context) error {
			_, err := s.claims.InsertOne(ctx, bson.D{{Key: "_id", Value: cur.ID + "|" + cur.EventID}, {Key: "next", Value: run.EventID}, {Key: "at", Value: now}})
			return err
		})
		if mongo.IsDuplicateKeyError(err) {
			// Another send restarted it; report that run once it is recorded.
			var winner struct {
				Next string `bson:"next"`
			}
			if err := s.claims.FindOne(ctx, bson.D{{Key: "_id", Value: cur.ID + "|" + cur.EventID}}).Decode(&winner); err != nil {
				return nil, fmt.Errorf("read claim: %w", err)
			}
			return &tasks.Existing{EventID: winner.Next, Queue: run.Queue}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("claim job restart: %w", err)
		}
		if doc.Request == nil {
			doc.Request, doc.SystemID = cur.Request, cur.SystemID
		}
		doc.CreatedAt = cur.CreatedAt
		var matched int64
		err = s.write(ctx, func(ctx context.Context) error {
			res, err := s.jobs.ReplaceOne(ctx, bson.D{{Key: "_id", Value: cur.ID}, {Key: "eventId", Value: cur.EventID}}, doc)
			if err == nil {
				matched = res.MatchedCount
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("restart job: %w", err)
		}
		if matched == 0 {
			continue
		}
		return nil, nil
	}
	return nil, fmt.Errorf("claim job %s: gave up after repeated conflicts", run.JobID)
}

// AbandonRun removes a run recorded by ClaimRun whose task never reached
// Redis. A restarted job is marked failed rather than deleted, so its
// history stays.
func (s *Store) AbandonRun(ctx context.Context, jobID, eventID string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	filter := bson.D{{Key: "_id", Value: jobID}, {Key: "eventId", Value: eventID}, {Key: "attempts", Value: 0}}
	err := s.write(ctx, func(ctx context.Context) error {
		_, err := s.jobs.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: bson.D{
			{Key: "status", Value: tasks.StatusFailed},
			{Key: "error", Value: JobError{Kind: tasks.KindTransient, Message: "the task could not be enqueued", At: time.Now().UTC()}},
			{Key: "updatedAt", Value: time.Now().UTC()},
		}}})
		return err
	})
	if err != nil {
		return fmt.Errorf("abandon run: %w", err)
	}
	return nil
}

// Attempt identifies the task a handler is running.
type Attempt struct {
	JobID, EventID, SystemID string
	Request                  *tasks.Request
	Priority                 int
	Queue                    string
}

// StartAttempt marks the job processing, adds 1 to attempts and returns the
// job with its checkpoints, in one update; it creates the job when the
// event arrived without one. A completed job (only its follow-up left to
// send) keeps its status. It returns ErrCancelled or ErrStaleEvent when this
// task must not run. Previous is the status before this attempt.
func (s *Store) StartAttempt(ctx context.Context, a Attempt) (job *Job, previous string, err error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	now := time.Now().UTC()
	filter := bson.D{{Key: "_id", Value: a.JobID}, {Key: "eventId", Value: a.EventID},
		{Key: "status", Value: bson.D{{Key: "$nin", Value: bson.A{tasks.StatusCompleted, tasks.StatusCancelled}}}}}
	update := bson.D{
		{Key: "$set", Value: bson.D{{Key: "status", Value: tasks.StatusProcessing}, {Key: "updatedAt", Value: now}}},
		{Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}},
	}
	var before Job
	if s.ferret {
		err = s.startAttemptFerret(ctx, a, update, &before)
	} else {
		err = s.write(ctx, func(ctx context.Context) error {
			return s.jobs.FindOneAndUpdate(ctx, filter, update, options.FindOneAndUpdate().SetReturnDocument(options.Before)).Decode(&before)
		})
	}
	if err == nil {
		previous = before.Status
		before.Status, before.Attempts, before.UpdatedAt = tasks.StatusProcessing, before.Attempts+1, now
		if before.Steps == nil {
			before.Steps = map[string]StepState{}
		}
		return &before, previous, nil
	}
	if !errors.Is(err, mongo.ErrNoDocuments) {
		return nil, "", fmt.Errorf("start attempt: %w", err)
	}
	// Rare paths: no job yet, another run, cancelled, or completed.
	var cur Job
	err = s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: a.JobID}}).Decode(&cur)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		doc := newJobDoc(tasks.Run{JobID: a.JobID, EventID: a.EventID, SystemID: a.SystemID, Request: a.Request,
			Priority: a.Priority, Queue: a.Queue, ProcessAt: now}, tasks.StatusProcessing, now)
		doc.Attempts = 1
		if err := s.write(ctx, func(ctx context.Context) error { _, err := s.jobs.InsertOne(ctx, doc); return err }); err != nil {
			return nil, "", fmt.Errorf("create job: %w", err)
		}
		return doc, "", nil
	case err != nil:
		return nil, "", fmt.Errorf("read job: %w", err)
	case cur.EventID != a.EventID:
		return nil, "", ErrStaleEvent
	case cur.Status == tasks.StatusCancelled:
		return nil, "", ErrCancelled
	}
	// Completed: only send-completion can be left; the status stays.
	if err := s.write(ctx, func(ctx context.Context) error {
		_, err := s.jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: a.JobID}, {Key: "eventId", Value: a.EventID}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}}, {Key: "$set", Value: bson.D{{Key: "updatedAt", Value: now}}}})
		return err
	}); err != nil {
		return nil, "", fmt.Errorf("start attempt: %w", err)
	}
	cur.Attempts++
	cur.UpdatedAt = now
	if cur.Steps == nil {
		cur.Steps = map[string]StepState{}
	}
	return &cur, cur.Status, nil
}

// Checkpoint is one write to a job during a run: a step's outcome and the
// job fields that change with it. It is applied only while the job is still
// on this run and not cancelled.
type Checkpoint struct {
	JobID, EventID string
	Step           string
	State          StepState
	// Set holds more top-level fields to set in the same update (status,
	// result, error, failures, followUp, completedAt...).
	Set bson.D
}

// SaveCheckpoint writes one checkpoint in one update. It returns
// ErrCancelled or ErrStaleEvent when the job left this run.
func (s *Store) SaveCheckpoint(ctx context.Context, c Checkpoint) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if s.ferret {
		return s.saveCheckpointFerret(ctx, c)
	}
	res, err := s.jobs.UpdateOne(ctx, checkpointFilter(c), checkpointUpdate(c))
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", c.Step, err)
	}
	if res.MatchedCount == 0 {
		return s.whyNotMatched(ctx, c.JobID, c.EventID)
	}
	return nil
}

func checkpointFilter(c Checkpoint) bson.D {
	return bson.D{{Key: "_id", Value: c.JobID}, {Key: "eventId", Value: c.EventID},
		{Key: "status", Value: bson.D{{Key: "$ne", Value: tasks.StatusCancelled}}}}
}

func checkpointUpdate(c Checkpoint) bson.D {
	set := bson.D{{Key: "updatedAt", Value: time.Now().UTC()}}
	if c.Step != "" {
		set = append(set, bson.E{Key: "steps." + c.Step, Value: c.State})
	}
	set = append(set, c.Set...)
	return bson.D{{Key: "$set", Value: set}}
}

func (s *Store) whyNotMatched(ctx context.Context, jobID, eventID string) error {
	var cur Job
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: jobID}}).Decode(&cur); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return ErrStaleEvent
		}
		return fmt.Errorf("read job: %w", err)
	}
	if cur.EventID != eventID {
		return ErrStaleEvent
	}
	return ErrCancelled
}

// GetJob returns one job.
func (s *Store) GetJob(ctx context.Context, jobID string) (*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var j Job
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: jobID}}).Decode(&j); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("get job: %w", err)
	}
	return &j, nil
}

// GetJobByEvent returns the job whose current run is eventID.
func (s *Store) GetJobByEvent(ctx context.Context, eventID string) (*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var j Job
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "eventId", Value: eventID}}).Decode(&j); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("get job by event: %w", err)
	}
	return &j, nil
}

// JobFilter selects jobs for ListJobs.
type JobFilter struct {
	Status   string
	SystemID string
	// Limit: 0 means 50; at most 500.
	Limit int
}

// ListJobs returns jobs newest first.
func (s *Store) ListJobs(ctx context.Context, f JobFilter) ([]*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if f.Limit <= 0 {
		f.Limit = 50
	}
	f.Limit = min(f.Limit, 500)
	q := bson.D{}
	if f.Status != "" {
		q = append(q, bson.E{Key: "status", Value: f.Status})
	}
	if f.SystemID != "" {
		q = append(q, bson.E{Key: "systemId", Value: f.SystemID})
	}
	cur, err := s.jobs.Find(ctx, q, options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}}).SetLimit(int64(f.Limit)))
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	var out []*Job
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return out, nil
}

// CountByStatus counts jobs per status.
func (s *Store) CountByStatus(ctx context.Context) (map[string]int64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	cur, err := s.jobs.Aggregate(ctx, mongo.Pipeline{
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: "$status"}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}},
	})
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	var rows []struct {
		ID string `bson:"_id"`
		N  int64  `bson:"n"`
	}
	if err := cur.All(ctx, &rows); err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	out := map[string]int64{}
	for _, r := range rows {
		out[r.ID] = r.N
	}
	return out, nil
}

// MarkCancelled sets the job's current run cancelled unless it completed
// meanwhile. It returns ErrNotFound when no such run is left to cancel.
func (s *Store) MarkCancelled(ctx context.Context, jobID, eventID string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	now := time.Now().UTC()
	var matched int64
	err := s.write(ctx, func(ctx context.Context) error {
		res, err := s.jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: jobID}, {Key: "eventId", Value: eventID},
			{Key: "status", Value: bson.D{{Key: "$ne", Value: tasks.StatusCompleted}}}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "status", Value: tasks.StatusCancelled}, {Key: "updatedAt", Value: now}}}})
		if err == nil {
			matched = res.MatchedCount
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("cancel job: %w", err)
	}
	if matched == 0 {
		return ErrNotFound
	}
	return nil
}

// Stale returns live jobs not updated since before; the reconciler checks
// each one's task is still in Redis.
func (s *Store) Stale(ctx context.Context, before time.Time, limit int) ([]*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	q := bson.D{
		{Key: "status", Value: bson.D{{Key: "$in", Value: bson.A{tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusProcessing, tasks.StatusRetrying}}}},
		{Key: "updatedAt", Value: bson.D{{Key: "$lt", Value: before}}},
	}
	cur, err := s.jobs.Find(ctx, q, options.Find().SetLimit(int64(limit)))
	if err != nil {
		return nil, fmt.Errorf("stale jobs: %w", err)
	}
	var out []*Job
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("stale jobs: %w", err)
	}
	return out, nil
}

// Touch sets updatedAt (the reconciler after re-enqueueing a job).
func (s *Store) Touch(ctx context.Context, jobID, eventID string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	return s.write(ctx, func(ctx context.Context) error {
		_, err := s.jobs.UpdateOne(ctx, bson.D{{Key: "_id", Value: jobID}, {Key: "eventId", Value: eventID}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "updatedAt", Value: time.Now().UTC()}}}})
		return err
	})
}

// startAttemptFerret is StartAttempt's first update on FerretDB: a read and
// a write by _id (each pushed down to the index) instead of one filtered
// update that would scan the collection. The worker holding the task is the
// job's one writer, so nothing changes between the two.
func (s *Store) startAttemptFerret(ctx context.Context, a Attempt, update bson.D, before *Job) error {
	byID := bson.D{{Key: "_id", Value: a.JobID}}
	if err := s.jobs.FindOne(ctx, byID).Decode(before); err != nil {
		return err
	}
	if before.EventID != a.EventID || before.Status == tasks.StatusCompleted || before.Status == tasks.StatusCancelled {
		return mongo.ErrNoDocuments // the rare paths of StartAttempt
	}
	_, err := s.update(ctx, s.jobs, mongo.NewUpdateOneModel().SetFilter(byID).SetUpdate(update))
	return err
}

// saveCheckpointFerret writes a checkpoint by _id. A checkpoint that changes
// the job's status (completed, retrying, failed) first checks that the job
// is still on this run and not cancelled; plain step checkpoints rely on the
// attempt's own check at its start and on the cancel stopping the task.
func (s *Store) saveCheckpointFerret(ctx context.Context, c Checkpoint) error {
	byID := bson.D{{Key: "_id", Value: c.JobID}}
	for _, e := range c.Set {
		if e.Key != "status" {
			continue
		}
		var cur struct {
			EventID string `bson:"eventId"`
			Status  string `bson:"status"`
		}
		if err := s.jobs.FindOne(ctx, byID).Decode(&cur); err != nil {
			if errors.Is(err, mongo.ErrNoDocuments) {
				return ErrStaleEvent
			}
			return fmt.Errorf("save checkpoint %s: %w", c.Step, err)
		}
		switch {
		case cur.EventID != c.EventID:
			return ErrStaleEvent
		case cur.Status == tasks.StatusCancelled:
			return ErrCancelled
		}
		break
	}
	matched, err := s.update(ctx, s.jobs, mongo.NewUpdateOneModel().SetFilter(byID).SetUpdate(checkpointUpdate(c)))
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", c.Step, err)
	}
	if !matched {
		return ErrStaleEvent
	}
	return nil
}
