package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/tasks"
)

// Job is one `insights-jobs` document (docs/DESIGN.md section 7), found by its
// field `id`. The BMS app's fields are written as its own workload writes
// them (request fields at the top level, progress, partialInsights,
// finalInsights, error as a string); ours sit beside them. A job the app
// created has an ObjectId `_id` and is updated in place, never copied.
type Job struct {
	// DocID is the document's `_id`: the jobId for jobs this service
	// creates, the app's ObjectId for its own. Every write filters by it.
	DocID    any    `json:"-" bson:"_id"`
	ID       string `json:"jobId" bson:"id"`
	Status   string `json:"status" bson:"status"`
	SystemID string `json:"systemId" bson:"systemId"`
	// The request, at the top level as the app stores it.
	tasks.Request   `bson:",inline"`
	Progress        []ProgressEvent `json:"progress" bson:"progress"`
	PartialInsights any             `json:"partialInsights" bson:"partialInsights"`
	// FinalInsights is a *FinalInsights as read back, or its sealed form.
	FinalInsights any       `json:"finalInsights" bson:"finalInsights"`
	Error         *string   `json:"error" bson:"error"` // the last error message; null when none
	CreatedAt     time.Time `json:"createdAt" bson:"createdAt"`
	UpdatedAt     time.Time `json:"updatedAt" bson:"updatedAt"`

	EventID string `json:"eventId" bson:"eventId,omitempty"`
	// PreviousEventIDs are the job's earlier runs: a task of one of them
	// is stale, a task of an eventId never seen is a new send.
	PreviousEventIDs []string             `json:"previousEventIds,omitempty" bson:"previousEventIds,omitempty"`
	EventName        string               `json:"eventName" bson:"eventName,omitempty"`
	Priority         int                  `json:"priority" bson:"priority"`
	Queue            string               `json:"queue" bson:"queue,omitempty"`
	ProcessAt        *time.Time           `json:"processAt,omitempty" bson:"processAt,omitempty"`
	Attempts         int                  `json:"attempts" bson:"attempts"`
	Failures         int                  `json:"failures" bson:"failures"` // failures of the current run: the retry budget used
	Failure          *Failure             `json:"failure,omitempty" bson:"failure,omitempty"`
	Steps            map[string]StepState `json:"steps" bson:"steps"`
	FollowUp         *FollowUp            `json:"followUp,omitempty" bson:"followUp,omitempty"`
	// Waiting says why a run that waits for flow control (the provider's
	// breaker) is rescheduled rather than running; nil when it is not.
	Waiting     *Waiting   `json:"waiting,omitempty" bson:"waiting,omitempty"`
	CompletedAt *time.Time `json:"completedAt,omitempty" bson:"completedAt,omitempty"`
	// RerunOf is set on a run an operator started from a step of the
	// previous run (runs.go); nil for a run sent as usual.
	RerunOf *RerunOf `json:"rerunOf,omitempty" bson:"rerunOf,omitempty"`
	// RetriedAt is when an operator last started this run again (its
	// budget reset: a retry, asynqmon's Run, a bulk retry); nil when never.
	// The pages tell from it what the retry then did.
	RetriedAt *time.Time `json:"retriedAt,omitempty" bson:"rerunAt,omitempty"`

	// seen is the run-lock count this job was last read under (runlock.go):
	// while it holds, no transition can have ended this run. 0: not read
	// under the lock.
	seen uint64
}

// docID is the job document's _id: DocID, or the jobId for a job built
// by hand (the jobs this service creates).
func (j *Job) docID() any {
	if j.DocID == nil {
		return j.ID
	}
	return j.DocID
}

// StoredRequest is the job's request for a task payload: nil when the job
// holds no snapshot (the run then fails at fetch-job).
func (j *Job) StoredRequest() *tasks.Request {
	if j.AnalysisData == nil {
		return nil
	}
	r := j.Request
	return &r
}

// Run is the job's current run, as it is enqueued again (the reconciler,
// an operator's retry of a task Redis lost): on the job's queue, due when
// the job says (a schedule not yet reached is kept), else now.
func (j *Job) Run() tasks.Run {
	queue := j.Queue
	if queue == "" {
		queue = tasks.QueueFor(j.Priority)
	}
	run := tasks.Run{EventID: j.EventID, JobID: j.ID, SystemID: j.SystemID, Request: j.StoredRequest(),
		Priority: j.Priority, Queue: queue, ProcessAt: time.Now()}
	if j.ProcessAt != nil && j.Status != tasks.StatusCompleted && j.ProcessAt.After(run.ProcessAt) {
		run.ProcessAt = *j.ProcessAt
	}
	return run
}

