package store

// The jobs' index on the embedded store. FerretDB v1's SQLite backend
// pushes only an `_id` equality down: any other filter or sort reads and
// decodes the whole insights-jobs collection (issue 23: 6.5 s and 2.6 GB
// for a page of 10,000 jobs, OOM at 100,000). So on the embedded store every
// query of the console, the API, bulk actions and the reconciler is
// answered from SQLite expression indexes on FerretDB's own table (as
// HistoryWindow reads history): counts, failure groups and a bulk action's
// selection from the indexes alone, a page of jobs from the rows the index
// selects, decoded here (sjson.go). Every read is one page (keyset paging
// through the index) or one streamed row at a time, so no scan's memory
// grows with the collection, and the SQLite driver interrupts a statement
// when its context ends. On MongoDB the same filters are plain finds on the
// indexes ensureIndexes creates (docs/bench.md).

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/bmsview/insights/tasks"
)

// SQLiteFunc returns a handle on the embedded FerretDB's SQLite file of
// database (devstack.Mongo.SQLite); the store keeps using it.
type SQLiteFunc func(ctx context.Context, database string) (*sql.DB, error)

// The expressions of the jobs' indexes, written exactly as the queries
// write them so that SQLite matches them to the indexes. FerretDB stores a
// document as JSON with its types beside it (`$s`): dates as Unix
// milliseconds, ObjectIds as hex strings.
const (
	xStatus   = `(_ferretdb_sjson->>'$.status')`
	xSystem   = `(_ferretdb_sjson->>'$.systemId')`
	xCreated  = `(_ferretdb_sjson->>'$.createdAt')`
	xUpdated  = `(_ferretdb_sjson->>'$.updatedAt')`
	xEvent    = `(_ferretdb_sjson->>'$.eventId')`
	xFollowUp = `(_ferretdb_sjson->>'$.followUp.eventId')`
	xID       = `(_ferretdb_sjson->>'$._id')`
	xIDType   = `(_ferretdb_sjson->>'$."$s".p._id.t')`
	// xJobID is FerretDB's own unique index on `id` (ensureIndexes).
	xJobID = `_ferretdb_sjson->"id"`
	// Read from the row itself: only rows the index selected are read.
	xKind    = `(_ferretdb_sjson->>'$.failure.kind')`
	xStep    = `(_ferretdb_sjson->>'$.failure.step')`
	xMessage = `(_ferretdb_sjson->>'$.failure.message')`
	xFailAt  = `(_ferretdb_sjson->>'$.failure.at')`
	xError   = `(_ferretdb_sjson->>'$.error')`
	xRefID   = `(_ferretdb_sjson->>'$.id')`
)

// jobIndexes are the indexes on the jobs' table. The list indexes end with
// the `_id` (and its type), `id` and `eventId`, so a page of keys, a count or
// a bulk action's selection is read from the index alone; the failed
// jobs' index holds what the failures page groups by, so it never reads a
// document.
var jobIndexes = []struct{ name, cols string }{
	{"q_status", xStatus + ", " + xCreated + ", " + xID + ", " + xIDType + ", " + xRefID + ", " + xEvent},
	{"q_system", xSystem + ", " + xCreated + ", " + xID + ", " + xIDType + ", " + xRefID + ", " + xEvent},
	{"q_newest", xCreated + ", " + xID + ", " + xIDType + ", " + xRefID + ", " + xEvent},
	{"q_event", xEvent + ", " + xID + ", " + xIDType},
	// The reconciler: live jobs, and completed ones without a follow-up.
	// Partial, as q_failed: most jobs (completed, followed up) have no
	// entry to maintain; their queries name the statuses literally, so
	// that SQLite sees they imply the index's condition.
	{"q_stale_p", xStatus + ", " + xFollowUp + ", " + xUpdated + ", " + xID + ", " + xIDType + ") WHERE (" + staleCond},
	// The failure groups' fields, their fingerprint's ids included.
	{"q_failed_p2", xStatus + ", " + xKind + ", " + xStep + ", " + xMessage + ", " + xError + ", " + xUpdated + ", " + xFailAt + ", " + xSystem + ", " + xRefID + ", " + xEvent + ") WHERE (" + failedCond},
}

// The conditions of the partial indexes, as the queries write them.
const (
	failedCond = xStatus + ` = 'failed'`
	staleCond  = xStatus + ` IN ('queued', 'scheduled', 'processing', 'retrying') OR (` + xStatus + ` = 'completed' AND ` + xFollowUp + ` IS NULL)`
)

// jobIndex reads the jobs' SQLite table.
type jobIndex struct {
	open     SQLiteFunc
	database string

	mu    sync.Mutex
	db    *sql.DB
	table string
}

