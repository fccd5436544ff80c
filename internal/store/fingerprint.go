package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// A failure's fingerprint groups the jobs that failed for one reason: its
// message with what differs from job to job (the job's own ids, UUIDs, hex
// ids, times, durations, numbers) replaced by placeholders, so "job
// orphan-3 is missing its request" and "job orphan-7 is missing its
// request" are one group, as Sentry and Sidekiq's error trackers group.

// noFailureMessage is the message of a failed job that records none.
const noFailureMessage = "(no error recorded)"

var (
	uuidRE     = regexp.MustCompile(`(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b`)
	timeRE     = regexp.MustCompile(`\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\b`)
	hexRE      = regexp.MustCompile(`\b(0x)?[0-9a-fA-F]{8,}\b`)
	durationRE = regexp.MustCompile(`\b\d+(\.\d+)?(ns|us|µs|ms|s|m|h)(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))*\b`)
	numberRE   = regexp.MustCompile(`\b\d+(\.\d+)?\b`)
	addrRE     = regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}(:\d+)?\b`)
	spaceRE    = regexp.MustCompile(`\s+`)
)

// FailurePattern is msg with what varies between jobs replaced: the
// given ids (the job's id, eventId, systemId) by <id>, then UUIDs, times,
// IP addresses, hex ids of 8 or more digits, durations and numbers.
func FailurePattern(msg string, ids ...string) string {
	for _, id := range ids {
		if len(id) >= 3 { // shorter ones would match inside words
			msg = strings.ReplaceAll(msg, id, "<id>")
		}
	}
	msg = uuidRE.ReplaceAllString(msg, "<uuid>")
	msg = timeRE.ReplaceAllString(msg, "<time>")
	msg = addrRE.ReplaceAllString(msg, "<addr>")
	msg = hexRE.ReplaceAllStringFunc(msg, func(h string) string {
		if !strings.ContainsAny(h, "0123456789") {
			return h // a word such as "deadline" is not an id
		}
		return "<hex>"
	})
	msg = durationRE.ReplaceAllString(msg, "<duration>")
	msg = numberRE.ReplaceAllString(msg, "<n>")
	return strings.TrimSpace(spaceRE.ReplaceAllString(msg, " "))
}

// Fingerprint names a failure pattern in 16 hex digits: the failures
// page's group, and the `fingerprint` of a job filter.
func Fingerprint(pattern string) string {
	sum := sha256.Sum256([]byte(pattern))
	return hex.EncodeToString(sum[:8])
}

// failureFields are the fields of a job its failure group is made of.
type failureFields struct {
	DocID     any       `bson:"_id"`
	ID        string    `bson:"id"`
	EventID   string    `bson:"eventId"`
	SystemID  string    `bson:"systemId"`
	Failure   *Failure  `bson:"failure"`
	Error     *string   `bson:"error"`
	UpdatedAt time.Time `bson:"updatedAt"`
}

var failureProjection = bson.D{{Key: "id", Value: 1}, {Key: "eventId", Value: 1}, {Key: "systemId", Value: 1},
	{Key: "failure", Value: 1}, {Key: "error", Value: 1}, {Key: "updatedAt", Value: 1}}

// group is the job's failure group: kind, step, message and its pattern.
func (j *failureFields) group() (kind, step, message, pattern string) {
	kind, message = KindUnknown, noFailureMessage
	switch {
	case j.Failure != nil:
		kind, step, message = j.Failure.Kind, j.Failure.Step, j.Failure.Message
	case j.Error != nil:
		message = *j.Error // failed by the app's own workload
	}
	return kind, step, message, FailurePattern(message, j.ID, j.EventID, j.SystemID)
}

// FailureGroupOf is the fingerprint of a job's last failure, as the
// failures page groups it.
func FailureGroupOf(j *Job) (pattern, fingerprint string) {
	f := failureFields{ID: j.ID, EventID: j.EventID, SystemID: j.SystemID, Failure: j.Failure, Error: j.Error}
	_, _, _, pattern = f.group()
	return pattern, Fingerprint(pattern)
}

// eachFailure streams the failure fields of every job q selects whose
// failure has fingerprint fp ("" for all), in sort order (nil: any).
func (s *Store) eachFailure(ctx context.Context, q bson.D, fp string, sort bson.D, fn func(*failureFields, string) error) error {
	opts := options.Find().SetBatchSize(1000).SetProjection(failureProjection)
	if sort != nil {
		opts.SetSort(sort)
	}
	fctx, cancel := s.scanCtx(ctx)
	cur, err := s.jobs.Find(fctx, q, opts)
	cancel()
	if err != nil {
		return unavailable(ctx, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for s.next(ctx, cur) {
		var j failureFields
		if err := cur.Decode(&j); err != nil {
			return err
		}
		_, _, _, pattern := j.group()
		if fp != "" && Fingerprint(pattern) != fp {
			continue
		}
		if err := fn(&j, pattern); err != nil {
			return err
		}
	}
	return unavailable(ctx, cur.Err())
}

// listByFingerprint is ListJobs of a filter with a Fingerprint: the
// matching ids are found on the failure fields alone, then the page's
// jobs read one by one by _id (the one lookup FerretDB pushes down).
func (s *Store) listByFingerprint(ctx context.Context, f JobFilter) ([]*Job, error) {
	var page []any
	skip := f.Offset
	stop := fmt.Errorf("page full")
	err := s.eachFailure(ctx, f.query(), f.Fingerprint, bson.D{{Key: "createdAt", Value: -1}}, func(j *failureFields, _ string) error {
		if skip > 0 {
			skip--
			return nil
		}
		page = append(page, j.DocID)
		if len(page) == f.Limit {
			return stop
		}
		return nil
	})
	if err != nil && err != stop { //nolint:errorlint // our own sentinel, never wrapped
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	out := make([]*Job, 0, len(page))
	for _, id := range page {
		var j Job
		fctx, cancel := s.ctx(ctx)
		err := s.jobs.FindOne(fctx, bson.D{{Key: "_id", Value: id}}).Decode(&j)
		cancel()
		if err != nil {
			continue // gone meanwhile
		}
		out = append(out, &j)
	}
	return out, nil
}

// countByFingerprint is CountJobs of a filter with a Fingerprint.
func (s *Store) countByFingerprint(ctx context.Context, f JobFilter) (int64, error) {
	var n int64
	err := s.eachFailure(ctx, f.query(), f.Fingerprint, nil, func(*failureFields, string) error { n++; return nil })
	if err != nil {
		return 0, fmt.Errorf("count jobs: %w", err)
	}
	return n, nil
}

// eachRefByFingerprint is EachJobRef of a filter with a Fingerprint.
func (s *Store) eachRefByFingerprint(ctx context.Context, f JobFilter, fn func(JobRef) error) error {
	return s.eachFailure(ctx, f.query(), f.Fingerprint, nil, func(j *failureFields, _ string) error {
		return fn(JobRef{JobID: j.ID, EventID: j.EventID})
	})
}
