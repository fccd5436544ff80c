// Package store is the MongoDB side of the service: the BMS app's
// insights-jobs documents with our step checkpoints, its systems and their
// history, read and written in the app's own shapes.
//
// It uses only what both MongoDB and FerretDB v1 support. FerretDB's updates
// are not atomic under concurrency, so every claim is a unique insert and,
// on FerretDB, every write of a job document holds its run lock
// (runlock.go).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/mongo/writeconcern"
)

// Collection names (contract).
const (
	JobsCollection    = "insights-jobs"
	SystemsCollection = "systems"
	HistoryCollection = "history"
	claimsCollection  = "run_claims"
)

// DefaultOpTimeout bounds every store call that has no earlier deadline, so
// an unreachable MongoDB surfaces as an error, never a hang.
const DefaultOpTimeout = 10 * time.Second

// indexBuildTimeout bounds the creation of the jobs' SQLite indexes on an
// embedded store that has jobs from before them.
const indexBuildTimeout = 30 * time.Minute

// Store is the MongoDB store. It is safe for concurrent use.
type Store struct {
	client  *mongo.Client
	db      *mongo.Database
	jobs    *mongo.Collection
	systems *mongo.Collection
	history *mongo.Collection
	claims  *mongo.Collection
	audit   *mongo.Collection
	// bulkOps and bulkChunks hold bulk actions (bulk.go); runs the ended
	// runs of jobs (runs.go).
	bulkOps    *mongo.Collection
	bulkChunks *mongo.Collection
	runs       *mongo.Collection
	// events records every eventId accepted (events.go).
	events    *mongo.Collection
	opTimeout time.Duration
	// group is the committer every write goes through on the embedded
	// store; nil elsewhere.
	group *committer
	// ferret is set when the server is FerretDB v1: its SQLite and
	// PostgreSQL backends push only an _id equality down, so any filter
	// with more fields scans the whole collection (measured: 12 ms instead
	// of 2 ms per find at 100 jobs, growing with the collection), and its
	// updates are not atomic anyway. Job writes then filter by _id alone
	// and check the run in Go.
	ferret bool
	// locks serialise the writes of each job and system document on
	// FerretDB (runlock.go); nil on MongoDB.
	locks *runLocks
	// historyWindow reads history windows beside FerretDB (Config).
	historyWindow HistoryWindowFunc
	// idx answers the jobs' queries from SQLite's indexes on the embedded
	// store (jobindex.go); nil elsewhere.
	idx *jobIndex
}

// Config configures Open.
type Config struct {
	URI string
	// Database name. Empty: "bmsview".
	Database string
	// OpTimeout bounds each call. 0: DefaultOpTimeout.
	OpTimeout time.Duration
	// Monitor observes every command sent (benchmarks count round trips).
	// Nil: none.
	Monitor *event.CommandMonitor
	// Prepare, when set, runs once the collections exist:
	// devstack.Mongo.Prepare adds the _id indexes FerretDB's backends lack.
	// Nil: nothing.
	Prepare func(ctx context.Context, database string) error
	// Sync, when set, makes every write committed so far durable (the
	// embedded FerretDB on SQLite, which commits without fsync): every
	// write is then group-committed (commit.go). Nil: a write is durable
	// when acknowledged, as on MongoDB and FerretDB over PostgreSQL.
	Sync func(ctx context.Context, database string) error
	// Checkpoint, when set with Sync, runs every CheckpointEvery groups
	// while none of the store's writes is in flight: the embedded FerretDB
	// truncates its SQLite write-ahead log there. Nil: never.
	Checkpoint func(ctx context.Context, database string) error
	// GroupMax caps the writes of one group commit. 0: DefaultGroupMax.
	GroupMax int
	// GroupWriters is how many groups commit at once. 0:
	// DefaultGroupWriters.
	GroupWriters int
	// HistoryWindow, when set, reads a system's history window instead of
	// a find: the embedded FerretDB, which would scan the whole collection
	// (devstack.Mongo.HistoryWindow reads SQLite's index). Nil: a find.
	HistoryWindow HistoryWindowFunc
	// SQLite, when set, gives the embedded FerretDB's SQLite file: the
	// store indexes the jobs there and answers every query of them but an
	// _id lookup from those indexes (jobindex.go), which FerretDB v1 would
	// answer by decoding the whole collection. Nil: finds.
	SQLite SQLiteFunc
}