// FailedAt is when the job last failed (its updatedAt when unknown).
func (j *Job) FailedAt() time.Time {
	if j.Failure != nil && !j.Failure.At.IsZero() {
		return j.Failure.At.UTC()
	}
	return j.UpdatedAt.UTC()
}

// ProgressEvent is one entry of the job's `progress`, in the app's shape.
type ProgressEvent struct {
	Timestamp time.Time      `json:"timestamp" bson:"timestamp"`
	Type      string         `json:"type" bson:"type"` // status | tool_call | tool_response | ai_response | iteration | error
	Data      map[string]any `json:"data" bson:"data"`
}

// FinalInsights is the job's `finalInsights`: the app's own fields
// (rawText, contextSummary, metadata) and ours beside them.
type FinalInsights struct {
	RawText        string                  `json:"rawText" bson:"rawText"`
	ContextSummary insights.ContextSummary `json:"contextSummary" bson:"contextSummary"`
	Metadata       InsightsMetadata        `json:"metadata" bson:"metadata"`
	HealthScore    float64                 `json:"healthScore" bson:"healthScore"`
	Status         string                  `json:"status" bson:"status"`
	Findings       []insights.Finding      `json:"findings" bson:"findings"`
	Metrics        map[string]any          `json:"metrics" bson:"metrics"`
	Provider       string                  `json:"provider" bson:"provider"`
}

// InsightsMetadata is finalInsights.metadata as the app writes it.
type InsightsMetadata struct {
	Mode                string `json:"mode" bson:"mode"` // background
	Turns               int    `json:"turns" bson:"turns"`
	ToolCalls           int    `json:"toolCalls" bson:"toolCalls"`
	UsedFunctionCalling bool   `json:"usedFunctionCalling" bson:"usedFunctionCalling"`
	Model               string `json:"model,omitempty" bson:"model,omitempty"`
}

// NewFinalInsights is the finalInsights of an engine's result.
func NewFinalInsights(r *insights.Result) *FinalInsights {
	return &FinalInsights{
		RawText: r.Markdown, ContextSummary: r.ContextSummary,
		Metadata:    InsightsMetadata{Mode: "background", Turns: r.Turns, ToolCalls: r.ToolCalls, UsedFunctionCalling: r.ToolCalls > 0, Model: r.Model},
		HealthScore: r.HealthScore, Status: r.Status, Findings: r.Findings, Metrics: r.Metrics, Provider: r.Provider,
	}
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
	// ReusedFrom is the eventId of the earlier run whose checkpoint a
	// re-run kept, so this step did not run in this run; "" when it ran
	// here.
	ReusedFrom string `json:"reusedFrom,omitempty" bson:"reusedFrom,omitempty"`
}

// Step statuses.
const (
	StepCompleted = "completed"
	StepFailed    = "failed"
	StepSleeping  = "sleeping"
)

// Failure is the job's last failure (`failure`; `error` holds its message).
type Failure struct {
	Kind    string    `json:"kind" bson:"kind"`
	Message string    `json:"message" bson:"message"`
	Step    string    `json:"step,omitempty" bson:"step,omitempty"`
	At      time.Time `json:"at" bson:"at"`
	// Outage names the store ("Redis", "MongoDB") whose outage this was:
	// the service's fault, retried without using the job's budget. "":
	// the run's own failure.
	Outage string `json:"outage,omitempty" bson:"outage,omitempty"`
}

// OwnFailure reports whether the job's last failure is its run's own, not
// an outage of a store (which uses none of its budget).
func (j *Job) OwnFailure() bool { return j.Failure != nil && j.Failure.Outage == "" }

// Failure kinds (the job's failure.kind).
const (
	KindTransient = "transient"  // a timeout, a lost connection, a 5xx, the store's outage
	KindRateLimit = "rate_limit" // the provider's rate limit or quota
	KindBusiness  = "business"   // the request itself: retrying cannot help
	KindInternal  = "internal"   // anything else (a bug, a panic)
)

// Waiting is the job's `waiting`: why its run waits, and until when.
type Waiting struct {
	Reason string    `json:"reason" bson:"reason"`
	Until  time.Time `json:"until" bson:"until"`
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
		DocID: run.JobID, ID: run.JobID, EventID: run.EventID, EventName: tasks.EventGenerateInsights,
		SystemID: run.SystemID, Priority: run.Priority, Queue: run.Queue,
		Status: status, Progress: []ProgressEvent{}, Steps: map[string]StepState{}, CreatedAt: now, UpdatedAt: now,
	}
	if run.Request != nil {
		j.Request = *run.Request
	}
	if !run.ProcessAt.IsZero() {
		at := run.ProcessAt.UTC()
		j.ProcessAt = &at
	}
	return j
}

