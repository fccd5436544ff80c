package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/bmsview/insights/tasks"
)

// EventsCollection records every eventId a send accepted, one document
// each (`_id` the eventId). It is written by a unique insert, atomic even
// on FerretDB, so an eventId sent again (the Netlify client retries its
// POST with the eventId it made) never starts a second run, whatever the
// job did since; and it finds an event's job through the one index
// FerretDB serves (`_id`) instead of a scan of every job.
const EventsCollection = "insights-events"

// eventRecord is one accepted eventId.
type eventRecord struct {
	EventID string    `bson:"_id"`
	JobID   string    `bson:"jobId"`
	Queue   string    `bson:"queue"`
	At      time.Time `bson:"at"`
}

// recordEvent records run's eventId before its claim. An eventId recorded
// before is answered with the run it named (a duplicate send).
func (s *Store) recordEvent(ctx context.Context, run tasks.Run) (*tasks.Existing, error) {
	rec := eventRecord{EventID: run.EventID, JobID: run.JobID, Queue: run.Queue, At: time.Now().UTC()}
	err := s.write(ctx, func(ctx context.Context) error { _, err := s.events.InsertOne(ctx, rec); return err })
	if err == nil {
		return nil, nil
	}
	if !mongo.IsDuplicateKeyError(err) {
		return nil, fmt.Errorf("record event %s: %w", run.EventID, unavailable(ctx, err))
	}
	var prev eventRecord
	if err := s.events.FindOne(ctx, bson.D{{Key: "_id", Value: run.EventID}}).Decode(&prev); err != nil {
		return nil, fmt.Errorf("read event %s: %w", run.EventID, unavailable(ctx, err))
	}
	if prev.JobID != run.JobID {
		return nil, &tasks.FieldError{Field: "eventId", Message: fmt.Sprintf("event %s was already sent for job %s", run.EventID, prev.JobID)}
	}
	return &tasks.Existing{EventID: prev.EventID, Queue: prev.Queue}, nil
}

// forgetEvent removes an eventId whose send did not go through (its claim
// or its enqueue failed), so that the sender's retry with it is sent.
func (s *Store) forgetEvent(ctx context.Context, eventID string) error {
	err := s.write(ctx, func(ctx context.Context) error {
		_, err := s.events.DeleteOne(ctx, bson.D{{Key: "_id", Value: eventID}})
		return err
	})
	if err != nil {
		return fmt.Errorf("forget event %s: %w", eventID, unavailable(ctx, err))
	}
	return nil
}

// eventJobID is the jobId an eventId was sent for; ErrNotFound when it
// was never recorded (sent before events were, or never).
func (s *Store) eventJobID(ctx context.Context, eventID string) (string, error) {
	var rec eventRecord
	err := s.events.FindOne(ctx, bson.D{{Key: "_id", Value: eventID}}).Decode(&rec)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("read event %s: %w", eventID, unavailable(ctx, err))
	}
	return rec.JobID, nil
}
