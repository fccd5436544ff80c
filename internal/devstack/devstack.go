// Package devstack runs the embedded stores of the default, zero-config
// mode: an in-process miniredis and an in-process FerretDB (SQLite handler)
// that speaks the MongoDB wire protocol to the real driver.
package devstack

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/alicebob/miniredis/v2"
	_ "modernc.org/sqlite" // the driver FerretDB's SQLite backend uses
)

// FerretDB is a FerretDB running in this process.
type FerretDB struct {
	URI    string
	cancel context.CancelFunc
	done   chan struct{}
}

// Mongo is an embedded FerretDB on SQLite.
type Mongo struct {
	*FerretDB
	dir string // SQLite files

	walLimit int64
	// cleanup removes a temporary socket folder (StartMongoPrivate).
	cleanup func()

	mu      sync.Mutex
	readers map[string]*readerDB // HistoryWindow's handles, per database
}

// StartMongo starts FerretDB with its SQLite files under dir and waits until
// it accepts connections. logger may be nil (FerretDB's own logs are then
// dropped below warnings).
//
// SQLite runs with synchronous=NORMAL: a commit is not fsynced on its own.
// The store makes its writes durable in groups with Sync, one fdatasync of
// the write-ahead log for many commits, instead of one per commit.
func StartMongo(ctx context.Context, dir string, logger *slog.Logger) (*Mongo, error) {
	// 0700 also when it exists: the database is no other local user's.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	f, err := StartFerretDB(ctx, ferretdb.Config{
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/?_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)",
		Logger:    logger,
	})
	if err != nil {
		return nil, err
	}
	return &Mongo{FerretDB: f, dir: abs, walLimit: walLimit}, nil
}

// StartMongoPrivate is StartMongo listening on a Unix socket instead of a
// TCP port, in a folder of mode 0700 (dir itself, or a new temporary
// folder when dir's path is too long for a socket): FerretDB v1 on SQLite
// has no authentication, so only this user may be able to connect. The
// URI names the socket (the driver reads a host ending in .sock as one);
// Go's url.Parse refuses it, so hand it to the driver as it is.
func StartMongoPrivate(ctx context.Context, dir string, logger *slog.Logger) (*Mongo, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: create %s: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devstack: %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	sockDir, cleanup := abs, func() {}
	if len(filepath.Join(abs, socketName)) > maxSocketPath {
		// MkdirTemp makes its folder 0700.
		if sockDir, err = os.MkdirTemp("", "insights-mongo-"); err != nil {
			return nil, fmt.Errorf("devstack: socket folder: %w", err)
		}
		cleanup = func() { _ = os.RemoveAll(sockDir) }
	}
	sock := filepath.Join(sockDir, socketName)
	if err := clearSocket(sock); err != nil {
		cleanup()
		return nil, err
	}
	f, err := StartFerretDB(ctx, ferretdb.Config{
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/?_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)",
		Logger:    logger,
		Listener:  ferretdb.ListenerConfig{Unix: sock},
	})
	if err != nil {
		cleanup()
		return nil, err
	}
	return &Mongo{FerretDB: f, dir: abs, walLimit: walLimit, cleanup: cleanup}, nil
}

// socketName is the embedded FerretDB's socket file; the driver needs the
// .sock suffix to read the URI's host as a socket path.
const socketName = "mongodb.sock"

// maxSocketPath is the longest socket path Linux takes (sun_path is 108
// bytes with its NUL; macOS allows 104).
const maxSocketPath = 100

// clearSocket removes a socket left by a process that died, and refuses
// one a running process still serves (another service on this DATA_DIR).
func clearSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("devstack: %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("devstack: %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("devstack: %s: another process serves this DATA_DIR's database", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("devstack: remove stale %s: %w", path, err)
	}
	return nil
}