// findJob reads a job by jobId: by `_id` first (the jobs this service
// creates; the one lookup FerretDB serves from an index), else by the
// app's `id` field (its own jobs, with an ObjectId `_id`).
func (s *Store) findJob(ctx context.Context, jobID string) (*Job, error) {
	if s.idx != nil {
		return s.findJobIndexed(ctx, jobID)
	}
	var j Job
	err := findByID(ctx, s.jobs, jobID, &j)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read job %s: %w", jobID, err)
	}
	if j.Steps == nil {
		j.Steps = map[string]StepState{}
	}
	return &j, nil
}

// findByID decodes into out the document of coll whose `_id` is id (the
// documents this service creates), else whose `id` is (the app's, with an
// ObjectId `_id`). The `_id` lookup comes first: it is the one FerretDB
// serves from an index.
func findByID(ctx context.Context, coll *mongo.Collection, id string, out any) error {
	err := coll.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(out)
	if errors.Is(err, mongo.ErrNoDocuments) {
		err = coll.FindOne(ctx, bson.D{{Key: "id", Value: id}}).Decode(out)
	}
	return err
}

// lockedRun takes job jobID's run lock and reads the job under it: the
// read of a read-check-write. ErrNotFound (the lock released) when there
// is no such job or its current run is not eventID; else the caller
// unlocks once its write is durable.
func (s *Store) lockedRun(ctx context.Context, jobID, eventID string) (heldLock, *Job, error) {
	held, err := s.lockJob(ctx, jobID)
	if err != nil {
		return heldLock{}, nil, err
	}
	job, err := s.findJob(ctx, jobID)
	if err == nil && job.EventID != eventID {
		err = ErrNotFound
	}
	if err != nil {
		held.unlock()
		return heldLock{}, nil, err
	}
	return held, job, nil
}

// runFilter selects a job document by its `_id`, and on MongoDB also by
// the conditions that make the write atomic with the check (FerretDB
// serves only a bare `_id` equality from its index, and its updates are not
// atomic anyway: there the caller holds the job's run lock and checks in
// Go, runlock.go).
func (s *Store) runFilter(docID any, cond ...bson.E) bson.D {
	f := bson.D{{Key: "_id", Value: docID}}
	if !s.ferret {
		f = append(f, cond...)
	}
	return f
}

// updateJob applies update to the document docID (with cond on MongoDB)
// and reports whether it matched.
func (s *Store) updateJob(ctx context.Context, docID any, update bson.D, cond ...bson.E) (bool, error) {
	return s.update(ctx, s.jobs, mongo.NewUpdateOneModel().SetFilter(s.runFilter(docID, cond...)).SetUpdate(update))
}

// ClaimRun implements tasks.JobStore: it records run as the job's current
// run, queued or scheduled, unless the job has a live run, which it returns.
//
// Claims are unique inserts (atomic even on FerretDB): the job document
// itself for a new jobId (the unique index on `id` refuses it when the app
// created the job), and a run_claims document keyed by the previous
// eventId ("" for a job the app created and never sent) for a job that has
// no live run, so two sends racing to start it start one run. A claim
// whose job write fails is removed again, and one left behind by a process
// that died between the two writes is removed by the next send (claimExisting),
// so a later send can always start the job.
//
// The run's eventId is recorded first (events.go): an eventId sent before
// is a duplicate of the run it started, whatever its job did since.
func (s *Store) ClaimRun(ctx context.Context, run tasks.Run) (_ *tasks.Existing, err error) {
	if err := s.checkStorable(run); err != nil {
		return nil, err
	}
	defer func() { err = outage.Wrap(outage.MongoDB, err) }() // the sender's answer names the store
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if existing, err := s.recordEvent(ctx, run); existing != nil || err != nil {
		return existing, err
	}
	existing, err := s.claimRun(ctx, run)
	if err != nil {
		err = errors.Join(err, s.forgetEvent(context.WithoutCancel(ctx), run.EventID))
	}
	// A run refused as a duplicate of the job's live run keeps its record:
	// its eventId was answered, and a resend of it must not start a run
	// once that live run has ended.
	return existing, err
}

// claimRun is ClaimRun once the eventId is recorded.
func (s *Store) claimRun(ctx context.Context, run tasks.Run) (*tasks.Existing, error) {
	now := time.Now().UTC()
	status := tasks.StatusQueued
	if run.Scheduled(now) {
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
		existing, retry, err := s.claimExisting(ctx, run, status)
		if err != nil || !retry {
			return existing, err
		}
	}
	return nil, fmt.Errorf("claim job %s: gave up after repeated conflicts", run.JobID)
}

// claimGrace is how old a claim must be before a send that finds it not
// reflected in its job takes it for one left by a dead process, where no
// run lock orders the claimer's two writes (MongoDB): longer than both
// writes may take.
func (s *Store) claimGrace() time.Duration { return 2 * s.opTimeout }

