package store

// The systems and history collections, read in the BMS app's shapes
// (docs/DESIGN.md section 7): systems found by their `id`, history records with
// ISO-8601 string timestamps (BSON dates are read too) and only the app's
// own fields. *Store is an insights.HistorySource.
//
// Hourly rollups are computed in Go from one streamed read of the window:
// FerretDB v1's aggregation has no date or conditional operators and its
// $group evaluates only its first accumulator, and the app's records carry
// nothing precomputed. The window is read by the {systemId, timestamp}
// index on MongoDB; on the embedded FerretDB, which pushes no filter but an
// _id equality down to SQLite, through Config.HistoryWindow (devstack reads
// SQLite's own index), so the cost grows with the window, not with the
// collection.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/insights"
)

// HistoryBatchSize is the InsertMany batch and the cursor batch of
// EachRecord.
const HistoryBatchSize = 1000

// HistoryScanTimeout bounds the first round trip of a history read (the
// find that opens the cursor) when ctx has no deadline of its own: a
// FerretDB without HistoryWindow decodes the whole collection before it
// answers. An unreachable server still fails within the client's server
// selection timeout (the per-call one).
const HistoryScanTimeout = 5 * time.Minute

func (s *Store) scanCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, max(HistoryScanTimeout, s.opTimeout))
}

var _ insights.HistorySource = (*Store)(nil)

// System returns a system by its `id` (the app's systems) or its `_id`
// (the demo's, whose `_id` is the id); (nil, nil) when there is none.
func (s *Store) System(ctx context.Context, systemID string) (*bms.System, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var sys bms.System
	err := findByID(ctx, s.systems, systemID, &sys)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: load system %s: %w", systemID, unavailable(ctx, err))
	}
	if sys.ID == "" {
		sys.ID = systemID
	}
	return &sys, nil
}

// UpsertSystem creates or updates a system with `_id` = `id` (the demo's
// and the data generator's systems). A stored lastInsights is kept unless
// sys carries one.
func (s *Store) UpsertSystem(ctx context.Context, sys bms.System) error {
	if sys.ID == "" {
		return errors.New("store: system without id")
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	set := bson.D{
		{Key: "id", Value: sys.ID},
		{Key: "name", Value: sys.Name},
		{Key: "chemistry", Value: sys.Chemistry},
		{Key: "voltage", Value: sys.Voltage},
		{Key: "capacity", Value: sys.Capacity},
		{Key: "latitude", Value: sys.Latitude},
		{Key: "longitude", Value: sys.Longitude},
		{Key: "associatedHardwareIds", Value: append([]string{}, sys.AssociatedHardwareIDs...)},
		{Key: "maxAmpsSolarCharging", Value: sys.MaxAmpsSolarCharging},
		{Key: "maxAmpsGeneratorCharging", Value: sys.MaxAmpsGeneratorCharging},
	}
	if sys.LastInsights != nil {
		set = append(set, bson.E{Key: "lastInsights", Value: sys.LastInsights})
	}
	_, err := s.update(ctx, s.systems, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: sys.ID}}).
		SetUpdate(bson.D{{Key: "$set", Value: set}}).SetUpsert(true))
	if err != nil {
		return fmt.Errorf("store: upsert system %s: %w", sys.ID, err)
	}
	return nil
}

