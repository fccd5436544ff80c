package store

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Bulk actions: an operator's retry, cancel or delete of every job a
// filter selects. The jobs matched are written first, in chunks of a few
// hundred ids (one document each: on FerretDB an insert costs a fraction
// of an update and only `_id` lookups use an index), then worked through
// chunk by chunk; the action's document records the next chunk, so an
// action cut off by a crash resumes where it was, and each chunk keeps the
// outcome of each of its jobs.
const (
	bulkOpsCollection    = "bulk-ops"
	bulkChunksCollection = "bulk-chunks"
)

// Bulk action statuses.
const (
	BulkSelecting = "selecting" // the matched jobs are being written
	BulkRunning   = "running"
	BulkDone      = "done"
)

// Bulk outcomes of one job.
const (
	OutcomeDone    = "done"
	OutcomeFailed  = "failed"  // the action failed (a store down...)
	OutcomeSkipped = "skipped" // the job was in no state for it (a completed job cancelled...)
	OutcomePending = "pending" // not acted on yet
)

// BulkOp is one bulk action.
type BulkOp struct {
	ID     string    `json:"id" bson:"_id"`
	Action string    `json:"action" bson:"action"`
	Filter JobFilter `json:"filter" bson:"filter"`
	User   string    `json:"user,omitempty" bson:"user,omitempty"`
	Status string    `json:"status" bson:"status"`
	// Matched is the jobs the filter selected when the action started;
	// Done, Failed and Skipped count their outcomes so far.
	Matched int `json:"matched" bson:"matched"`
	Done    int `json:"done" bson:"done"`
	Failed  int `json:"failed" bson:"failed"`
	Skipped int `json:"skipped" bson:"skipped"`
	// Chunks is how many chunks hold the matched jobs; Next is the first
	// not yet worked through.
	Chunks     int        `json:"chunks" bson:"chunks"`
	Next       int        `json:"next" bson:"next"`
	CreatedAt  time.Time  `json:"createdAt" bson:"createdAt"`
	UpdatedAt  time.Time  `json:"updatedAt" bson:"updatedAt"`
	FinishedAt *time.Time `json:"finishedAt,omitempty" bson:"finishedAt,omitempty"`
}

// BulkChunk is a slice of a bulk action's matched jobs with their
// outcomes, in the same order.
type BulkChunk struct {
	ID       string        `json:"-" bson:"_id"`
	Op       string        `json:"-" bson:"op"`
	Index    int           `json:"index" bson:"index"`
	Jobs     []JobRef      `json:"jobs" bson:"jobs"`
	Outcomes []BulkOutcome `json:"outcomes" bson:"outcomes"`
}

// BulkOutcome is what a bulk action did to one job.
type BulkOutcome struct {
	JobID   string `json:"jobId" bson:"jobId"`
	EventID string `json:"eventId,omitempty" bson:"eventId,omitempty"`
	Outcome string `json:"outcome" bson:"outcome"`
	// Detail says what was done or why not ("run", "re-enqueued", "job is
	// completed"...).
	Detail string `json:"detail,omitempty" bson:"detail,omitempty"`
}

func bulkChunkID(op string, i int) string { return op + ":" + strconv.Itoa(i) }

// CreateBulkOp records a new bulk action (status BulkSelecting).
func (s *Store) CreateBulkOp(ctx context.Context, op *BulkOp) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	err := s.write(ctx, func(ctx context.Context) error { _, err := s.bulkOps.InsertOne(ctx, op); return err })
	if err != nil {
		return fmt.Errorf("record bulk action: %w", unavailable(ctx, err))
	}
	return nil
}

// AddBulkChunk writes chunk i of op's matched jobs.
func (s *Store) AddBulkChunk(ctx context.Context, op string, i int, jobs []JobRef) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	c := BulkChunk{ID: bulkChunkID(op, i), Op: op, Index: i, Jobs: jobs, Outcomes: []BulkOutcome{}}
	err := s.write(ctx, func(ctx context.Context) error {
		_, err := s.bulkChunks.ReplaceOne(ctx, bson.D{{Key: "_id", Value: c.ID}}, c, options.Replace().SetUpsert(true))
		return err
	})
	if err != nil {
		return fmt.Errorf("record bulk chunk: %w", unavailable(ctx, err))
	}
	return nil
}

