package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bmsview/insights/tasks"
)

// KindUnknown is the failure kind of a failed job that records none (the
// BMS app's own workload failed it): failures group it under this name and
// a filter selects it by it.
const KindUnknown = "unknown"

// JobFilter selects jobs: the job list, the failures and bulk actions.
// Every field left zero selects everything.
type JobFilter struct {
	Status   string `json:"status,omitempty" bson:"status,omitempty"`
	SystemID string `json:"systemId,omitempty" bson:"systemId,omitempty"`
	// FailureKind is failure.kind (KindUnknown: a job without one).
	FailureKind string `json:"failureKind,omitempty" bson:"failureKind,omitempty"`
	// Step is the step the last failure happened in (failure.step).
	Step string `json:"step,omitempty" bson:"step,omitempty"`
	// Message is the last failure's message exactly (failure.message, or
	// error for a job without a failure): one group of the failures.
	Message string `json:"message,omitempty" bson:"message,omitempty"`
	// Fingerprint is the last failure's fingerprint (fingerprint.go): one
	// group of the failures, its ids and numbers aside. Matched in Go, on
	// the failure fields alone.
	Fingerprint string `json:"fingerprint,omitempty" bson:"fingerprint,omitempty"`
	// From and To bound the job's last change (updatedAt; for a failed job,
	// when it failed): From ≤ updatedAt < To.
	From *time.Time `json:"from,omitempty" bson:"from,omitempty"`
	To   *time.Time `json:"to,omitempty" bson:"to,omitempty"`
	// Limit caps ListJobs: 0 means 50; at most 500. Offset skips that many
	// of the newest first. Neither applies to counts and bulk actions.
	Limit  int `json:"-" bson:"-"`
	Offset int `json:"-" bson:"-"`
}

// failure reports whether f names a failure (its kind, step, message or
// fingerprint): such a filter selects failed jobs only.
func (f JobFilter) failure() bool {
	return f.FailureKind != "" || f.Step != "" || f.Message != "" || f.Fingerprint != ""
}

// Empty reports whether f selects every job (its Limit and Offset aside).
func (f JobFilter) Empty() bool {
	return f.Status == "" && f.SystemID == "" && !f.failure() && f.From == nil && f.To == nil
}

// status is the status f selects: its Status, and failed for a failure
// filter. none: f names a failure and another status, so it selects
// nothing.
func (f JobFilter) status() (status string, none bool) {
	if !f.failure() {
		return f.Status, false
	}
	if f.Status != "" && f.Status != tasks.StatusFailed {
		return "", true
	}
	return tasks.StatusFailed, false
}

// Matches reports whether f selects j, as its query does: a bulk action
// acts on a job only while it still matches.
func (f JobFilter) Matches(j *Job) bool {
	st, none := f.status()
	switch {
	case none, st != "" && j.Status != st, f.SystemID != "" && j.SystemID != f.SystemID:
		return false
	}
	fl := j.Failure
	switch f.FailureKind {
	case "":
	case KindUnknown:
		if fl != nil {
			return false
		}
	default:
		if fl == nil || fl.Kind != f.FailureKind {
			return false
		}
	}
	if f.Step != "" && (fl == nil || fl.Step != f.Step) {
		return false
	}
	if f.Message != "" {
		byFailure := fl != nil && fl.Message == f.Message
		byError := fl == nil && j.Error != nil && *j.Error == f.Message
		if !byFailure && !byError {
			return false
		}
	}
	if f.Fingerprint != "" {
		if _, fp := FailureGroupOf(j); fp != f.Fingerprint {
			return false
		}
	}
	if f.From != nil && j.UpdatedAt.Before(*f.From) {
		return false
	}
	if f.To != nil && !j.UpdatedAt.Before(*f.To) {
		return false
	}
	return true
}

// fnError carries the error of a caller's function through a scan.
type fnError struct{ err error }

func (e fnError) Error() string { return e.err.Error() }

// streamErr is the error of an indexed stream: the callback's own as it
// returned it, the store's wrapped with what was streamed.
func streamErr(ctx context.Context, what string, err error) error {
	var fnErr fnError
	if errors.As(err, &fnErr) {
		return fnErr.err
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, unavailable(ctx, err))
	}
	return nil
}

// query is the MongoDB filter of f.
func (f JobFilter) query() bson.D {
	st, none := f.status()
	if none {
		return bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: bson.A{}}}}}
	}
	q := bson.D{}
	if st != "" {
		q = append(q, bson.E{Key: "status", Value: st})
	}
	if f.SystemID != "" {
		q = append(q, bson.E{Key: "systemId", Value: f.SystemID})
	}
	switch f.FailureKind {
	case "":
	case KindUnknown:
		q = append(q, bson.E{Key: "failure", Value: nil})
	default:
		q = append(q, bson.E{Key: "failure.kind", Value: f.FailureKind})
	}
	if f.Step != "" {
		q = append(q, bson.E{Key: "failure.step", Value: f.Step})
	}
	if f.Message != "" {
		q = append(q, bson.E{Key: "$or", Value: bson.A{
			bson.D{{Key: "failure.message", Value: f.Message}},
			bson.D{{Key: "failure", Value: nil}, {Key: "error", Value: f.Message}},
		}})
	}
	if f.From != nil || f.To != nil {
		r := bson.D{}
		if f.From != nil {
			r = append(r, bson.E{Key: "$gte", Value: f.From.UTC()})
		}
		if f.To != nil {
			r = append(r, bson.E{Key: "$lt", Value: f.To.UTC()})
		}
		q = append(q, bson.E{Key: "updatedAt", Value: r})
	}
	return q
}