// SetLastInsights stores v as the system's lastInsights, on the app's
// document (found by `id`) or the demo's (by `_id`). v's "completedAt" (a
// time.Time) orders the writes: a follow-up retried late never replaces
// the insights of a run that completed after it. It never creates a
// system: ErrNotFound when there is none.
func (s *Store) SetLastInsights(ctx context.Context, systemID string, v map[string]any) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	held, err := s.lockSystem(ctx, systemID)
	if err != nil {
		return fmt.Errorf("store: set lastInsights of %s: %w", systemID, err)
	}
	defer held.unlock()
	var cur struct {
		DocID any            `bson:"_id"`
		Last  map[string]any `bson:"lastInsights"`
	}
	err = findByID(ctx, s.systems, systemID, &cur)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return fmt.Errorf("store: system %s: %w", systemID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("store: set lastInsights of %s: %w", systemID, err)
	}
	at, _ := v["completedAt"].(time.Time)
	if prev, ok := instant(cur.Last["completedAt"]); ok && !at.IsZero() && prev.After(at) {
		return nil // a later run's insights are there already
	}
	filter := bson.D{{Key: "_id", Value: cur.DocID}}
	if !s.ferret && !at.IsZero() {
		// On MongoDB the order holds in the update itself (FerretDB's run
		// lock orders it there).
		filter = append(filter, bson.E{Key: "lastInsights.completedAt", Value: bson.D{{Key: "$not", Value: bson.D{{Key: "$gt", Value: at}}}}})
	}
	update := bson.D{{Key: "$set", Value: bson.D{{Key: "lastInsights", Value: v}}}}
	if _, err := s.update(ctx, s.systems, mongo.NewUpdateOneModel().SetFilter(filter).SetUpdate(update)); err != nil {
		return fmt.Errorf("store: set lastInsights of %s: %w", systemID, err)
	}
	return nil
}

// instant reads a stored time: a BSON date, or an ISO-8601 string as the
// app writes its own.
func instant(v any) (time.Time, bool) {
	switch t := v.(type) {
	case bson.DateTime:
		return t.Time(), true
	case time.Time:
		return t, true
	case string:
		p, err := time.Parse(time.RFC3339Nano, t)
		return p, err == nil
	}
	return time.Time{}, false
}

// historyDoc is a history document as the app writes it.
type historyDoc struct {
	ID         any `bson:"_id"`
	bms.Record `bson:",inline"`
	UpdatedAt  string `bson:"updatedAt"`
}

// InsertHistory stores records in the app's shape (ISO string timestamps;
// `_id` = `id`, as the app's analysis pipeline writes it, or a new ObjectId
// for a record without an id), in InsertMany batches. Inserting a record
// whose id is already stored is not an error (seeding twice is harmless);
// any other failure is.
func (s *Store) InsertHistory(ctx context.Context, recs []bms.Record) error {
	now := time.Now().UTC().Format(bms.ISO)
	for start := 0; start < len(recs); start += HistoryBatchSize {
		batch := recs[start:min(start+HistoryBatchSize, len(recs))]
		docs := make([]any, len(batch))
		for i, r := range batch {
			var id any = r.ID
			if r.ID == "" {
				oid := bson.NewObjectID()
				id, r.ID = oid, oid.Hex()
			}
			docs[i] = historyDoc{ID: id, Record: r, UpdatedAt: now}
		}
		cctx, cancel := s.ctx(ctx)
		err := s.write(cctx, func(ctx context.Context) error {
			_, err := s.history.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
			if onlyDuplicates(err) {
				return nil
			}
			return err
		})
		cancel()
		if err != nil {
			return fmt.Errorf("store: insert history (%d of %d stored before): %w", start, len(recs), err)
		}
	}
	return nil
}

func onlyDuplicates(err error) bool {
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil || len(bwe.WriteErrors) == 0 {
		return false
	}
	for _, we := range bwe.WriteErrors {
		if we.Code != 11000 {
			return false
		}
	}
	return true
}

// HistoryWindowFunc reads, in timestamp order, the history documents of
// systemID with from <= timestamp < to, each as JSON in FerretDB's SQLite
// form (dates as Unix milliseconds). The bounds are both ISO strings or
// both Unix milliseconds: one form of timestamp at a time.
type HistoryWindowFunc func(ctx context.Context, database, systemID string, from, to any, fn func(doc []byte) error) error