// handle is the SQLite handle and the jobs' table name.
func (x *jobIndex) handle(ctx context.Context) (*sql.DB, string, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.db != nil {
		return x.db, x.table, nil
	}
	db, err := x.open(ctx, x.database)
	if err != nil {
		return nil, "", err
	}
	var t string
	if err := db.QueryRowContext(ctx, `SELECT table_name FROM _ferretdb_collections WHERE name = ?`, JobsCollection).Scan(&t); err != nil {
		return nil, "", fmt.Errorf("the jobs' table: %w", err)
	}
	x.db, x.table = db, t
	return db, t, nil
}

// create adds the indexes (once; an existing store is indexed on its first
// start with them, which takes a few seconds per 100,000 jobs).
func (x *jobIndex) create(ctx context.Context) error {
	db, t, err := x.handle(ctx)
	if err != nil {
		return err
	}
	for _, i := range jobIndexes {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (%s)`, t+"_"+i.name, t, i.cols)
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("index %s: %w", i.name, err)
		}
	}
	return nil
}

// docKey is a document's `_id` as FerretDB's JSON gives it, with its type.
type docKey struct {
	id  string
	typ string
}

// value is the `_id` as the driver must send it.
func (k docKey) value() (any, error) {
	switch k.typ {
	case "string":
		return k.id, nil
	case "objectId":
		return bson.ObjectIDFromHex(k.id)
	case "int":
		n, err := strconv.ParseInt(k.id, 10, 32)
		return int32(n), err
	case "long":
		return strconv.ParseInt(k.id, 10, 64)
	}
	return nil, fmt.Errorf("job _id %s of type %q is not supported", k.id, k.typ)
}

// where is f as an SQL condition on the jobs' table, with its arguments;
// none when it selects nothing.
func (f JobFilter) where() (cond string, args []any, none bool) {
	st, none := f.status()
	if none {
		return "", nil, true
	}
	var c []string
	add := func(s string, a ...any) { c = append(c, s); args = append(args, a...) }
	switch st {
	case "":
	case tasks.StatusFailed:
		add(failedCond) // literal: it implies q_failed_p's condition
	default:
		add(xStatus+" = ?", st)
	}
	if f.SystemID != "" {
		add(xSystem+" = ?", f.SystemID)
	}
	switch f.FailureKind {
	case "":
	case KindUnknown:
		add(xKind + " IS NULL")
	default:
		add(xKind+" = ?", f.FailureKind)
	}
	if f.Step != "" {
		add(xStep+" = ?", f.Step)
	}
	if f.Message != "" {
		add("("+xMessage+" = ? OR ("+xKind+" IS NULL AND "+xError+" = ?))", f.Message, f.Message)
	}
	if f.From != nil || f.To != nil {
		// Both bounds always: a date is stored as an integer, and SQLite
		// orders every string after every integer, so a job whose
		// updatedAt is not a date (MongoDB's filter would not match it)
		// is out of any range.
		lo, hi := int64(-1<<62), int64(1<<62)
		if f.From != nil {
			lo = f.From.UnixMilli()
		}
		if f.To != nil {
			hi = f.To.UnixMilli()
		}
		add(xUpdated+" >= ? AND "+xUpdated+" < ?", lo, hi)
	}
	if len(c) == 0 {
		return "1", nil, false
	}
	return strings.Join(c, " AND "), args, false
}

// indexPage is how many keys one read of the index returns: the memory a
// scan holds at once.
const indexPage = 500

// keyset pages through the rows of the jobs' table that cond selects, in
// order of the columns of order (all descending or all ascending), reading
// indexPage rows a time: each page starts after the last key of the one
// before, so the index serves every page and no read stays open while fn
// runs. fn is given the order columns, then cols.
func (s *Store) keyset(ctx context.Context, cond string, args []any, order []string, desc bool, cols []string, fn func(row []any) error) error {
	db, t, err := s.idx.handle(ctx)
	if err != nil {
		return err
	}
	dir, cmp := "ASC", ">"
	if desc {
		dir, cmp = "DESC", "<"
	}
	var by []string
	for _, o := range order {
		by = append(by, o+" "+dir)
	}
	sel := append(append([]string{}, order...), cols...)
	var last []any
	for {
		q, a := cond, append([]any{}, args...)
		if last != nil {
			q = "(" + cond + ") AND (" + strings.Join(order, ", ") + ") " + cmp + " (" + strings.TrimSuffix(strings.Repeat("?, ", len(order)), ", ") + ")"
			a = append(a, last...)
		}
		rows, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT %s FROM %q WHERE %s ORDER BY %s LIMIT %d`,
			strings.Join(sel, ", "), t, q, strings.Join(by, ", "), indexPage), a...)
		if err != nil {
			return err
		}
		var page [][]any
		for rows.Next() {
			row := make([]any, len(sel))
			ptr := make([]any, len(sel))
			for i := range row {
				ptr[i] = &row[i]
			}
			if err := rows.Scan(ptr...); err != nil {
				rows.Close()
				return err
			}
			page = append(page, row)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, row := range page {
			if err := fn(row); err != nil {
				return err
			}
		}
		if len(page) < indexPage {
			return nil
		}
		last = page[len(page)-1][:len(order)]
		if slicesHasNil(last) {
			// A NULL key cannot be paged past: the rest would be skipped.
			return fmt.Errorf("jobs' index: a job without %s", strings.Join(order, ", "))
		}
	}
}