// ListJobs returns the jobs f selects, newest first, f.Limit of them after
// f.Offset.
func (s *Store) ListJobs(ctx context.Context, f JobFilter) ([]*Job, error) {
	ctx, cancel := s.scanCtx(ctx)
	defer cancel()
	if f.Limit <= 0 {
		f.Limit = 50
	}
	f.Limit = min(f.Limit, 500)
	if f.Fingerprint != "" {
		return s.listByFingerprint(ctx, f)
	}
	if s.idx != nil {
		out, err := s.listJobsIndexed(ctx, f)
		if err != nil {
			return nil, fmt.Errorf("list jobs: %w", unavailable(ctx, err))
		}
		return out, nil
	}
	opts := options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}}).SetLimit(int64(f.Limit))
	if f.Offset > 0 {
		opts.SetSkip(int64(f.Offset))
	}
	cur, err := s.jobs.Find(ctx, f.query(), opts)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", unavailable(ctx, err))
	}
	var out []*Job
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list jobs: %w", unavailable(ctx, err))
	}
	return out, nil
}

// CountJobs counts the jobs f selects (its Limit and Offset aside).
func (s *Store) CountJobs(ctx context.Context, f JobFilter) (int64, error) {
	ctx, cancel := s.scanCtx(ctx)
	defer cancel()
	if f.Fingerprint != "" {
		return s.countByFingerprint(ctx, f)
	}
	if s.idx != nil {
		n, err := s.countJobsIndexed(ctx, f)
		if err != nil {
			return 0, fmt.Errorf("count jobs: %w", unavailable(ctx, err))
		}
		return n, nil
	}
	n, err := s.jobs.CountDocuments(ctx, f.query())
	if err != nil {
		return 0, fmt.Errorf("count jobs: %w", unavailable(ctx, err))
	}
	return n, nil
}

// JobRef names one job's run: what a bulk action keeps of each job it
// matched.
type JobRef struct {
	JobID   string `json:"jobId" bson:"jobId"`
	EventID string `json:"eventId,omitempty" bson:"eventId,omitempty"`
}

// EachJobRef calls fn for every job f selects, however many, through one
// streamed cursor that reads only the ids (its Limit and Offset aside). An
// error of fn stops it and is returned.
func (s *Store) EachJobRef(ctx context.Context, f JobFilter, fn func(JobRef) error) error {
	if f.Fingerprint != "" {
		return s.eachRefByFingerprint(ctx, f, fn)
	}
	if s.idx != nil {
		return streamErr(ctx, "select jobs", s.eachJobRefIndexed(ctx, f, fn))
	}
	fctx, cancel := s.scanCtx(ctx)
	cur, err := s.jobs.Find(fctx, f.query(), options.Find().SetBatchSize(1000).
		SetProjection(bson.D{{Key: "id", Value: 1}, {Key: "eventId", Value: 1}}))
	cancel()
	if err != nil {
		return fmt.Errorf("select jobs: %w", unavailable(ctx, err))
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for s.next(ctx, cur) {
		var ref struct {
			ID      string `bson:"id"`
			EventID string `bson:"eventId"`
		}
		if err := cur.Decode(&ref); err != nil {
			return fmt.Errorf("select jobs: %w", err)
		}
		if err := fn(JobRef{JobID: ref.ID, EventID: ref.EventID}); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("select jobs: %w", unavailable(ctx, err))
	}
	return nil
}

// FailureGroup is the failed jobs that share a failure kind, step and
// fingerprint (FailurePattern): their messages differ only in ids, times
// and numbers. Message is the newest job's, as it was written.
type FailureGroup struct {
	Kind        string    `json:"kind" bson:"kind"`
	Step        string    `json:"step,omitempty" bson:"step"`
	Message     string    `json:"message" bson:"message"`
	Pattern     string    `json:"pattern" bson:"pattern"`
	Fingerprint string    `json:"fingerprint" bson:"fingerprint"`
	Count       int       `json:"count" bson:"count"`
	NewestAt    time.Time `json:"newestAt" bson:"newestAt"`
	OldestAt    time.Time `json:"oldestAt" bson:"oldestAt"`
}

// FailureGroups groups every failed job f selects (its Status is failed
// whatever it says) by failure kind, step and fingerprint: however many
// and however old, not the newest page. Largest groups first. The jobs are
// streamed, their failure fields alone, and grouped here: FerretDB v1's
// $group has no $max, $min, $first or $ifNull, and no fingerprint.
func (s *Store) FailureGroups(ctx context.Context, f JobFilter) ([]FailureGroup, error) {
	if _, none := f.status(); none {
		return []FailureGroup{}, nil
	}
	f.Status = "failed"
	out := []FailureGroup{}
	type key struct{ kind, step, fp string }
	idx := map[key]int{}
	each := func(fn func(*failureFields, string) error) error {
		return s.eachFailure(ctx, f.query(), f.Fingerprint, nil, fn)
	}
	if s.idx != nil {
		// The failed jobs' rows alone (the embedded store's index).
		each = func(fn func(*failureFields, string) error) error { return s.eachFailureIndexed(ctx, f, fn) }
	}
	err := each(func(j *failureFields, pattern string) error {
		kind, step, msg, _ := j.group()
		k := key{kind, step, Fingerprint(pattern)}
		i, ok := idx[k]
		if !ok {
			i = len(out)
			idx[k] = i
			out = append(out, FailureGroup{Kind: kind, Step: step, Message: msg, Pattern: pattern, Fingerprint: k.fp})
		}
		g := &out[i]
		g.Count++
		if j.UpdatedAt.After(g.NewestAt) {
			g.NewestAt, g.Message = j.UpdatedAt, msg
		}
		if g.OldestAt.IsZero() || j.UpdatedAt.Before(g.OldestAt) {
			g.OldestAt = j.UpdatedAt
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("group failures: %w", err)
	}
	sortGroups(out)
	return out, nil
}