// EachRecord streams the records of systemID with from <= timestamp < to in
// time order. The app writes ISO strings; BSON dates are read too. The two
// forms sort apart (in MongoDB and in SQLite), so each is its own sorted
// range: the date-form records (rare) are read first, then merged into the
// stream of string-form ones, one read open at a time. Each round trip has
// the store's per-call deadline; the whole stream is bounded only by ctx.
// An error of fn stops the stream and is returned as is.
func (s *Store) EachRecord(ctx context.Context, systemID string, from, to time.Time, fn func(bms.Record) error) error {
	from, to = from.UTC(), to.UTC()
	emit := func(r bms.Record) error {
		if t := r.At(); t.Before(from) || !t.Before(to) {
			return nil // the string range is a second wider for other precisions
		}
		return fn(r)
	}
	var dated []bms.Record
	if err := s.eachInRange(ctx, systemID, from, to, true, func(r bms.Record) error {
		dated = append(dated, r)
		return nil
	}); err != nil {
		return err
	}
	err := s.eachInRange(ctx, systemID, from, to, false, func(r bms.Record) error {
		for len(dated) > 0 && dated[0].At().Before(r.At()) {
			if err := emit(dated[0]); err != nil {
				return err
			}
			dated = dated[1:]
		}
		return emit(r)
	})
	if err != nil {
		return err
	}
	for _, r := range dated {
		if err := emit(r); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// eachInRange reads, in timestamp order, the records of systemID whose
// timestamp is a date (dates) or an ISO string (else, widened by a second
// either side) in [from, to), through HistoryWindow where set, else a find
// on the {systemId, timestamp} index.
func (s *Store) eachInRange(ctx context.Context, systemID string, from, to time.Time, dates bool, fn func(bms.Record) error) error {
	lo, hi := any(from.Add(-time.Second).Format(bms.ISO)), any(to.Add(time.Second).Format(bms.ISO))
	if s.historyWindow != nil {
		if dates {
			lo, hi = from.UnixMilli(), to.UnixMilli()
		}
		var fnErr error
		err := s.historyWindow(ctx, s.db.Name(), systemID, lo, hi, func(doc []byte) error {
			var r bms.Record
			if err := bms.DecodeRecordJSON(doc, &r); err != nil {
				fnErr = fmt.Errorf("store: decode history record: %w", err)
			} else {
				fnErr = fn(r)
			}
			return fnErr
		})
		if err != nil && !errors.Is(err, fnErr) {
			return fmt.Errorf("store: read history of %s: %w", systemID, unavailable(ctx, err))
		}
		return err
	}
	if dates {
		lo, hi = from, to
	}
	fctx, cancel := s.scanCtx(ctx)
	cur, err := s.history.Find(fctx, bson.D{{Key: "systemId", Value: systemID}, {Key: "timestamp", Value: bson.D{{Key: "$gte", Value: lo}, {Key: "$lt", Value: hi}}}},
		options.Find().SetSort(bson.D{{Key: "timestamp", Value: 1}}).SetBatchSize(HistoryBatchSize))
	cancel()
	if err != nil {
		return fmt.Errorf("store: read history of %s: %w", systemID, unavailable(ctx, err))
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for s.next(ctx, cur) {
		var r bms.Record
		if err := cur.Decode(&r); err != nil {
			return fmt.Errorf("store: decode history record: %w", err)
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("store: read history of %s: %w", systemID, unavailable(ctx, err))
	}
	return nil
}

// HourlyRollups aggregates the window per hour from one streamed read of
// it, one hour in memory at a time.
func (s *Store) HourlyRollups(ctx context.Context, systemID string, from, to time.Time) ([]insights.Rollup, error) {
	var out []insights.Rollup
	err := s.EachRecord(ctx, systemID, from, to, func(r bms.Record) error {
		h := r.At().Truncate(time.Hour)
		if n := len(out); n == 0 || !out[n-1].Hour.Equal(h) {
			out = append(out, insights.Rollup{Hour: h})
		}
		out[len(out)-1].Add(r.Analysis)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: hourly rollups of %s: %w", systemID, err)
	}
	return out, nil
}

// next advances cur; a fetch from the server (no batch left) gets the
// per-call deadline, decoding the current batch does not.
func (s *Store) next(ctx context.Context, cur *mongo.Cursor) bool {
	if cur.RemainingBatchLength() > 0 {
		return cur.Next(ctx)
	}
	nctx, cancel := s.ctx(ctx)
	defer cancel()
	return cur.Next(nctx)
}