func slicesHasNil(v []any) bool {
	for _, x := range v {
		if x == nil {
			return true
		}
	}
	return false
}

// rowKey reads a docKey from two columns (its id and type).
func rowKey(id, typ any) docKey {
	return docKey{id: sqlString(id), typ: sqlString(typ)}
}

func sqlString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case int64:
		return strconv.FormatInt(x, 10)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

// fetchJob reads one job by its key through FerretDB (the one lookup it
// indexes); nil when it is gone.
func (s *Store) fetchJob(ctx context.Context, k docKey) (*Job, error) {
	id, err := k.value()
	if err != nil {
		return nil, err
	}
	var j Job
	err = s.jobs.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&j)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if j.Steps == nil {
		j.Steps = map[string]StepState{}
	}
	return &j, nil
}

// listJobsIndexed is ListJobs on the embedded store: the page of rows the
// index selects (newest first), each job decoded from its row.
func (s *Store) listJobsIndexed(ctx context.Context, f JobFilter) ([]*Job, error) {
	cond, args, none := f.where()
	if none {
		return nil, nil
	}
	db, t, err := s.idx.handle(ctx)
	if err != nil {
		return nil, err
	}
	q := fmt.Sprintf(`SELECT _ferretdb_sjson FROM %q WHERE %s ORDER BY %s DESC, %s DESC LIMIT ? OFFSET ?`,
		t, cond, xCreated, xID)
	rows, err := db.QueryContext(ctx, q, append(args, f.Limit, f.Offset)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Job
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		j, err := decodeJobSJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("decode a job: %w", err)
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// countJobsIndexed is CountJobs on the embedded store, from the indexes
// alone when f names only status, system and dates.
func (s *Store) countJobsIndexed(ctx context.Context, f JobFilter) (int64, error) {
	cond, args, none := f.where()
	if none {
		return 0, nil
	}
	db, t, err := s.idx.handle(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	err = db.QueryRowContext(ctx, fmt.Sprintf(`SELECT count(*) FROM %q WHERE %s`, t, cond), args...).Scan(&n)
	return n, err
}

// countByStatusIndexed is CountByStatus on the embedded store: one pass
// over the status index, not over the documents.
func (s *Store) countByStatusIndexed(ctx context.Context) (map[string]int64, error) {
	db, t, err := s.idx.handle(ctx)
	if err != nil {
		return nil, err
	}
	rows, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT %s, count(*) FROM %q GROUP BY 1`, xStatus, t))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var st any
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[sqlString(st)] += n
	}
	return out, rows.Err()
}

// eachJobRefIndexed is EachJobRef on the embedded store.
func (s *Store) eachJobRefIndexed(ctx context.Context, f JobFilter, fn func(JobRef) error) error {
	cond, args, none := f.where()
	if none {
		return nil
	}
	return s.keyset(ctx, cond, args, []string{xCreated, xID}, true, []string{xRefID, xEvent}, func(row []any) error {
		if err := fn(JobRef{JobID: sqlString(row[2]), EventID: sqlString(row[3])}); err != nil {
			return fnError{err}
		}
		return nil
	})
}

// eachFailureIndexed streams the failure fields of every failed job f
// selects (its Fingerprint too) from the failed jobs' rows alone: one read,
// one row in memory at a time (fn only counts).
func (s *Store) eachFailureIndexed(ctx context.Context, f JobFilter, fn func(*failureFields, string) error) error {
	cond, args, none := f.where()
	if none {
		return nil
	}
	db, t, err := s.idx.handle(ctx)
	if err != nil {
		return unavailable(ctx, err)
	}
	rows, err := db.QueryContext(ctx, fmt.Sprintf(`SELECT %s, %s, %s, %s, %s, %s, %s, %s, %s FROM %q WHERE %s`,
		xKind, xStep, xMessage, xError, xUpdated, xFailAt, xRefID, xEvent, xSystem, t, cond), args...)
	if err != nil {
		return unavailable(ctx, err)
	}
	defer rows.Close()
	row := make([]any, 9)
	ptr := make([]any, len(row))
	for i := range row {
		ptr[i] = &row[i]
	}
	for rows.Next() {
		if err := rows.Scan(ptr...); err != nil {
			return err
		}
		j := failureFields{ID: sqlString(row[6]), EventID: sqlString(row[7]), SystemID: sqlString(row[8]), UpdatedAt: millis(row[4])}
		if row[0] != nil {
			j.Failure = &Failure{Kind: sqlString(row[0]), Step: sqlString(row[1]), Message: sqlString(row[2]), At: millis(row[5])}
		}
		if row[3] != nil {
			m := sqlString(row[3])
			j.Error = &m
		}
		_, _, _, pattern := j.group()
		if f.Fingerprint != "" && Fingerprint(pattern) != f.Fingerprint {
			continue
		}
		if err := fn(&j, pattern); err != nil {
			return err
		}
	}
	return unavailable(ctx, rows.Err())
}

// millis reads a date of FerretDB's JSON (Unix milliseconds); zero else.
func millis(v any) time.Time {
	switch x := v.(type) {
	case int64:
		return time.UnixMilli(x).UTC()
	case float64:
		return time.UnixMilli(int64(x)).UTC()
	}
	return time.Time{}
}

// eachStaleIndexed is EachStale on the embedded store: each live status,
// then the completed jobs without a follow-up, through the stale index,
// so its cost follows the jobs it returns, not the collection.
func (s *Store) eachStaleIndexed(ctx context.Context, before time.Time, fn func(*Job) error) error {
	type part struct {
		cond string
		args []any
	}
	var parts []part
	for _, st := range []string{tasks.StatusQueued, tasks.StatusScheduled, tasks.StatusProcessing, tasks.StatusRetrying} {
		// The status literal (a constant), so that SQLite sees it implies
		// q_stale_p's condition.
		parts = append(parts, part{"(" + staleCond + ") AND " + xStatus + " = '" + st + "' AND " + xUpdated + " < ?", []any{before.UnixMilli()}})
	}
	parts = append(parts, part{"(" + staleCond + ") AND " + xStatus + " = 'completed' AND " + xFollowUp + " IS NULL AND " + xUpdated + " < ?",
		[]any{before.UnixMilli()}})
	for _, p := range parts {
		err := s.keyset(ctx, p.cond, p.args, []string{xUpdated, xID}, false, []string{"_ferretdb_sjson"}, func(row []any) error {
			j, err := decodeJobSJSON([]byte(sqlString(row[2])))
			if err != nil {
				return fmt.Errorf("decode a job: %w", err)
			}
			if !stale(j, before) {
				return nil // changed since the index was read
			}
			if err := fn(j); err != nil {
				return fnError{err}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// stale is EachStale's filter in Go.
func stale(j *Job, before time.Time) bool {
	if j.EventID == "" || !j.UpdatedAt.Before(before) {
		return false
	}
	return tasks.Live(j.Status) || (j.Status == tasks.StatusCompleted && j.FollowUp == nil)
}

// keyOf finds the key of the job whose cond column equals v: the first.
func (s *Store) keyOf(ctx context.Context, cond string, v any) (docKey, bool, error) {
	db, t, err := s.idx.handle(ctx)
	if err != nil {
		return docKey{}, false, err
	}
	var id, typ any
	err = db.QueryRowContext(ctx, fmt.Sprintf(`SELECT %s, %s FROM %q WHERE %s LIMIT 1`, xID, xIDType, t, cond), v).Scan(&id, &typ)
	if errors.Is(err, sql.ErrNoRows) {
		return docKey{}, false, nil
	}
	if err != nil {
		return docKey{}, false, err
	}
	return rowKey(id, typ), true, nil
}

// findJobIndexed is findJob on the embedded store: by `_id` first, else the
// app's job by its `id` through FerretDB's own index on it.
func (s *Store) findJobIndexed(ctx context.Context, jobID string) (*Job, error) {
	j, err := s.fetchJob(ctx, docKey{id: jobID, typ: "string"})
	if err == nil && j == nil {
		var k docKey
		var ok bool
		k, ok, err = s.keyOf(ctx, xJobID+" = json_quote(?)", jobID)
		if err == nil && ok {
			j, err = s.fetchJob(ctx, k)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("read job %s: %w", jobID, unavailable(ctx, err))
	}
	if j == nil {
		return nil, ErrNotFound
	}
	return j, nil
}

// jobByEventIndexed is GetJobByEvent on the embedded store.
func (s *Store) jobByEventIndexed(ctx context.Context, eventID string) (*Job, error) {
	db, t, err := s.idx.handle(ctx)
	var doc []byte
	if err == nil {
		err = db.QueryRowContext(ctx, fmt.Sprintf(`SELECT _ferretdb_sjson FROM %q WHERE %s = ? LIMIT 1`, t, xEvent), eventID).Scan(&doc)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get job by event: %w", unavailable(ctx, err))
	}
	j, err := decodeJobSJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("get job by event: decode: %w", err)
	}
	return j, nil
}
