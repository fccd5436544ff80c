// Package ops holds what an operator does to an event and what the service
// reports of one: find it across queues, run it again, cancel it, its
// status with its job, the follow-up its run chained, and the job as shown
// (decrypted; Job gives the job page all of it from one read of the job).
// The API, the job pages, the dashboard's Run and `insights status` all
// call it. Like asynq's
// Inspector it knows nothing of HTTP: web maps its errors to status codes.
package ops

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/outage"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// The errors an operation returns when the answer is not a failure of
// MongoDB or Redis. The error returned Is one of these; its message is the
// one to show (it names the event or job). Any other error is a failure of
// a store, its message starting "MongoDB: " or "Redis: ".
var (
	// ErrNotFound: neither MongoDB nor Redis knows the event.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the event or its job is in the wrong state for the
	// operation (a completed event cancelled, a pending one run now...).
	ErrConflict = errors.New("conflict")
	// ErrNoStore: Config.Store is nil.
	ErrNoStore = errors.New("MongoDB is not configured")
	// ErrNoRedis: Config.Inspector is nil.
	ErrNoRedis = errors.New("Redis is not configured")
	// ErrNoClient: Config.Client is nil and the operation enqueues.
	ErrNoClient = errors.New("the event producer is not configured")
)

// opError is one of the sentinel errors with this occurrence's message.
type opError struct {
	kind error
	msg  string
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.kind }

func notFoundf(format string, args ...any) error {
	return &opError{kind: ErrNotFound, msg: fmt.Sprintf(format, args...)}
}

func conflictf(format string, args ...any) error {
	return &opError{kind: ErrConflict, msg: fmt.Sprintf(format, args...)}
}

// storeErr marks a MongoDB failure as its outage (outage.Of names it; its
// message starts "MongoDB: ").
func storeErr(err error) error { return outage.Wrap(outage.MongoDB, err) }

// redisErr marks a Redis failure as its outage.
func redisErr(err error) error { return outage.Wrap(outage.Redis, err) }

// Config holds an Operator's dependencies. Each field says what happens
// when it is left unset.
type Config struct {
	// Store holds the jobs. Nil: every operation but View returns
	// ErrNoStore.
	Store *store.Store
	// Inspector reads and changes asynq tasks. Nil: Status, Retry, Cancel
	// and ResetArchivedBudgets return ErrNoRedis.
	Inspector *asynq.Inspector
	// Client enqueues again, for Retry, a failed job's run whose task
	// Redis no longer has. Nil: that retry returns ErrNoClient; the rest
	// works.
	Client *tasks.Client
	// MaxRetries is MAX_RETRIES, the job's retry budget as the worker
	// enforces it (handlers.RunnerConfig.MaxRetries), reported as an
	// event's maxRetry. 0 or negative: no retries (a budget's zero is a
	// value, as in handlers).
	MaxRetries int
	// Decrypt opens a stored encrypted value ({encrypted: true, ...}) of a
	// result or step output for View and Status. Nil: values are shown as
	// stored.
	Decrypt func(stored any) (any, error)
	// BulkChunkSize is how many matched jobs a bulk action keeps per chunk:
	// the unit it records progress and resumes by. 0: DefaultBulkChunkSize.
	BulkChunkSize int
	// Logger receives what operators did (runs, re-enqueues, cancels) and
	// values that could not be decrypted. Nil: slog.Default().
	Logger *slog.Logger
}

// Operator runs the event operations. It is safe for concurrent use and
// Close stops its background work; the dependencies in Config are the
// caller's.
type Operator struct {
	cfg Config
	log *slog.Logger
	// bg is the context of the bulk actions it works in the background;
	// Close cancels it and waits for them (they resume later).
	bg   context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// New returns an Operator on cfg's dependencies.
func New(cfg Config) *Operator {
	o := &Operator{cfg: cfg, log: cfg.Logger}
	if o.log == nil {
		o.log = slog.Default()
	}
	o.cfg.MaxRetries = max(cfg.MaxRetries, 0)
	o.cfg.BulkChunkSize = cmp.Or(max(cfg.BulkChunkSize, 0), DefaultBulkChunkSize)
	o.bg, o.stop = context.WithCancel(context.Background())
	return o
}

// Close stops the bulk actions under way in the background, each at the
// end of the job it is on, and waits for them: ResumeBulk finishes them
// later, from their last recorded chunk.
func (o *Operator) Close() {
	o.stop()
	o.wg.Wait()
}