// claimExisting claims the new run of a job that exists. retry: the job
// changed meanwhile (deleted, or its claim was repaired), try again.
func (s *Store) claimExisting(ctx context.Context, run tasks.Run, status string) (existing *tasks.Existing, retry bool, err error) {
	held, err := s.lockJob(ctx, run.JobID)
	if err != nil {
		return nil, false, fmt.Errorf("claim job %s: %w", run.JobID, err)
	}
	defer held.unlock()
	cur, err := s.findJob(ctx, run.JobID)
	if errors.Is(err, ErrNotFound) {
		return nil, true, nil // deleted meanwhile: insert again
	}
	if err != nil {
		return nil, false, err
	}
	if tasks.Live(cur.Status) && cur.EventID != "" {
		return &tasks.Existing{EventID: cur.EventID, Queue: cur.Queue}, false, nil
	}
	if err := s.archiveRun(ctx, cur); err != nil {
		return nil, false, err
	}
	now := time.Now().UTC()
	claimID := cur.ID + "|" + cur.EventID
	err = s.write(ctx, func(ctx context.Context) error {
		_, err := s.claims.InsertOne(ctx, bson.D{{Key: "_id", Value: claimID}, {Key: "next", Value: run.EventID}, {Key: "at", Value: now}})
		return err
	})
	if mongo.IsDuplicateKeyError(err) {
		var winner struct {
			Next string    `bson:"next"`
			At   time.Time `bson:"at"`
		}
		if err := s.claims.FindOne(ctx, bson.D{{Key: "_id", Value: claimID}}).Decode(&winner); errors.Is(err, mongo.ErrNoDocuments) {
			return nil, true, nil // removed meanwhile
		} else if err != nil {
			return nil, false, fmt.Errorf("read claim: %w", err)
		}
		// The job still shows the run the claim replaces. Under the run
		// lock the claimer's job write would be done by now, so the claim
		// is left over from a process that died between its two writes (or
		// whose job write failed); without the lock, once it is older than
		// those writes can take. Left alone it would answer "duplicate"
		// with an eventId that was never enqueued, for ever.
		if s.locks != nil || now.Sub(winner.At) > s.claimGrace() {
			if _, err := s.claims.DeleteOne(ctx, bson.D{{Key: "_id", Value: claimID}, {Key: "next", Value: winner.Next}}); err != nil {
				return nil, false, fmt.Errorf("remove a left-over claim: %w", err)
			}
			return nil, true, nil
		}
		// Another send is starting it: report that run.
		return &tasks.Existing{EventID: winner.Next, Queue: run.Queue}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("claim job run: %w", err)
	}
	held.transition()
	matched, err := s.updateJob(ctx, cur.DocID, startRunUpdate(cur, run, status, 0, now),
		bson.E{Key: "eventId", Value: cur.EventID})
	if err != nil || !matched {
		// Repair: without its job write the claim would answer
		// "duplicate" with an eventId that was never enqueued.
		_, derr := s.claims.DeleteOne(context.WithoutCancel(ctx), bson.D{{Key: "_id", Value: claimID}})
		if err != nil {
			return nil, false, errors.Join(fmt.Errorf("start job run: %w", err), derr)
		}
		return nil, true, nil
	}
	return nil, false, nil
}

// startRunUpdate is the update that makes run the current run of cur:
// its steps and progress start afresh with attempts done so far (a re-run
// keeps the steps before its FromStep that completed, and the result when
// it keeps store-results), the request fields the event carries replace
// the stored ones (those it omits are kept), and the run it replaces joins
// the job's previous ones.
func startRunUpdate(cur *Job, run tasks.Run, status string, attempts int, now time.Time) bson.D {
	steps, rerun := bson.D{}, any(nil)
	if run.FromStep != "" && cur.EventID != "" {
		steps = reusedSteps(cur, run.FromStep)
		rerun = RerunOf{EventID: cur.EventID, FromStep: run.FromStep, At: now}
	}
	set := bson.D{
		{Key: "eventId", Value: run.EventID}, {Key: "eventName", Value: tasks.EventGenerateInsights},
		{Key: "status", Value: status}, {Key: "priority", Value: run.Priority}, {Key: "queue", Value: run.Queue},
		{Key: "processAt", Value: run.ProcessAt.UTC()}, {Key: "attempts", Value: attempts}, {Key: "failures", Value: 0},
		{Key: "failure", Value: nil}, {Key: "error", Value: nil}, {Key: "steps", Value: steps},
		{Key: "progress", Value: []ProgressEvent{}}, {Key: "partialInsights", Value: nil},
		{Key: "followUp", Value: nil}, {Key: "waiting", Value: nil}, {Key: "rerunOf", Value: rerun}, {Key: "rerunAt", Value: nil}, {Key: "updatedAt", Value: now},
	}
	if !slices.ContainsFunc(steps, func(e bson.E) bool { return e.Key == tasks.StepStoreResults }) {
		set = append(set, bson.E{Key: "finalInsights", Value: nil}, bson.E{Key: "completedAt", Value: nil})
	}
	if run.SystemID != "" {
		set = append(set, bson.E{Key: "systemId", Value: run.SystemID})
	}
	if run.Request != nil {
		set = append(set, RequestFields(*run.Request)...)
	}
	u := bson.D{{Key: "$set", Value: set}}
	if cur.EventID != "" {
		u = append(u, bson.E{Key: "$push", Value: bson.D{{Key: "previousEventIds", Value: cur.EventID}}})
	}
	return u
}