// Open connects to MongoDB, checks it answers and creates the indexes.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Database == "" {
		cfg.Database = "bmsview"
	}
	if cfg.OpTimeout == 0 {
		cfg.OpTimeout = DefaultOpTimeout
	}
	opts := options.Client().ApplyURI(cfg.URI).
		SetBSONOptions(&options.BSONOptions{DefaultDocumentMap: true}).
		SetServerSelectionTimeout(cfg.OpTimeout).
		SetConnectTimeout(cfg.OpTimeout)
	if cfg.Monitor != nil {
		opts.SetMonitor(cfg.Monitor)
	}
	if opts.WriteConcern == nil {
		// A checkpoint is durable when a majority holds it: a replica-set
		// failover never loses a completed step. On a single node (and
		// FerretDB) majority is the one node.
		opts.SetWriteConcern(writeconcern.Majority())
	}
	client, err := mongo.Connect(opts)
	if err != nil {
		return nil, fmt.Errorf("store: connect: %w", err)
	}
	db := client.Database(cfg.Database)
	s := &Store{
		client:        client,
		db:            db,
		jobs:          db.Collection(JobsCollection),
		systems:       db.Collection(SystemsCollection),
		history:       db.Collection(HistoryCollection),
		claims:        db.Collection(claimsCollection),
		bulkOps:       db.Collection(bulkOpsCollection),
		bulkChunks:    db.Collection(bulkChunksCollection),
		runs:          db.Collection(RunsCollection),
		events:        db.Collection(EventsCollection),
		audit:         db.Collection(AuditCollection),
		opTimeout:     cfg.OpTimeout,
		historyWindow: cfg.HistoryWindow,
	}
	pctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := client.Ping(pctx, nil); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, fmt.Errorf("store: ping %s: %w", redactURI(cfg.URI), err)
	}
	var info bson.M
	if err := client.Database("admin").RunCommand(pctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err == nil {
		_, s.ferret = info["ferretdbVersion"]
	}
	if s.ferret {
		s.locks = newRunLocks()
		if cfg.SQLite != nil {
			s.idx = &jobIndex{open: cfg.SQLite, database: cfg.Database}
		}
	}
	if cfg.Sync != nil && !s.ferret {
		// Sync-based group commit leaves each write's durability to Sync,
		// which only the embedded FerretDB's store provides.
		_ = client.Disconnect(context.Background())
		return nil, fmt.Errorf("store: Sync is set but %s is not FerretDB: group commit is for the embedded store only", redactURI(cfg.URI))
	}
	if err := s.ensureIndexes(ctx, cfg.Prepare); err != nil {
		_ = client.Disconnect(context.Background())
		return nil, err
	}
	if sync := cfg.Sync; sync != nil {
		var checkpoint func(context.Context) error
		if cp := cfg.Checkpoint; cp != nil {
			checkpoint = func(ctx context.Context) error { return cp(ctx, cfg.Database) }
		}
		s.group = newCommitter(func(ctx context.Context) error { return sync(ctx, cfg.Database) }, checkpoint, cfg.GroupMax, cfg.GroupWriters, s.ctx)
	}
	return s, nil
}

// Close waits, until ctx is done, for the writes already taken into a
// group, then disconnects.
func (s *Store) Close(ctx context.Context) error {
	var err error
	if s.group != nil {
		err = s.group.close(ctx)
	}
	return errors.Join(err, s.client.Disconnect(ctx))
}

