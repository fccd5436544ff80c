package store

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// ReloadJob reads job again by its document `_id`, for a reader that polls
// one job (the job page's live stream): GetJob looks an app's job (an
// ObjectId `_id`) up by its `id` field, which the embedded FerretDB
// answers by scanning the collection; `_id` is served by its index.
// ErrNotFound when the job was deleted.
func (s *Store) ReloadJob(ctx context.Context, job *Job) (*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var j Job
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: job.docID()}}).Decode(&j); err != nil {
		if errors.Is(err, mongo.ErrNoDocuments) {
			return nil, ErrNotFound
		}
		return nil, fmt.Errorf("read job %s: %w", job.ID, err)
	}
	if j.Steps == nil {
		j.Steps = map[string]StepState{}
	}
	return &j, nil
}
