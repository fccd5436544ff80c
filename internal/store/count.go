package store

import (
	"context"
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// CountHistory reports whether a system has history (0 or 1: it stops at
// the first record, which is all the demo needs to know).
func (s *Store) CountHistory(ctx context.Context, systemID string) (int64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	n, err := s.history.CountDocuments(ctx, bson.D{{Key: "systemId", Value: systemID}}, options.Count().SetLimit(1))
	if err != nil {
		return 0, fmt.Errorf("count history: %w", err)
	}
	return n, nil
}
