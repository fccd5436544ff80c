// Package outage marks an error as an outage of one of the service's
// stores (Redis, MongoDB): the service's fault, never the job's. The step
// runner reads the mark (Of) and retries such a failure without using the
// job's retry budget, recording on the job that it was an outage.
package outage

import (
	"context"
	"errors"
)

// Stores, as Error.Store names them.
const (
	Redis   = "Redis"
	MongoDB = "MongoDB"
)

// Error is a call to Store that failed because the store did not serve it
// (unreachable, refused, timed out, still loading its data).
type Error struct {
	Store string
	Err   error
}

func (e *Error) Error() string { return e.Store + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Outage is what the runner reads of the error: the store that was down.
func (e *Error) Outage() string { return e.Store }

// Of reports the store whose outage err is (or wraps).
func Of(err error) (string, bool) {
	var o interface{ Outage() string }
	if errors.As(err, &o) {
		return o.Outage(), true
	}
	return "", false
}

// Wrap marks err as store's outage (nil stays nil): for a caller that has
// already told the store's outage from its other answers (not found, a
// conflict).
func Wrap(store string, err error) error {
	if err == nil {
		return nil
	}
	return &Error{Store: store, Err: err}
}

// Mark marks err, the failure of a call to store, as that store's outage,
// unless it is nil, already marked, or ctx ended first: a caller's own
// deadline (TASK_TIMEOUT) or cancel is not the store's fault.
func Mark(ctx context.Context, store string, err error) error {
	if err == nil || ctx.Err() != nil {
		return err
	}
	if _, ok := Of(err); ok {
		return err
	}
	return &Error{Store: store, Err: err}
}
