package web

// The live streams' shared watchers: one per followed job, however many
// pages follow it, so the store is read at most once a poll per job
// (issue 22 item 4), and the caps on open streams.

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/bmsview/insights/internal/store"
)

// Default caps on open live streams (Config.LiveStreamsPerUser,
// Config.LiveStreamsMax).
const (
	DefaultLiveStreamsPerUser = 20
	DefaultLiveStreamsMax     = 500
)

// liveReader reads a followed job again; *store.Store is one.
type liveReader interface {
	ReloadLive(ctx context.Context, job *store.Job) (*store.Job, error)
}

// liveHub hands out the watchers of followed jobs and counts the open
// streams against the caps.
type liveHub struct {
	log *slog.Logger
	// perUserCap and totalCap bound the open streams; < 0: no bound.
	perUserCap, totalCap int

	mu       sync.Mutex
	watchers map[string]*jobWatcher // by jobId
	perUser  map[string]int
	open     int
	// reads counts the watchers' reads of the store (tests, benchmarks).
	reads int64
}

func newLiveHub(log *slog.Logger, perUser, total int) *liveHub {
	if perUser == 0 {
		perUser = DefaultLiveStreamsPerUser
	}
	if total == 0 {
		total = DefaultLiveStreamsMax
	}
	return &liveHub{log: log, perUserCap: perUser, totalCap: total, watchers: map[string]*jobWatcher{}, perUser: map[string]int{}}
}

// acquire takes one stream of user's; release gives it back. An error
// when a cap is reached: 429, with the cap named.
func (h *liveHub) acquire(user string) (release func(), err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case h.totalCap >= 0 && h.open >= h.totalCap:
		return nil, &httpError{code: http.StatusTooManyRequests,
			msg: "too many live streams open on this server (" + strconv.Itoa(h.totalCap) + "); close a job page or try again later"}
	case h.perUserCap >= 0 && h.perUser[user] >= h.perUserCap:
		return nil, &httpError{code: http.StatusTooManyRequests,
			msg: "too many live streams open for user " + user + " (" + strconv.Itoa(h.perUserCap) + "); close a job page or try again later"}
	}
	h.open++
	h.perUser[user]++
	var once sync.Once
	return func() {
		once.Do(func() {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.open--
			if h.perUser[user]--; h.perUser[user] <= 0 {
				delete(h.perUser, user)
			}
		})
	}, nil
}

// storeReads is how many times the watchers have read the store.
func (h *liveHub) storeReads() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.reads
}

// jobWatcher reads one job every poll while a stream follows it and tells
// its streams of each change.
type jobWatcher struct {
	hub *liveHub
	id  string
	// subs is the number of streams following it (hub.mu).
	subs   int
	cancel context.CancelFunc
	// ready is closed once the first read is done: err, or the job.
	ready chan struct{}
	err   error

	mu      sync.Mutex
	job     *store.Job
	gone    bool          // the job was deleted
	changed chan struct{} // closed, and replaced, at each change
}

// watch follows job id: the watcher already reading it, else a new one
// whose first read is load (the streams that come meanwhile wait for it).
// poll paces a new watcher's reads through reader. Call the returned
// function when the stream ends.
func (h *liveHub) watch(id string, load func() (*store.Job, error), reader liveReader, poll time.Duration) (*jobWatcher, func(), error) {
	h.mu.Lock()
	w, ok := h.watchers[id]
	if ok {
		w.subs++
		h.mu.Unlock()
		<-w.ready
		if w.err != nil {
			h.leave(w)
			return nil, nil, w.err
		}
		return w, func() { h.leave(w) }, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	w = &jobWatcher{hub: h, id: id, subs: 1, cancel: cancel, ready: make(chan struct{}), changed: make(chan struct{})}
	h.watchers[id] = w
	h.mu.Unlock()

	job, err := load()
	if err != nil {
		w.err = err
		h.mu.Lock()
		if h.watchers[id] == w {
			delete(h.watchers, id)
		}
		h.mu.Unlock()
		close(w.ready)
		h.leave(w)
		return nil, nil, err
	}
	w.job = job
	close(w.ready)
	go w.run(ctx, reader, poll)
	return w, func() { h.leave(w) }, nil
}

// leave ends one stream's following of w; the last one stops it.
func (h *liveHub) leave(w *jobWatcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w.subs--; w.subs > 0 {
		return
	}
	if h.watchers[w.id] == w {
		delete(h.watchers, w.id)
	}
	w.cancel()
}

// latest is the job as last read (nil once deleted, gone set) and the
// channel closed at the next change.
func (w *jobWatcher) latest() (job *store.Job, gone bool, next <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.job, w.gone, w.changed
}

func (w *jobWatcher) publish(job *store.Job, gone bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if job != nil {
		w.job = job
	}
	w.gone = gone
	close(w.changed)
	w.changed = make(chan struct{})
}

// run reads the job every poll until ctx ends (no stream follows it) or
// the job is deleted, and publishes each change.
func (w *jobWatcher) run(ctx context.Context, reader liveReader, poll time.Duration) {
	t := time.NewTicker(poll)
	defer t.Stop()
	log := w.hub.log.With("jobId", w.id)
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		prev, _, _ := w.latest()
		w.hub.mu.Lock()
		w.hub.reads++
		w.hub.mu.Unlock()
		cur, err := reader.ReloadLive(ctx, prev)
		switch {
		case errors.Is(err, store.ErrNotFound):
			// Streams that come later read it afresh (and answer 404).
			w.hub.mu.Lock()
			if w.hub.watchers[w.id] == w {
				delete(w.hub.watchers, w.id)
			}
			w.hub.mu.Unlock()
			w.publish(nil, true)
			return
		case err != nil:
			if ctx.Err() != nil {
				return
			}
			// MongoDB away: the watcher reads again at the next poll
			// (the streams send keep-alives meanwhile).
			if !failing {
				log.Warn("live stream: job not read; reading again", "err", err)
			}
			failing = true
			continue
		}
		failing = false
		if !changed(prev, cur) {
			continue
		}
		w.publish(cur, false)
	}
}

// changed reports whether cur tells a stream something prev did not.
func changed(prev, cur *store.Job) bool {
	return !cur.UpdatedAt.Equal(prev.UpdatedAt) || len(cur.Progress) != len(prev.Progress) ||
		cur.Status != prev.Status || cur.EventID != prev.EventID
}