// SaveBulkChunk records the outcomes of a chunk.
func (s *Store) SaveBulkChunk(ctx context.Context, c *BulkChunk) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	_, err := s.update(ctx, s.bulkChunks, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: c.ID}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "outcomes", Value: c.Outcomes}}}}))
	if err != nil {
		return fmt.Errorf("record bulk outcomes: %w", unavailable(ctx, err))
	}
	return nil
}

// SaveBulkOp records a bulk action's status and counts (its one writer is
// the process working it through).
func (s *Store) SaveBulkOp(ctx context.Context, op *BulkOp) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	op.UpdatedAt = time.Now().UTC()
	_, err := s.update(ctx, s.bulkOps, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: op.ID}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{
			{Key: "status", Value: op.Status}, {Key: "matched", Value: op.Matched}, {Key: "chunks", Value: op.Chunks},
			{Key: "next", Value: op.Next}, {Key: "done", Value: op.Done}, {Key: "failed", Value: op.Failed},
			{Key: "skipped", Value: op.Skipped}, {Key: "updatedAt", Value: op.UpdatedAt}, {Key: "finishedAt", Value: op.FinishedAt},
		}}}))
	if err != nil {
		return fmt.Errorf("record bulk action: %w", unavailable(ctx, err))
	}
	return nil
}

// ClaimBulkOp takes over a bulk action nobody has written since before
// stale (its process died): it returns the action, or ErrNotFound when it
// is finished or still being worked. On FerretDB the check and the write
// are not atomic, which is safe for its one process.
func (s *Store) ClaimBulkOp(ctx context.Context, id string, stale time.Time) (*BulkOp, error) {
	op, err := s.GetBulkOp(ctx, id)
	if err != nil {
		return nil, err
	}
	if op.Status == BulkDone || !op.UpdatedAt.Before(stale) {
		return nil, ErrNotFound
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	now := time.Now().UTC()
	matched, err := s.update(ctx, s.bulkOps, mongo.NewUpdateOneModel().
		SetFilter(bson.D{{Key: "_id", Value: id}, {Key: "updatedAt", Value: op.UpdatedAt}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "updatedAt", Value: now}}}}))
	if err != nil {
		return nil, fmt.Errorf("claim bulk action: %w", unavailable(ctx, err))
	}
	if !matched {
		return nil, ErrNotFound
	}
	op.UpdatedAt = now
	return op, nil
}

// GetBulkOp reads one bulk action.
func (s *Store) GetBulkOp(ctx context.Context, id string) (*BulkOp, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var op BulkOp
	err := s.bulkOps.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&op)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read bulk action: %w", unavailable(ctx, err))
	}
	return &op, nil
}

// GetBulkChunk reads chunk i of op.
func (s *Store) GetBulkChunk(ctx context.Context, op string, i int) (*BulkChunk, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var c BulkChunk
	err := s.bulkChunks.FindOne(ctx, bson.D{{Key: "_id", Value: bulkChunkID(op, i)}}).Decode(&c)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read bulk chunk: %w", unavailable(ctx, err))
	}
	return &c, nil
}

// ListBulkOps returns bulk actions newest first: unfinished ones only when
// unfinished is set (to resume them), at most limit (0: 50).
func (s *Store) ListBulkOps(ctx context.Context, unfinished bool, limit int) ([]*BulkOp, error) {
	ctx, cancel := s.scanCtx(ctx)
	defer cancel()
	q := bson.D{}
	if unfinished {
		q = append(q, bson.E{Key: "status", Value: bson.D{{Key: "$ne", Value: BulkDone}}})
	}
	cur, err := s.bulkOps.Find(ctx, q, options.Find().SetSort(bson.D{{Key: "createdAt", Value: -1}}).SetLimit(int64(cmp.Or(limit, 50))))
	if err != nil {
		return nil, fmt.Errorf("list bulk actions: %w", unavailable(ctx, err))
	}
	var out []*BulkOp
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list bulk actions: %w", unavailable(ctx, err))
	}
	return out, nil
}

// sortGroups puts the largest failure groups first, then the newest.
func sortGroups(gs []FailureGroup) {
	slices.SortStableFunc(gs, func(a, b FailureGroup) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return b.NewestAt.Compare(a.NewestAt)
	})
}