// write runs fn, one write, and returns once it is durable: at once on a
// server, with its group on the embedded store.
func (s *Store) write(ctx context.Context, fn func(ctx context.Context) error) error {
	if s.group == nil {
		return fn(ctx)
	}
	return s.group.do(ctx, &write{fn: fn})
}

// update applies one update model to coll and returns once it is durable,
// and whether it matched a document (or upserted one).
func (s *Store) update(ctx context.Context, coll *mongo.Collection, m *mongo.UpdateOneModel) (matched bool, err error) {
	matched, err = s.updateOnce(ctx, coll, m)
	// FerretDB upserts by a find, then an insert: of two upserts racing to
	// create one _id, one fails on the unique index, and so does every
	// write of its group's bulk (see bulkWrite), whose own _id may still be
	// new and race again. Each such failure means some racing insert won,
	// so a few tries settle it.
	for try := 1; try < upsertTries && err != nil && m.Upsert != nil && *m.Upsert && mongo.IsDuplicateKeyError(err); try++ {
		matched, err = s.updateOnce(ctx, coll, m)
	}
	return matched, err
}

// upsertTries bounds the tries of an upsert that keeps losing races.
const upsertTries = 5

func (s *Store) updateOnce(ctx context.Context, coll *mongo.Collection, m *mongo.UpdateOneModel) (matched bool, err error) {
	if s.group == nil {
		res, err := coll.UpdateOne(ctx, m.Filter, m.Update, options.UpdateOne().SetUpsert(m.Upsert != nil && *m.Upsert))
		if err != nil {
			return false, err
		}
		return res.MatchedCount+res.UpsertedCount > 0, nil
	}
	w := &write{coll: coll, model: m}
	if err := s.group.do(ctx, w); err != nil {
		return false, err
	}
	if w.unsure {
		// Another update of the same bulk found no document; find out
		// whether this one did. Updates here filter by _id alone.
		n, err := coll.CountDocuments(ctx, m.Filter)
		if err != nil {
			return false, err
		}
		return n > 0, nil
	}
	return w.matched, nil
}

// Ping checks MongoDB answers (readiness).
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	return s.client.Ping(ctx, nil)
}

// Database is the underlying database, for tests and tools.
func (s *Store) Database() *mongo.Database { return s.db }

func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < s.opTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.opTimeout)
}