// RequestFields are the request fields r sets, as the job's top-level
// fields: its bson encoding, which leaves the unset ones out.
func RequestFields(r tasks.Request) bson.D {
	var d bson.D
	if b, err := bson.Marshal(r); err == nil {
		_ = bson.Unmarshal(b, &d)
	}
	return d
}

// AbandonRun removes a run recorded by ClaimRun whose task never reached
// Redis: the job is marked failed rather than deleted, so its history
// stays and a later send starts it again.
func (s *Store) AbandonRun(ctx context.Context, jobID, eventID string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := s.forgetEvent(ctx, eventID); err != nil {
		return fmt.Errorf("abandon run: %w", err)
	}
	held, job, err := s.lockedRun(ctx, jobID, eventID)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("abandon run: %w", err)
	}
	defer held.unlock()
	if job.Attempts != 0 {
		return nil
	}
	held.transition()
	now := time.Now().UTC()
	msg := "the task could not be enqueued"
	_, err = s.updateJob(ctx, job.DocID, bson.D{{Key: "$set", Value: bson.D{
		{Key: "status", Value: tasks.StatusFailed},
		{Key: "error", Value: msg},
		{Key: "failure", Value: Failure{Kind: KindTransient, Message: msg, At: now}},
		{Key: "updatedAt", Value: now},
	}}}, bson.E{Key: "eventId", Value: eventID}, bson.E{Key: "attempts", Value: 0})
	if err != nil {
		return fmt.Errorf("abandon run: %w", err)
	}
	return nil
}

