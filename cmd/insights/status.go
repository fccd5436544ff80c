package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/web"
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
	path := "/api/events/" + url.PathEscape(eventID)
	var raw json.RawMessage
	if *server != "" {
		if err := callAPI(ctx, http.MethodGet, *server, path, nil, &raw); err != nil {
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
		a, err := app.Open(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			return err
		}
		defer a.Close()
		// The same view as GET /api/events/{eventId}, served in process.
		const token = "in-process"
		ws := web.New(web.Config{Store: a.Store, Client: a.Client, Inspector: a.Inspector, APIToken: token,
			MaxRetries: webMaxRetries(cfg.MaxRetries), Decrypt: a.Decrypt, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		defer ws.Close()
		req := httptest.NewRequestWithContext(ctx, http.MethodGet, path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		rec := httptest.NewRecorder()
		ws.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			return fmt.Errorf("event %s: %s", eventID, rec.Body.String())
		}
		raw = rec.Body.Bytes()
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// webMaxRetries passes MAX_RETRIES to web.Config, where 0 means "default"
// and a negative value means none.
func webMaxRetries(n int) int {
	if n == 0 {
		return -1
	}
	return n
}
