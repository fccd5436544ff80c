package testenv

import (
	"context"
	"log/slog"
	"testing"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/config"
)

// App builds the service as `insights serve` does: the configuration from
// vars (with the test's embedded or MONGODB_URI MongoDB and a database of
// its own added), then app.Open. The database is dropped and the app closed
// when the test ends.
func App(t testing.TB, vars map[string]string, log *slog.Logger) (*app.App, *config.Config) {
	t.Helper()
	vars["MONGODB_URI"] = MongoURI(t)
	vars["MONGODB_DB_NAME"] = DBName(t)
	cfg, err := config.Load(func(k string) string { return vars[k] })
	if err != nil {
		t.Fatalf("config.Load: %v", err)
	}
	a, err := app.Open(context.Background(), cfg, log)
	if err != nil {
		t.Fatalf("app.Open: %v", err)
	}
	t.Cleanup(func() {
		_ = a.Store.Database().Drop(context.Background())
		a.Close()
	})
	return a, cfg
}