// StartAttempt marks the job processing, adds 1 to attempts and returns the
// job with its checkpoints; it creates the job when the event arrived
// without one. A completed job (only its follow-up left to send) keeps its
// status. It returns ErrCancelled or ErrStaleEvent when this task must not
// run. Previous is the status before this attempt.
func (s *Store) StartAttempt(ctx context.Context, run tasks.Run) (job *Job, previous string, err error) {
	if err := s.checkStorable(run); err != nil {
		return nil, "", err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	held, err := s.lockJob(ctx, run.JobID)
	if err != nil {
		return nil, "", fmt.Errorf("start attempt: %w", err)
	}
	defer held.unlock()
	defer func() {
		if job != nil {
			job.seen = held.seen()
		}
	}()
	now := time.Now().UTC()
	run.ProcessAt = now // the attempt starts now, whatever the task was due
	for range 3 {
		cur, err := s.findJob(ctx, run.JobID)
		if errors.Is(err, ErrNotFound) {
			doc := newJobDoc(run, tasks.StatusProcessing, now)
			doc.Attempts = 1
			err := s.write(ctx, func(ctx context.Context) error { _, err := s.jobs.InsertOne(ctx, doc); return err })
			if mongo.IsDuplicateKeyError(err) {
				continue // created meanwhile (a producer's claim): read it
			}
			if err != nil {
				return nil, "", fmt.Errorf("create job: %w", err)
			}
			return doc, "", nil
		}
		if err != nil {
			return nil, "", err
		}
		adopt := cur.EventID == "" // a job the app created, sent by a producer without the store
		switch {
		case !adopt && cur.EventID != run.EventID:
			if slices.Contains(cur.PreviousEventIDs, run.EventID) || tasks.Live(cur.Status) {
				return nil, "", ErrStaleEvent // an earlier run's task, or a second send while one runs
			}
			// A new send of an ended job by a producer without the store
			// (it could not claim the run): this task starts the new run.
			if err := s.archiveRun(ctx, cur); err != nil {
				return nil, "", err
			}
			held.transition()
			matched, err := s.updateJob(ctx, cur.DocID, startRunUpdate(cur, run, tasks.StatusProcessing, 1, now),
				bson.E{Key: "eventId", Value: cur.EventID})
			if err != nil {
				return nil, "", fmt.Errorf("start run: %w", err)
			}
			if !matched {
				continue
			}
			job, err := s.findJob(ctx, run.JobID)
			if err != nil {
				return nil, "", err
			}
			return job, cur.Status, nil
		case cur.Status == tasks.StatusCancelled:
			return nil, "", ErrCancelled
		}
		previous = cur.Status
		set := bson.D{{Key: "updatedAt", Value: now}}
		if cur.Status != tasks.StatusCompleted {
			// Completed: only send-completion can be left; the status stays.
			set = append(set, bson.E{Key: "status", Value: tasks.StatusProcessing})
		}
		if adopt {
			set = append(set, bson.E{Key: "eventId", Value: run.EventID}, bson.E{Key: "eventName", Value: tasks.EventGenerateInsights},
				bson.E{Key: "queue", Value: run.Queue}, bson.E{Key: "priority", Value: run.Priority})
			cur.EventID, cur.EventName, cur.Queue, cur.Priority = run.EventID, tasks.EventGenerateInsights, run.Queue, run.Priority
		}
		update := bson.D{{Key: "$set", Value: set}, {Key: "$inc", Value: bson.D{{Key: "attempts", Value: 1}}}}
		if cur.Waiting != nil {
			// The wait is over: this attempt runs (the run keeps the last
			// reason in memory, so that waiting again for it reports nothing
			// new).
			update = append(update, bson.E{Key: "$unset", Value: bson.D{{Key: "waiting", Value: ""}}})
		}
		matched, err := s.updateJob(ctx, cur.DocID, update,
			bson.E{Key: "eventId", Value: cur.EventID}, bson.E{Key: "status", Value: cur.Status})
		if err != nil {
			return nil, "", fmt.Errorf("start attempt: %w", err)
		}
		if !matched {
			continue // changed meanwhile (a cancel): read it again
		}
		if cur.Status != tasks.StatusCompleted {
			cur.Status = tasks.StatusProcessing
		}
		cur.Attempts++
		cur.UpdatedAt = now
		return cur, previous, nil
	}
	return nil, "", fmt.Errorf("start attempt of job %s: gave up after repeated conflicts", run.JobID)
}

func pushProgress(evs []ProgressEvent) bson.E {
	return bson.E{Key: "$push", Value: bson.D{{Key: "progress", Value: bson.D{{Key: "$each", Value: evs}}}}}
}

// Checkpoint is one write to a job during a run: a step's outcome, the job
// fields that change with it and progress events to append. It is applied
// only while the job is still on this run and not cancelled.
type Checkpoint struct {
	// Job is the run's job as StartAttempt returned it: its _id, jobId and
	// eventId name the run the write belongs to.
	Job  *Job
	Step string
	// State is the step's checkpoint (Step set).
	State StepState
	// Set holds more top-level fields to set in the same update (status,
	// finalInsights, error, failure, failures, followUp, completedAt...).
	Set bson.D
	// Push is appended to the job's progress.
	Push []ProgressEvent
}

// SaveCheckpoint writes one checkpoint in one update (with no Step: only
// its fields and progress events). It returns ErrCancelled or
// ErrStaleEvent when the job left this run: the write is then not made.
func (s *Store) SaveCheckpoint(ctx context.Context, c Checkpoint) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	job := c.Job
	held, err := s.lockJob(ctx, job.ID)
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", c.Step, err)
	}
	defer held.unlock()
	if s.locks != nil && job.seen != held.seen() {
		// A transition happened in this job's stripe since the run last
		// read its job (or it never did): check the run in Go, as
		// FerretDB's filter would not.
		if err := s.checkRun(ctx, job); err != nil {
			return err
		}
		job.seen = held.seen()
	}
	if job.Failure != nil && completes(c.Set) {
		// A run that completes has no failure: a filter of failures must
		// never select it. Its run record keeps the failure it got over.
		if err := s.keepFailure(ctx, job); err != nil {
			return fmt.Errorf("save checkpoint %s: %w", c.Step, err)
		}
		c.Set = append(slices.Clone(c.Set), bson.E{Key: "failure", Value: nil})
	}
	matched, err := s.updateJob(ctx, job.docID(), checkpointUpdate(c),
		bson.E{Key: "eventId", Value: job.EventID}, bson.E{Key: "status", Value: bson.D{{Key: "$ne", Value: tasks.StatusCancelled}}})
	if err != nil {
		return fmt.Errorf("save checkpoint %s: %w", c.Step, err)
	}
	if !matched {
		if err := s.checkRun(ctx, job); err != nil {
			return err
		}
		return ErrCancelled // the filter's other condition: it was cancelled meanwhile
	}
	if completes(c.Set) {
		job.Failure = nil
	}
	return nil
}

