package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// AuditCollection holds the audit trail: one document per operator action.
const AuditCollection = "audit"

// AuditEntry is one operator action (retry, cancel, breaker reset, an
// asynqmon change, a bulk action): who did what to what, when.
type AuditEntry struct {
	// ID is the document's _id: the time of the action first, so that
	// sorting on _id, the one index FerretDB serves, is newest first.
	ID     string    `json:"-" bson:"_id"`
	At     time.Time `json:"at" bson:"at"`
	User   string    `json:"user" bson:"user"`
	Action string    `json:"action" bson:"action"`
	Target string    `json:"target" bson:"target"`
	// Filter is what a bulk action selected, kept in its JSON form.
	Filter any  `json:"filter,omitempty" bson:"filter,omitempty"`
	Count  *int `json:"count,omitempty" bson:"count,omitempty"`
	// DryRun marks an action that only counted what it would do.
	DryRun bool   `json:"dryRun,omitempty" bson:"dryRun,omitempty"`
	Detail string `json:"detail,omitempty" bson:"detail,omitempty"`
}

// AuditQuery selects audit entries, newest first.
type AuditQuery struct {
	// Limit caps the entries. 0: 50; at most 500.
	Limit int
	// User and Action, when set, keep only the entries with that value.
	User, Action string
}

// Limits of ListAudit.
const (
	DefaultAuditLimit = 50
	MaxAuditLimit     = 500
)

// auditIDTime is the time part of an entry's _id. Fixed width (nine
// fractional digits kept) so that the strings sort as the times do;
// RFC3339Nano drops trailing zeros and would not.
const auditIDTime = "2006-01-02T15:04:05.000000000Z"

// RecordAudit stores e (At defaults to now). It returns once the entry is
// durable, as every write of the store does.
func (s *Store) RecordAudit(ctx context.Context, e AuditEntry) error {
	if e.At.IsZero() {
		e.At = time.Now()
	}
	e.At = e.At.UTC()
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	e.ID = e.At.Format(auditIDTime) + "|" + hex.EncodeToString(rnd[:])
	f, err := jsonForm(e.Filter)
	if err != nil {
		return fmt.Errorf("record audit: filter: %w", err)
	}
	e.Filter = f
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	err = s.write(ctx, func(ctx context.Context) error {
		_, err := s.audit.InsertOne(ctx, e)
		return err
	})
	if err != nil {
		return fmt.Errorf("record audit: %w", err)
	}
	return nil
}

// jsonForm turns v into the plain maps, lists and values of its JSON form,
// so a caller's filter struct is stored (and read back) with its JSON field
// names, not the lower-cased Go names BSON would give it.
func jsonForm(v any) (any, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// ListAudit returns the entries q selects, newest first.
func (s *Store) ListAudit(ctx context.Context, q AuditQuery) ([]AuditEntry, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if q.Limit <= 0 {
		q.Limit = DefaultAuditLimit
	}
	q.Limit = min(q.Limit, MaxAuditLimit)
	filter := bson.D{}
	if q.User != "" {
		filter = append(filter, bson.E{Key: "user", Value: q.User})
	}
	if q.Action != "" {
		filter = append(filter, bson.E{Key: "action", Value: q.Action})
	}
	cur, err := s.audit.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: -1}}).SetLimit(int64(q.Limit)))
	if err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	out := []AuditEntry{}
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("list audit: %w", err)
	}
	return out, nil
}
