package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/bmsgen"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// demoHistory is how much history each demo system gets, at demoStep.
const (
	demoHistory = 14 * 24 * time.Hour
	demoStep    = 15 * time.Minute
)

// demoSeed writes the demo systems and their history (idempotent: the ids
// are deterministic and existing history is left as it is).
func demoSeed(ctx context.Context, st *store.Store, now time.Time) error {
	from := now.Add(-demoHistory)
	for _, sys := range bmsgen.Systems() {
		if err := st.UpsertSystem(ctx, sys); err != nil {
			return fmt.Errorf("demo: system %s: %w", sys.ID, err)
		}
		if n, err := st.CountHistory(ctx, sys.ID); err == nil && n > 0 {
			continue
		}
		if err := st.InsertHistory(ctx, bmsgen.History(sys, 42, from, now, demoStep)); err != nil {
			return fmt.Errorf("demo: history of %s: %w", sys.ID, err)
		}
	}
	return nil
}

// demoEvents are the demo's sends: one per system (the first urgent), one
// scheduled a minute ahead and one whose job has no request, which fails
// for good (fetch-job, no retry) so the dead-letter view has something.
func demoEvents(now time.Time) []tasks.Send {
	var out []tasks.Send
	for i, sys := range bmsgen.Systems() {
		snap := bmsgen.Snapshot(sys, 42, now)
		days := 14
		s := tasks.Send{Data: tasks.EventData{JobID: sys.ID + "-insights", SystemID: sys.ID, AnalysisData: &snap, ContextWindowDays: &days},
			Priority: tasks.DefaultPriority}
		if i == 0 {
			s.Priority = tasks.UrgentPriority
		}
		out = append(out, s)
	}
	sys := bmsgen.Systems()[0]
	snap := bmsgen.Snapshot(sys, 43, now)
	out = append(out,
		tasks.Send{Data: tasks.EventData{JobID: "demo-scheduled", SystemID: sys.ID, AnalysisData: &snap}, Priority: 3, At: now.Add(time.Minute)},
		tasks.Send{Data: tasks.EventData{JobID: "demo-missing-request"}, Priority: tasks.DefaultPriority},
	)
	return out
}

// runDemo seeds and sends through the app's own client (serve --demo).
func runDemo(ctx context.Context, a *app.App, w io.Writer) error {
	now := time.Now().UTC()
	if err := demoSeed(ctx, a.Store, now); err != nil {
		return err
	}
	enc := json.NewEncoder(w)
	for _, s := range demoEvents(now) {
		// Seeded once: a restart with --demo must not start every demo
		// job's run again (a new run each time).
		if _, err := a.Store.GetJob(ctx, s.Data.JobID); err == nil {
			fmt.Fprintf(w, "demo job %s exists already: not sent again (delete DATA_DIR for a fresh demo)\n", s.Data.JobID)
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("demo: read %s: %w", s.Data.JobID, err)
		}
		res, err := a.Client.Send(ctx, &s)
		if err != nil {
			return fmt.Errorf("demo: send %s: %w", s.Data.JobID, err)
		}
		_ = enc.Encode(res)
	}
	return nil
}

// demo runs the demo against a running service: the data goes straight to
// MongoDB (the API has no route for history), the events through the API
// with --server, or straight to Redis like any Go producer.
func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo", stderr)
	server := fs.String("server", "", "send the events through a running server's API (token from API_TOKEN)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(nil)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	if cfg.EmbeddedMongo() {
		fmt.Fprintln(stderr, "insights demo: MONGODB_URI is not set, so no demo history is written; the insights use the snapshots alone. "+
			"For the full demo on the embedded stores run `insights serve --demo`.")
	} else {
		st, err := store.Open(ctx, store.Config{URI: cfg.MongoURI, Database: cfg.MongoDB})
		if err != nil {
			return fmt.Errorf("MONGODB_URI: %w", err)
		}
		defer st.Close(context.Background())
		if err := demoSeed(ctx, st, now); err != nil {
			return err
		}
	}
	enc := json.NewEncoder(stdout)
	for _, s := range demoEvents(now) {
		var res *tasks.SendResult
		if *server != "" {
			res, err = sendHTTP(ctx, *server, s.Data, s.Priority, s.At)
		} else {
			res, err = sendDirect(ctx, s.Data, s.Priority, s.At)
		}
		if err != nil {
			return fmt.Errorf("demo: send %s: %w", s.Data.JobID, err)
		}
		_ = enc.Encode(res)
	}
	return nil
}
