package store

import (
	"context"
	"errors"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// ReloadJob reads job again by its document `_id`, for a reader that polls
// one job (the job page's live stream): GetJob looks an app's job (an
// ObjectId `_id`) up by its `id` field, which the embedded FerretDB
// answers by scanning the collection; `_id` is served by its index.
// ErrNotFound when the job was deleted.
func (s *Store) ReloadJob(ctx context.Context, job *Job) (*Job, error) {
	return s.reload(ctx, job, nil)
}

// liveProjection leaves out of a live read what a run never changes or
// only its end writes, and what makes a job large: the snapshot
// (analysisData, up to the 500 KB of a send), the report and the prompt.
var liveProjection = bson.D{{Key: "analysisData", Value: 0}, {Key: "finalInsights", Value: 0}, {Key: "customPrompt", Value: 0}}

// ReloadLive is ReloadJob for the live stream: the job without its
// request's snapshot, its prompt and its report (AnalysisData,
// CustomPrompt and FinalInsights are left unset), which a followed run
// never changes and its events do not carry. The driver and the service
// decode a few KB a read instead of the whole document.
func (s *Store) ReloadLive(ctx context.Context, job *Job) (*Job, error) {
	return s.reload(ctx, job, liveProjection)
}

func (s *Store) reload(ctx context.Context, job *Job, projection bson.D) (*Job, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	opts := options.FindOne()
	if projection != nil {
		opts.SetProjection(projection)
	}
	var j Job
	if err := s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: job.docID()}}, opts).Decode(&j); err != nil {
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
