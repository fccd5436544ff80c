package app_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/testenv"
)

// With no configuration, the embedded stores take no connection from
// another local user: miniredis asks for a generated password, and
// FerretDB (no authentication of its own) listens on a socket in
// DATA_DIR, whose mode is 0700, instead of a TCP port.
func TestEmbeddedStoresArePrivate(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(func(k string) string {
		if k == "DATA_DIR" {
			return dataDir
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cfg.EnsureCredentials(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := app.Open(ctx, cfg, testenv.Logger())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	opt, ok := a.Redis.(asynq.RedisClientOpt)
	if !ok || opt.Password == "" {
		t.Fatalf("embedded Redis options %+v: want a password", a.Redis)
	}
	anon := redis.NewClient(&redis.Options{Addr: opt.Addr})
	defer anon.Close()
	if _, err := anon.Keys(ctx, "asynq:*").Result(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("KEYS asynq:* without the password: %v, want NOAUTH", err)
	}
	if err := a.Ready(ctx); err != nil {
		t.Fatalf("the service reaches its own stores: %v", err)
	}
	sock := filepath.Join(dataDir, "ferretdb", "mongodb.sock")
	if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no FerretDB socket at %s: %v", sock, err)
	}
	for _, d := range []string{dataDir, filepath.Dir(sock)} {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want mode 0700", d, fi.Mode(), err)
		}
	}
}
