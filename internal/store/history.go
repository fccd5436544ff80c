package store

// The systems and history collections (DESIGN.md section 7) and the reads
// the insights engine needs: *Store is an insights.HistorySource.
//
// Hourly rollups and FerretDB v1: its aggregation pipeline has no date
// operators at all (of the expression operators only $sum and $type are
// implemented; $dateTrunc, $hour, $toLong, $divide, $floor, $subtract and
// $cond are in its "unsupported" list, read from
// internal/handler/common/aggregations/operators/operators.go of v1.24.2),
// and $group accumulates only $sum and $count. So each history document
// carries, written at insert time, its hour bucket `hour` (whole hours
// since the Unix epoch) and the per-sample terms of the conditional sums in
// `d` (insights.Derived: charge/discharge power parts, hottest sensor, cell
// spread, the capacity estimate at SOC ≥ 80 %). The rollup is then one
// $match, one $group on "$hour" with $sum only, and a $sort: the same on
// MongoDB and FerretDB. History written by anything other than
// InsertHistory must add those two fields, or it is left out of the
// rollups (it is still read by EachRecord, the full-context mode).
//
// FerretDB v1.24.2 has a further bug: a $group evaluates only its first
// accumulator. All accumulators of a group share one iterator over the
// group's documents (stages/group.go, Process), so the first one drains it
// and every later one sums nothing (a {$sum: 1} after a {$sum: "$x"} gives
// 0). HourlyRollups therefore ends its $group with a second count and
// compares it with the first: on MongoDB they agree and the server's
// result is used; where they differ (FerretDB v1) it remembers that for
// this Store and computes the same rollups in Go from one projected,
// streamed read of the window (rollupsByScan). Never a silently wrong sum.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/bmsview/insights/internal/bms"
	"github.com/bmsview/insights/internal/insights"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// HistoryBatchSize is the InsertMany batch and the cursor batch of
// EachRecord.
const HistoryBatchSize = 1000

// HistoryScanTimeout bounds the first round trip of a history read (the
// find or aggregate that opens the cursor) when ctx has no deadline of its
// own. It is longer than the per-call deadline because FerretDB v1's SQLite
// backend pushes no filter but an _id equality down to SQLite: every
// history query decodes the whole collection in Go before answering, which
// takes seconds per hundred thousand documents. An unreachable server still
// fails within the client's server selection timeout (the per-call one).
const HistoryScanTimeout = 5 * time.Minute

func (s *Store) scanCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, max(HistoryScanTimeout, s.opTimeout))
}

var _ insights.HistorySource = (*Store)(nil)

// historyDoc is a history document as stored: the contract's fields plus
// the rollup helpers.
type historyDoc struct {
	ID        string           `bson:"_id"`
	SystemID  string           `bson:"systemId"`
	Timestamp time.Time        `bson:"timestamp"`
	Analysis  bms.Snapshot     `bson:"analysis"`
	Hour      int64            `bson:"hour"`
	D         insights.Derived `bson:"d"`
}

// System returns a system, (nil, nil) when there is none with that id.
func (s *Store) System(ctx context.Context, systemID string) (*bms.System, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var sys bms.System
	err := s.systems.FindOne(ctx, bson.D{{Key: "_id", Value: systemID}}).Decode(&sys)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: load system %s: %w", systemID, err)
	}
	return &sys, nil
}

// UpsertSystem creates or updates a system. A stored lastInsights is kept
// unless sys carries one.
func (s *Store) UpsertSystem(ctx context.Context, sys bms.System) error {
	if sys.ID == "" {
		return errors.New("store: system without id")
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	set := bson.D{
		{Key: "name", Value: sys.Name},
		{Key: "chemistry", Value: sys.Chemistry},
		{Key: "voltage", Value: sys.Voltage},
		{Key: "capacity", Value: sys.Capacity},
		{Key: "latitude", Value: sys.Latitude},
		{Key: "longitude", Value: sys.Longitude},
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

// SetLastInsights stores v as the system's lastInsights (creating a bare
// system document when there is none).
func (s *Store) SetLastInsights(ctx context.Context, systemID string, v map[string]any) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	_, err := s.update(ctx, s.systems, mongo.NewUpdateOneModel().SetFilter(bson.D{{Key: "_id", Value: systemID}}).
		SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "lastInsights", Value: v}}}}).SetUpsert(true))
	if err != nil {
		return fmt.Errorf("store: set lastInsights of %s: %w", systemID, err)
	}
	return nil
}