// completes reports whether set makes the job completed.
func completes(set bson.D) bool {
	for _, e := range set {
		if e.Key == "status" && e.Value == tasks.StatusCompleted {
			return true
		}
	}
	return false
}

func checkpointUpdate(c Checkpoint) bson.D {
	set := bson.D{{Key: "updatedAt", Value: time.Now().UTC()}}
	if c.Step != "" {
		set = append(set, bson.E{Key: "steps." + c.Step, Value: c.State})
	}
	set = append(set, c.Set...)
	u := bson.D{{Key: "$set", Value: set}}
	if len(c.Push) > 0 {
		u = append(u, pushProgress(c.Push))
	}
	return u
}

// checkRun reads whether job's document is still on job's run and not
// cancelled: ErrStaleEvent or ErrCancelled when not.
func (s *Store) checkRun(ctx context.Context, job *Job) error {
	var cur struct {
		EventID string `bson:"eventId"`
		Status  string `bson:"status"`
	}
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: job.docID()}}).Decode(&cur); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return ErrStaleEvent
		}
		return fmt.Errorf("read job %s: %w", job.ID, err)
	}
	switch {
	case cur.EventID != job.EventID:
		return ErrStaleEvent
	case cur.Status == tasks.StatusCancelled:
		return ErrCancelled
	}
	return nil
}

// CurrentRun implements tasks.JobStore: the eventId of the job's current
// run.
func (s *Store) CurrentRun(ctx context.Context, jobID string) (string, error) {
	job, err := s.GetJob(ctx, jobID)
	if errors.Is(err, ErrNotFound) {
		return "", fmt.Errorf("job %s: %w", jobID, tasks.ErrNotRecorded)
	}
	if err != nil {
		return "", err
	}
	return job.EventID, nil
}

// GetJob returns one job by its jobId.
func (s *Store) GetJob(ctx context.Context, jobID string) (*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	return s.findJob(ctx, jobID)
}

// GetJobByEvent returns the job whose current run is eventID: found
// through the event's record by `_id`, or, for an event sent before
// events were recorded, by a find on eventId.
func (s *Store) GetJobByEvent(ctx context.Context, eventID string) (*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	switch jobID, err := s.eventJobID(ctx, eventID); {
	case err == nil:
		j, err := s.findJob(ctx, jobID)
		if err != nil {
			return nil, err
		}
		if j.EventID != eventID {
			return nil, ErrNotFound // the job has moved on to another run
		}
		return j, nil
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}
	if s.idx != nil {
		return s.jobByEventIndexed(ctx, eventID)
	}
	var j Job
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "eventId", Value: eventID}}).Decode(&j); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("get job by event: %w", err)
	}
	if j.Steps == nil {
		j.Steps = map[string]StepState{}
	}
	return &j, nil
}

// FailEvent ends, failed for good, the live run eventID of a job whose task
// cannot be run (its payload is not a readable event): without it the job
// would stay queued and every new send would answer "duplicate". kind and
// msg are the failure's. ErrNotFound when no job is on that run, or its run
// has ended.
func (s *Store) FailEvent(ctx context.Context, eventID, kind, msg string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	found, err := s.GetJobByEvent(ctx, eventID)
	if err != nil {
		return err
	}
	held, job, err := s.lockedRun(ctx, found.ID, eventID)
	if err != nil {
		return fmt.Errorf("fail event %s: %w", eventID, err)
	}
	defer held.unlock()
	if !tasks.Live(job.Status) {
		return ErrNotFound
	}
	held.transition()
	now := time.Now().UTC()
	matched, err := s.updateJob(ctx, job.DocID, bson.D{
		{Key: "$set", Value: bson.D{
			{Key: "status", Value: tasks.StatusFailed}, {Key: "error", Value: msg}, {Key: "waiting", Value: nil},
			{Key: "failure", Value: Failure{Kind: kind, Message: msg, At: now}}, {Key: "updatedAt", Value: now}}},
		pushProgress([]ProgressEvent{{Timestamp: now, Type: insights.ProgressError, Data: map[string]any{"message": msg, "error": msg, "kind": kind, "final": true}}}),
	}, bson.E{Key: "eventId", Value: eventID}, bson.E{Key: "status", Value: job.Status})
	if err != nil {
		return fmt.Errorf("fail event %s: %w", eventID, err)
	}
	if !matched {
		return ErrNotFound
	}
	return nil
}