// StartFerretDB runs FerretDB in this process with cfg's backend (Handler
// and its URL) on cfg.Listener.Unix when that names a socket, else on a
// free loopback port (Listener is set here), and waits until it accepts
// connections. cfg.Logger may be nil (FerretDB's own logs are
// then dropped below warnings). StartMongo and StartMongoPrivate (the service's) use it; the
// benchmark runs other backends through it.
func StartFerretDB(ctx context.Context, cfg ferretdb.Config) (*FerretDB, error) {
	logger := cfg.Logger
	network, addr := "unix", cfg.Listener.Unix
	uri := "mongodb://" + url.PathEscape(addr) + "/"
	if addr == "" {
		// Pick a free port first: FerretDB reports its address only after Run.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("devstack: pick a port: %w", err)
		}
		addr = ln.Addr().String()
		ln.Close()
		network, uri = "tcp", "mongodb://"+addr+"/"
		cfg.Listener = ferretdb.ListenerConfig{TCP: addr}
	} else {
		cfg.Listener = ferretdb.ListenerConfig{Unix: addr}
	}
	if logger == nil {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	cfg.Logger = slog.New(lazyAttrs{h: logger.Handler()})
	fdb, err := ferretdb.New(&cfg)
	if err != nil {
		return nil, fmt.Errorf("devstack: ferretdb: %w", err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	f := &FerretDB{URI: uri, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		_ = fdb.Run(rctx)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return f, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			f.Close()
			return nil, errors.Join(errors.New("devstack: ferretdb did not start"), err, ctx.Err())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close stops FerretDB and waits for it to end.
func (f *FerretDB) Close() {
	f.cancel()
	<-f.done
}

// Close stops FerretDB and waits for its files to be closed.
func (m *Mongo) Close() {
	m.mu.Lock()
	for _, r := range m.readers {
		_ = r.db.Close()
	}
	m.readers = nil
	m.mu.Unlock()
	m.FerretDB.Close()
	if m.cleanup != nil {
		m.cleanup()
	}
}

// Prepare adds to every collection table of database an index that serves
// the filter FerretDB v1 reads a document by _id with; without it every
// read, update and upsert by _id scans the whole table. Tables that have it
// are left alone.
//
// SQLite: FerretDB indexes _id as `_ferretdb_sjson->"_id"` but filters by
// `_ferretdb_sjson->'$._id'`, an expression SQLite does not match to that
// index (measured: 10 ms per update at 2000 jobs, 0.2 ms with this index).
func (m *Mongo) Prepare(ctx context.Context, database string) error {
	db, err := m.sqlite(database, 10*time.Second)
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT table_name FROM _ferretdb_collections`)
	if err != nil {
		return fmt.Errorf("devstack: list tables of %s: %w", database, err)
	}
	var tables []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			rows.Close()
			return fmt.Errorf("devstack: list tables of %s: %w", database, err)
		}
		tables = append(tables, t)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("devstack: list tables of %s: %w", database, err)
	}
	for _, t := range tables {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`, t+"_id_lookup", t)
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("devstack: index %s.%s: %w", database, t, err)
		}
	}
	if t, err := historyTable(ctx, db); err == nil && t != "" {
		q := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (%s, %s)`, t+"_window", t, historySystemExpr, historyTimeExpr)
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("devstack: index %s.%s: %w", database, t, err)
		}
	}
	return nil
}

// The expressions of the history window index; HistoryWindow's queries
// use them as written, so SQLite matches them to the index.
const (
	historySystemExpr = `(_ferretdb_sjson->>'$.systemId')`
	historyTimeExpr   = `(_ferretdb_sjson->>'$.timestamp')`
)

func historyTable(ctx context.Context, db *sql.DB) (string, error) {
	var t string
	err := db.QueryRowContext(ctx, `SELECT table_name FROM _ferretdb_collections WHERE name = 'history'`).Scan(&t)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return t, err
}

// HistoryWindow reads, in `timestamp` order, the `history` documents of
// systemID with from <= timestamp < to, each as FerretDB's JSON, straight
// from SQLite through the index Prepare adds. The bounds are both strings
// (ISO timestamps compare as strings) or both Unix milliseconds (FerretDB's
// form of a BSON date); the store reads each form and merges them. FerretDB
// v1 itself pushes no filter but an _id equality down to SQLite: the same
// find decodes the whole collection in Go, so its cost grows with every
// system's history, this one's with the window. Readers see every commit
// FerretDB made, as SQLite's WAL readers do.
func (m *Mongo) HistoryWindow(ctx context.Context, database, systemID string, from, to any, fn func(doc []byte) error) error {
	db, table, err := m.reader(ctx, database)
	if err != nil {
		return err
	}
	if table == "" {
		return nil // no history written yet
	}
	q := fmt.Sprintf(`SELECT _ferretdb_sjson FROM %[1]q WHERE %[3]s = ? AND %[2]s >= ? AND %[2]s < ? ORDER BY %[2]s`,
		table, historyTimeExpr, historySystemExpr)
	rows, err := db.QueryContext(ctx, q, systemID, from, to)
	if err != nil {
		return fmt.Errorf("devstack: history of %s: %w", systemID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return fmt.Errorf("devstack: read history: %w", err)
		}
		if err := fn(doc); err != nil {
			return err
		}
	}
	return rows.Err()
}

// SQLite is a handle on database's SQLite file beside FerretDB's own, shared
// by every caller (the store reads the jobs through its own expression
// indexes there: FerretDB v1 would decode the whole collection for any
// filter but an _id equality).
func (m *Mongo) SQLite(ctx context.Context, database string) (*sql.DB, error) {
	db, _, err := m.reader(ctx, database)
	return db, err
}

// reader is the read handle of database's file and its history table,
// opened once: reads run beside FerretDB's own handles.
func (m *Mongo) reader(ctx context.Context, database string) (*sql.DB, string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r, ok := m.readers[database]; ok && r.table != "" {
		return r.db, r.table, nil
	}
	r, ok := m.readers[database]
	if !ok {
		db, err := m.sqlite(database, 5*time.Second)
		if err != nil {
			return nil, "", err
		}
		db.SetMaxOpenConns(4)
		r = &readerDB{db: db}
		if m.readers == nil {
			m.readers = map[string]*readerDB{}
		}
		m.readers[database] = r
	}
	t, err := historyTable(ctx, r.db)
	if err != nil {
		return nil, "", fmt.Errorf("devstack: history table of %s: %w", database, err)
	}
	r.table = t
	return r.db, t, nil
}

type readerDB struct {
	db    *sql.DB
	table string
}

// Sync makes every write committed to database so far durable, whatever
// process or thread committed it: one fdatasync of its SQLite write-ahead
// log. (With synchronous=NORMAL, a WAL checkpoint syncs the log before
// copying it into the database file and syncs that file after, so frames
// already moved out of the log are durable too.)
func (m *Mongo) Sync(_ context.Context, database string) error {
	// Opened each time: SQLite may delete and recreate the log file.
	f, err := os.Open(filepath.Join(m.dir, database+".sqlite-wal"))
	if errors.Is(err, os.ErrNotExist) {
		return nil // nothing written since the last checkpoint
	}
	if err != nil {
		return fmt.Errorf("devstack: sync %s: %w", database, err)
	}
	defer f.Close()
	if err := syscall.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("devstack: sync %s: %w", database, err)
	}
	return nil
}

// walLimit is the write-ahead log size past which Checkpoint truncates it.
// SQLite's own checkpoints never rewind the log while readers keep using
// it, and FerretDB's readers never pause under load: measured, 20000
// workflows left a 2 GB log, which every read searches.
const walLimit = 64 << 20

// Checkpoint copies database's write-ahead log into the database file and
// truncates it, once it has grown past 64 MB. It waits up to 250 ms,
// through SQLite's busy handler, for the writer and for readers of older
// snapshots (ErrCheckpointBusy when they outlast that), and holds new
// writers meanwhile, so the store calls it while none of its own
// writes is in flight (a bulk update holds its reads open until its last
// statement, and would wait on the checkpoint it blocks).
func (m *Mongo) Checkpoint(ctx context.Context, database string) error {
	st, err := os.Stat(filepath.Join(m.dir, database+".sqlite-wal"))
	if err != nil || st.Size() <= m.walLimit {
		return nil
	}
	// A short wait: the store's writes wait for this, and a reader that
	// holds an old snapshot longer is outwaited by the next try instead.
	db, err := m.sqlite(database, checkpointWait)
	if err != nil {
		return err
	}
	defer db.Close()
	var busy, logged, done int
	if err := db.QueryRowContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logged, &done); err != nil {
		return fmt.Errorf("devstack: checkpoint %s: %w", database, err)
	}
	if busy != 0 {
		return fmt.Errorf("devstack: checkpoint %s: %w", database, ErrCheckpointBusy)
	}
	return nil
}

// checkpointWait is how long Checkpoint waits for readers of older
// snapshots and for the writer.
const checkpointWait = 250 * time.Millisecond

// ErrCheckpointBusy: a reader or writer outlasted Checkpoint's wait; the
// log was not truncated.
var ErrCheckpointBusy = errors.New("write-ahead log in use, not truncated")

// sqlite opens database's file beside FerretDB's own handles; busy is how
// long a statement waits for a lock. The caller closes it.
func (m *Mongo) sqlite(database string, busy time.Duration) (*sql.DB, error) {
	path := filepath.Join(m.dir, database+".sqlite")
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("devstack: database %s: %w", database, err)
	}
	db, err := sql.Open("sqlite", fmt.Sprintf("file:%s?_pragma=busy_timeout(%d)", path, busy.Milliseconds()))
	if err != nil {
		return nil, fmt.Errorf("devstack: open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return db, nil
}

// lazyAttrs hands attributes to its handler only for a record it logs.
// FerretDB calls Logger.With on every SQL statement with the statement's
// arguments, whole documents among them, and slog's own handlers format
// those at once, even below their level: measured, a tenth of the CPU of
// every update.
type lazyAttrs struct {
	h     slog.Handler
	attrs []slog.Attr
}

func (l lazyAttrs) Enabled(ctx context.Context, level slog.Level) bool {
	return l.h.Enabled(ctx, level)
}

func (l lazyAttrs) Handle(ctx context.Context, r slog.Record) error {
	if len(l.attrs) > 0 {
		r = r.Clone()
		r.AddAttrs(l.attrs...)
	}
	return l.h.Handle(ctx, r)
}

func (l lazyAttrs) WithAttrs(attrs []slog.Attr) slog.Handler {
	return lazyAttrs{h: l.h, attrs: append(l.attrs[:len(l.attrs):len(l.attrs)], attrs...)}
}

// WithGroup applies the attributes so far, which then belong outside it.
func (l lazyAttrs) WithGroup(name string) slog.Handler {
	return lazyAttrs{h: l.h.WithAttrs(l.attrs).WithGroup(name)}
}

// Redis is an embedded miniredis. It keeps nothing on disk.
type Redis struct {
	*miniredis.Miniredis
	// Password is the one every connection must AUTH with: miniredis
	// listens on a loopback port, which any local user could reach.
	Password string
	stop     chan struct{}
}

// StartRedis starts miniredis on a loopback port, requiring a password of
// its own (generated; Password). Its clock follows the wall clock so keys
// with an expiry (asynq's leases, completed-task retention) expire as they
// would in Redis.
func StartRedis() (*Redis, error) {
	buf := make([]byte, 24)
	if _, err := rand.Read(buf); err != nil {
		return nil, fmt.Errorf("devstack: miniredis password: %w", err)
	}
	mr := miniredis.NewMiniRedis()
	pw := hex.EncodeToString(buf)
	mr.RequireAuth(pw)
	if err := mr.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("devstack: miniredis: %w", err)
	}
	r := &Redis{Miniredis: mr, Password: pw, stop: make(chan struct{})}
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case <-r.stop:
				return
			case now := <-t.C:
				mr.SetTime(now)
				mr.FastForward(now.Sub(last))
				last = now
			}
		}
	}()
	return r, nil
}

// URL is the redis:// URL of the embedded server, its password included.
func (r *Redis) URL() string { return "redis://:" + r.Password + "@" + r.Addr() + "/0" }

// Close stops the server; everything in it is lost.
func (r *Redis) Close() {
	close(r.stop)
	r.Miniredis.Close()
}