// InsertHistory stores records in InsertMany batches, each with its hour
// bucket and derived values. Records without an id get one. Inserting a
// record whose id is already stored is not an error (seeding twice is
// harmless); any other failure is.
func (s *Store) InsertHistory(ctx context.Context, recs []bms.Record) error {
	for start := 0; start < len(recs); start += HistoryBatchSize {
		batch := recs[start:min(start+HistoryBatchSize, len(recs))]
		docs := make([]any, len(batch))
		for i, r := range batch {
			id := r.ID
			if id == "" {
				id = bson.NewObjectID().Hex()
			}
			docs[i] = historyDoc{
				ID: id, SystemID: r.SystemID, Timestamp: r.Timestamp.UTC().Truncate(time.Millisecond),
				Analysis: r.Analysis, Hour: insights.HourNumber(r.Timestamp), D: insights.Derive(r.Analysis),
			}
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

func historyRange(systemID string, from, to time.Time) bson.D {
	return bson.D{
		{Key: "systemId", Value: systemID},
		{Key: "timestamp", Value: bson.D{{Key: "$gte", Value: from.UTC()}, {Key: "$lt", Value: to.UTC()}}},
	}
}

// EachRecord streams the records of systemID with from <= timestamp < to in
// time order through a cursor, HistoryBatchSize at a time. Each round trip
// (the find and every getMore) has the store's per-call deadline; the
// whole stream is bounded only by ctx. An error of fn stops the stream and
// is returned as is.
func (s *Store) EachRecord(ctx context.Context, systemID string, from, to time.Time, fn func(bms.Record) error) error {
	fctx, cancel := s.scanCtx(ctx)
	cur, err := s.history.Find(fctx, historyRange(systemID, from, to),
		options.Find().SetSort(bson.D{{Key: "timestamp", Value: 1}}).SetBatchSize(HistoryBatchSize).
			SetProjection(bson.D{{Key: "hour", Value: 0}, {Key: "d", Value: 0}}))
	cancel()
	if err != nil {
		return fmt.Errorf("store: read history of %s: %w", systemID, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var rec bms.Record
	for {
		if !s.next(ctx, cur) {
			break
		}
		rec = bms.Record{}
		if err := cur.Decode(&rec); err != nil {
			return fmt.Errorf("store: decode history record: %w", err)
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := cur.Err(); err != nil {
		return fmt.Errorf("store: read history of %s: %w", systemID, err)
	}
	return nil
}

// rollupDoc is one $group output. Sums decode as float64 whatever BSON
// number type the server chose.
type rollupDoc struct {
	Hour           *float64 `bson:"_id"`
	Check          float64  `bson:"check"`
	Count          float64  `bson:"count"`
	SumSOC         float64  `bson:"soc"`
	SumVoltage     float64  `bson:"voltage"`
	SumCurrent     float64  `bson:"current"`
	SumPower       float64  `bson:"power"`
	SumRemainingAh float64  `bson:"remaining"`
	SumCycleCount  float64  `bson:"cycles"`
	SumMOSTemp     float64  `bson:"mos"`
	SumChargeW     float64  `bson:"chargeW"`
	SumDischargeW  float64  `bson:"dischargeW"`
	TempCount      float64  `bson:"tempCount"`
	SumTempMax     float64  `bson:"tempMax"`
	CellCount      float64  `bson:"cellCount"`
	SumImbalanceMV float64  `bson:"imbalanceMv"`
	HighSOCCount   float64  `bson:"highSoc"`
	SumEstCapAh    float64  `bson:"estCapAh"`
}

// HourlyRollups aggregates the window per hour in the database: $match on
// the {systemId, timestamp} index, $group on the stored hour bucket with
// $sum only, $sort by hour.
func (s *Store) HourlyRollups(ctx context.Context, systemID string, from, to time.Time) ([]insights.Rollup, error) {
	if _, broken := groupBroken.Load(s); broken {
		return s.rollupsByScan(ctx, systemID, from, to)
	}
	out, ok, err := s.rollupsByGroup(ctx, systemID, from, to)
	if err != nil {
		return nil, err
	}
	if !ok {
		groupBroken.Store(s, true)
		return s.rollupsByScan(ctx, systemID, from, to)
	}
	return out, nil
}

// groupBroken holds the stores whose server evaluates only the first
// accumulator of a $group (FerretDB v1).
var groupBroken sync.Map

// rollupsByGroup is the server-side aggregation; ok is false when the
// server dropped accumulators (the check count disagrees).
func (s *Store) rollupsByGroup(ctx context.Context, systemID string, from, to time.Time) (out []insights.Rollup, ok bool, err error) {
	ctx, cancel := s.scanCtx(ctx)
	defer cancel()
	sum := func(path string) bson.D { return bson.D{{Key: "$sum", Value: path}} }
	pipeline := mongo.Pipeline{
		{{Key: "$match", Value: historyRange(systemID, from, to)}},
		{{Key: "$group", Value: bson.D{
			{Key: "_id", Value: "$hour"},
			{Key: "count", Value: bson.D{{Key: "$sum", Value: 1}}},
			{Key: "soc", Value: sum("$analysis.stateOfCharge")},
			{Key: "voltage", Value: sum("$analysis.overallVoltage")},
			{Key: "current", Value: sum("$analysis.current")},
			{Key: "power", Value: sum("$analysis.power")},
			{Key: "remaining", Value: sum("$analysis.remainingCapacity")},
			{Key: "cycles", Value: sum("$analysis.cycleCount")},
			{Key: "mos", Value: sum("$analysis.mosTemperature")},
			{Key: "chargeW", Value: sum("$d.chargeW")},
			{Key: "dischargeW", Value: sum("$d.dischargeW")},
			{Key: "tempCount", Value: sum("$d.hasTemp")},
			{Key: "tempMax", Value: sum("$d.tempMax")},
			{Key: "cellCount", Value: sum("$d.hasCells")},
			{Key: "imbalanceMv", Value: sum("$d.imbalanceMv")},
			{Key: "highSoc", Value: sum("$d.highSoc")},
			{Key: "estCapAh", Value: sum("$d.estCapAh")},
			// Last on purpose: equals count only where every accumulator ran.
			{Key: "check", Value: bson.D{{Key: "$sum", Value: 1}}},
		}}},
		{{Key: "$sort", Value: bson.D{{Key: "_id", Value: 1}}}},
	}
	cur, err := s.history.Aggregate(ctx, pipeline)
	if err != nil {
		return nil, false, fmt.Errorf("store: hourly rollups of %s: %w", systemID, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	for cur.Next(ctx) {
		var d rollupDoc
		if err := cur.Decode(&d); err != nil {
			return nil, false, fmt.Errorf("store: decode rollup: %w", err)
		}
		if d.Check != d.Count {
			return nil, false, nil
		}
		if d.Hour == nil {
			continue // documents without an hour bucket (not written by InsertHistory)
		}
		out = append(out, insights.Rollup{
			Hour:  time.Unix(int64(*d.Hour)*3600, 0).UTC(),
			Count: int(d.Count), SumSOC: d.SumSOC, SumVoltage: d.SumVoltage, SumCurrent: d.SumCurrent,
			SumPower: d.SumPower, SumRemainingAh: d.SumRemainingAh, SumCycleCount: d.SumCycleCount,
			SumMOSTemp: d.SumMOSTemp, SumChargeW: d.SumChargeW, SumDischargeW: d.SumDischargeW,
			TempCount: int(d.TempCount), SumTempMax: d.SumTempMax, CellCount: int(d.CellCount),
			SumImbalanceMV: d.SumImbalanceMV, HighSOCCount: int(d.HighSOCCount), SumEstCapAh: d.SumEstCapAh,
		})
	}
	if err := cur.Err(); err != nil {
		return nil, false, fmt.Errorf("store: hourly rollups of %s: %w", systemID, err)
	}
	return out, true, nil
}

// rollupsByScan computes the hourly rollups in Go from the window read in
// time order (only the fields a rollup needs), one hour in memory at a
// time. Documents without an hour bucket are left out as in the $group.
func (s *Store) rollupsByScan(ctx context.Context, systemID string, from, to time.Time) ([]insights.Rollup, error) {
	proj := bson.D{{Key: "hour", Value: 1}, {Key: "d", Value: 1}}
	for _, f := range []string{"stateOfCharge", "overallVoltage", "current", "power", "remainingCapacity", "cycleCount", "mosTemperature"} {
		proj = append(proj, bson.E{Key: "analysis." + f, Value: 1})
	}
	fctx, cancel := s.scanCtx(ctx)
	cur, err := s.history.Find(fctx, historyRange(systemID, from, to),
		options.Find().SetSort(bson.D{{Key: "timestamp", Value: 1}}).SetBatchSize(HistoryBatchSize).SetProjection(proj))
	cancel()
	if err != nil {
		return nil, fmt.Errorf("store: hourly rollups of %s: %w", systemID, err)
	}
	defer cur.Close(context.WithoutCancel(ctx))
	var out []insights.Rollup
	for {
		if !s.next(ctx, cur) {
			break
		}
		var d struct {
			Hour     *int64           `bson:"hour"`
			Analysis bms.Snapshot     `bson:"analysis"`
			D        insights.Derived `bson:"d"`
		}
		if err := cur.Decode(&d); err != nil {
			return nil, fmt.Errorf("store: decode history record: %w", err)
		}
		if d.Hour == nil {
			continue
		}
		h := time.Unix(*d.Hour*3600, 0).UTC()
		if n := len(out); n == 0 || !out[n-1].Hour.Equal(h) {
			out = append(out, insights.Rollup{Hour: h})
		}
		r := &out[len(out)-1]
		a := d.Analysis
		r.Count++
		r.SumSOC += a.StateOfCharge
		r.SumVoltage += a.OverallVoltage
		r.SumCurrent += a.Current
		r.SumPower += a.Power
		r.SumRemainingAh += a.RemainingCapacity
		r.SumCycleCount += a.CycleCount
		r.SumMOSTemp += a.MOSTemperature
		r.SumChargeW += d.D.ChargeW
		r.SumDischargeW += d.D.DischargeW
		r.TempCount += d.D.HasTemp
		r.SumTempMax += d.D.TempMax
		r.CellCount += d.D.HasCells
		r.SumImbalanceMV += d.D.ImbalanceMV
		r.HighSOCCount += d.D.HighSOC
		r.SumEstCapAh += d.D.EstCapAh
	}
	if err := cur.Err(); err != nil {
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