// CountByStatus counts jobs per status.
func (s *Store) CountByStatus(ctx context.Context) (map[string]int64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if s.idx != nil {
		out, err := s.countByStatusIndexed(ctx)
		if err != nil {
			return nil, fmt.Errorf("count jobs: %w", unavailable(ctx, err))
		}
		return out, nil
	}
	if s.ferret {
		// FerretDB over PostgreSQL: one pass, not one per status.
		return s.countByStatusGroup(ctx)
	}
	// One count per status: each is served by the {status, createdAt}
	// index, where a $group would read every document.
	out := map[string]int64{}
	for _, st := range []string{tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusProcessing, tasks.StatusRetrying,
		tasks.StatusCompleted, tasks.StatusFailed, tasks.StatusCancelled} {
		n, err := s.jobs.CountDocuments(ctx, bson.D{{Key: "status", Value: st}})
		if err != nil {
			return nil, fmt.Errorf("count jobs: %w", unavailable(ctx, err))
		}
		if n > 0 {
			out[st] = n
		}
	}
	return out, nil
}

func (s *Store) countByStatusGroup(ctx context.Context) (map[string]int64, error) {
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
	held, job, err := s.lockedRun(ctx, jobID, eventID)
	if err != nil {
		return fmt.Errorf("cancel job: %w", err)
	}
	defer held.unlock()
	if job.Status == tasks.StatusCompleted {
		return ErrNotFound
	}
	held.transition()
	now := time.Now().UTC()
	matched, err := s.updateJob(ctx, job.DocID,
		bson.D{{Key: "$set", Value: bson.D{{Key: "status", Value: tasks.StatusCancelled}, {Key: "waiting", Value: nil}, {Key: "updatedAt", Value: now}}}},
		bson.E{Key: "eventId", Value: eventID}, bson.E{Key: "status", Value: bson.D{{Key: "$ne", Value: tasks.StatusCompleted}}})
	if err != nil {
		return fmt.Errorf("cancel job: %w", err)
	}
	if !matched {
		return ErrNotFound
	}
	return nil
}

// EachStale calls fn, through one streamed cursor, for every job not
// updated since before that the reconciler must check: live jobs (queued,
// scheduled, processing, retrying) with a run, and completed jobs whose
// follow-up was never recorded (send-completion still to do). Every such
// job, however many, not the first page. An error of fn stops the stream
// and is returned.
func (s *Store) EachStale(ctx context.Context, before time.Time, fn func(*Job) error) error {
	if s.idx != nil {
		return streamErr(ctx, "stale jobs", s.eachStaleIndexed(ctx, before, fn))
	}
	q := bson.D{
		{Key: "$or", Value: bson.A{
			bson.D{{Key: "status", Value: bson.D{{Key: "$in", Value: bson.A{tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusProcessing, tasks.StatusRetrying}}}}},
			bson.D{{Key: "status", Value: tasks.StatusCompleted}, {Key: "followUp", Value: nil}},
		}},
		{Key: "eventId", Value: bson.D{{Key: "$exists", Value: true}, {Key: "$ne", Value: ""}}},
		{Key: "updatedAt", Value: bson.D{{Key: "$lt", Value: before}}},
	}
	fctx, cancel := s.scanCtx(ctx)
	cur, err := s.jobs.Find(fctx, q, options.Find().SetBatchSize(500))
	cancel()
	if err != nil {
		return fmt.Errorf("stale jobs: %w", err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for s.next(ctx, cur) {
		var j Job
		if err := cur.Decode(&j); err != nil {
			return fmt.Errorf("stale jobs: %w", err)
		}
		if err := fn(&j); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("stale jobs: %w", err)
	}
	return nil
}

// ResetBudget gives the job's current run its full retry budget back
// (failures 0): an operator starts it again (the API's retry, asynqmon's
// Run). It is the only way a run's budget comes back; the worker never
// infers it from a status. ErrNotFound when eventID is not the job's run.
func (s *Store) ResetBudget(ctx context.Context, jobID, eventID string) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	held, job, err := s.lockedRun(ctx, jobID, eventID)
	if err != nil {
		return fmt.Errorf("reset retry budget: %w", err)
	}
	defer held.unlock()
	now := time.Now().UTC()
	matched, err := s.updateJob(ctx, job.DocID, bson.D{{Key: "$set", Value: bson.D{
		{Key: "failures", Value: 0}, {Key: "rerunAt", Value: now}, {Key: "updatedAt", Value: now}}}},
		bson.E{Key: "eventId", Value: eventID})
	if err != nil {
		return fmt.Errorf("reset retry budget: %w", err)
	}
	if !matched {
		return ErrNotFound
	}
	return nil
}

// Touch sets updatedAt (the reconciler after re-enqueueing a job).
func (s *Store) Touch(ctx context.Context, job *Job) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	held, err := s.lockJob(ctx, job.ID)
	if err != nil {
		return err
	}
	defer held.unlock()
	_, err = s.updateJob(ctx, job.DocID, bson.D{{Key: "$set", Value: bson.D{{Key: "updatedAt", Value: time.Now().UTC()}}}},
		bson.E{Key: "eventId", Value: job.EventID})
	return err
}
