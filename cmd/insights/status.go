package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/config"
)

func status(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	server := fs.String("server", "", "read from a running server's API (token from API_TOKEN)")
	// Accept the flag before or after the event id.
	var eventID string
	if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		eventID, args = args[0], args[1:]
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if eventID == "" && fs.NArg() > 0 {
		eventID = fs.Arg(0)
	}
	if eventID == "" {
		return usagef("status: EVENT_ID is required")
	}
	var raw json.RawMessage
	if *server != "" {
		if err := callAPI(ctx, http.MethodGet, *server, "/api/events/"+url.PathEscape(eventID), nil, &raw); err != nil {
			return err
		}
	} else {
		cfg, err := config.Load(nil)
		if err != nil {
			return err
		}
		if cfg.EmbeddedRedis() || cfg.EmbeddedMongo() {
			return usagef("REDIS_URL and MONGODB_URI must be set to read them directly; for a server on the embedded stores use --server URL")
		}
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		a, err := app.Open(ctx, cfg, quiet)
		if err != nil {
			return err
		}
		defer a.Close()
		// The answer of GET /api/events/{eventId}: the API builds it with
		// the same operation.
		o := a.NewOperator(quiet)
		defer o.Close()
		st, err := o.Status(ctx, eventID)
		if err != nil {
			return err
		}
		if raw, err = json.Marshal(st); err != nil {
			return err
		}
	}
	// Both answers are printed the same way: keys sorted, indented.
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
