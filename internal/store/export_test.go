package store

import (
	"context"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// QueuedWrites is how many writes wait for a group (tests).
func (s *Store) QueuedWrites() int { return len(s.group.queue) }

// RawJobUpdate sends update for job id as the store's own writes go (tests).
func (s *Store) RawJobUpdate(ctx context.Context, id string, update any) error {
	_, err := s.update(ctx, s.jobs, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: id}}).SetUpdate(update))
	return err
}