func (s *Store) ensureIndexes(ctx context.Context, prepare func(ctx context.Context, database string) error) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if s.ferret {
		// FerretDB v1 pushes no filter but an _id equality down to an
		// index (SQLite), or pushes it down in a form no B-tree index
		// serves (PostgreSQL: `_jsonb->$1 @> $2`): secondary indexes
		// would only slow every write. The collections are created here
		// so that prepare sees them all.
		for _, c := range []*mongo.Collection{s.jobs, s.systems, s.history, s.claims, s.audit, s.bulkOps, s.bulkChunks, s.runs, s.events} {
			err := s.db.CreateCollection(ctx, c.Name())
			var ce mongo.CommandError
			if err != nil && !(errors.As(err, &ce) && ce.Name == "NamespaceExists") {
				return fmt.Errorf("store: create collection %s: %w", c.Name(), err)
			}
		}
	}
	if prepare != nil {
		if err := prepare(ctx, s.db.Name()); err != nil {
			return fmt.Errorf("store: prepare database: %w", err)
		}
	}
	// A job is found by its `id`, unique: the insert that claims a new
	// jobId is refused when the app created that job (FerretDB too keeps
	// unique indexes, and only there is a claim atomic).
	_, err := s.jobs.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: bson.D{{Key: "id", Value: 1}}, Options: options.Index().SetUnique(true)})
	if err != nil && !indexExists(err) {
		return fmt.Errorf("store: create the unique index on %s.id: %w", s.jobs.Name(), err)
	}
	if s.ferret {
		if s.idx != nil {
			// Not bounded by the per-call deadline: a store of 100,000
			// jobs written before these indexes is indexed on this start,
			// which reads every job once (minutes on a slow disk).
			ictx, icancel := context.WithTimeout(context.WithoutCancel(ctx), indexBuildTimeout)
			err := s.idx.create(ictx)
			icancel()
			if err != nil {
				return fmt.Errorf("store: index the jobs in SQLite: %w", err)
			}
		}
		return nil
	}
	// Indexes only where a query uses them: the job list (status, system,
	// newest first), the reconciler (status, updatedAt) and history ranges.
	idx := []struct {
		c *mongo.Collection
		m mongo.IndexModel
	}{
		{s.systems, mongo.IndexModel{Keys: bson.D{{Key: "id", Value: 1}}}},
		{s.jobs, mongo.IndexModel{Keys: bson.D{{Key: "eventId", Value: 1}}}},
		{s.jobs, mongo.IndexModel{Keys: bson.D{{Key: "status", Value: 1}, {Key: "updatedAt", Value: 1}}}},
		// The job list by status (and a failure filter's, which is of
		// failed jobs), newest first; counts by status.
		{s.jobs, mongo.IndexModel{Keys: bson.D{{Key: "status", Value: 1}, {Key: "createdAt", Value: -1}}}},
		// The reconciler's completed jobs without a follow-up.
		{s.jobs, mongo.IndexModel{Keys: bson.D{{Key: "status", Value: 1}, {Key: "followUp", Value: 1}, {Key: "updatedAt", Value: 1}}}},
		{s.jobs, mongo.IndexModel{Keys: bson.D{{Key: "systemId", Value: 1}, {Key: "createdAt", Value: -1}}}},
		{s.jobs, mongo.IndexModel{Keys: bson.D{{Key: "createdAt", Value: -1}}}},
		{s.history, mongo.IndexModel{Keys: bson.D{{Key: "systemId", Value: 1}, {Key: "timestamp", Value: 1}}}},
		// The audit list is newest first on _id; these serve its filters.
		{s.audit, mongo.IndexModel{Keys: bson.D{{Key: "user", Value: 1}, {Key: "_id", Value: -1}}}},
		{s.audit, mongo.IndexModel{Keys: bson.D{{Key: "action", Value: 1}, {Key: "_id", Value: -1}}}},
	}
	for _, i := range idx {
		if _, err := i.c.Indexes().CreateOne(ctx, i.m); err != nil && !indexExists(err) {
			return fmt.Errorf("store: create index on %s: %w", i.c.Name(), err)
		}
	}
	return nil
}

// indexExists reports an index the app's database already has under
// another name or with other options (its own {systemId: 1, timestamp: -1}
// on history, say): it serves the same queries, so it is kept.
func indexExists(err error) bool {
	var ce mongo.CommandError
	return errors.As(err, &ce) && (ce.Code == 85 || ce.Code == 86 || ce.Name == "IndexOptionsConflict" || ce.Name == "IndexKeySpecsConflict")
}

// ErrNotFound is returned when a job or system does not exist.
var ErrNotFound = errors.New("not found")

// ErrUnavailable is wrapped by a failure of MongoDB itself (unreachable,
// timed out, a command refused) in a read a step makes: the step's work is
// not at fault, so the runner retries it after RETRY_TRANSIENT_DELAY without
// using the run's retry budget, and an outage never dead-letters work.
var ErrUnavailable = errors.New("store unavailable")

// unavailable marks err as the store's failure, unless ctx ended first: a
// caller's own deadline (TASK_TIMEOUT) or cancel is not the store's fault.
func unavailable(ctx context.Context, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

func redactURI(uri string) string {
	// Never print credentials: keep scheme and host part only.
	for i := 0; i+2 < len(uri); i++ {
		if uri[i:i+3] == "://" {
			rest := uri[i+3:]
			for j := 0; j < len(rest); j++ {
				if rest[j] == '@' {
					return uri[:i+3] + "***@" + rest[j+1:]
				}
			}
			break
		}
	}
	return uri
}
