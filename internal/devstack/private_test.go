package devstack

import (
	"context"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The embedded Redis answers only a client that knows its generated
// password: any local user can reach its loopback port.
func TestEmbeddedRedisNeedsItsPassword(t *testing.T) {
	r, err := StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := context.Background()
	if len(r.Password) < 32 {
		t.Fatalf("password %q: want a generated one", r.Password)
	}
	anon := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer anon.Close()
	if _, err := anon.Keys(ctx, "*").Result(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Fatalf("KEYS without the password: %v, want NOAUTH", err)
	}
	wrong := redis.NewClient(&redis.Options{Addr: r.Addr(), Password: "guess"})
	defer wrong.Close()
	if err := wrong.Ping(ctx).Err(); err == nil {
		t.Fatal("a wrong password was accepted")
	}
	opt, err := redis.ParseURL(r.URL())
	if err != nil {
		t.Fatal(err)
	}
	ok := redis.NewClient(opt)
	defer ok.Close()
	if err := ok.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatalf("with the password of URL(): %v", err)
	}
}

// The service's embedded FerretDB (which has no authentication) listens on
// a Unix socket in a folder of mode 0700, not on a TCP port; a socket left
// by a dead process is cleared at the next start, and a path too long for
// a socket moves it to a private temporary folder.
func TestEmbeddedMongoListensOnAPrivateSocket(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "ferretdb")
	if err := os.MkdirAll(dir, 0o755); err != nil { // loose, as an older version left it
		t.Fatal(err)
	}
	use := func(m *Mongo) {
		t.Helper()
		if !strings.HasPrefix(m.URI, "mongodb://%2F") || !strings.Contains(m.URI, ".sock") {
			t.Fatalf("URI %s: want a Unix socket", m.URI)
		}
		c, err := mongo.Connect(options.Client().ApplyURI(m.URI))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Disconnect(ctx)
		if _, err := c.Database("private").Collection("a").InsertOne(ctx, bson.D{{Key: "x", Value: 1}}); err != nil {
			t.Fatalf("insert through the socket: %v", err)
		}
	}
	m, err := StartMongoPrivate(ctx, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	use(m)
	for _, p := range []string{dir} {
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: %v %v, want mode 0700", p, fi.Mode(), err)
		}
	}
	if fi, err := os.Lstat(filepath.Join(dir, socketName)); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("no socket in %s: %v", dir, err)
	}
	// A second service on the same DATA_DIR is refused while one runs.
	if m2, err := StartMongoPrivate(ctx, dir, nil); err == nil {
		m2.Close()
		t.Fatal("a second FerretDB started on a socket in use")
	}
	m.Close()

	// As a killed process leaves it: a socket file no one serves.
	if _, err := os.Lstat(filepath.Join(dir, socketName)); os.IsNotExist(err) {
		if err := touchSocket(filepath.Join(dir, socketName)); err != nil {
			t.Fatal(err)
		}
	}
	m, err = StartMongoPrivate(ctx, dir, nil)
	if err != nil {
		t.Fatalf("restart over a stale socket: %v", err)
	}
	use(m)
	m.Close()

	long := filepath.Join(t.TempDir(), strings.Repeat("d", 120))
	m, err = StartMongoPrivate(ctx, long, nil)
	if err != nil {
		t.Fatal(err)
	}
	use(m)
	sock, err := url2path(m.URI)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Dir(sock)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("temporary socket folder %s: %v %v, want mode 0700", filepath.Dir(sock), fi.Mode(), err)
	}
	m.Close()
	if _, err := os.Stat(filepath.Dir(sock)); !os.IsNotExist(err) {
		t.Errorf("temporary socket folder left behind: %v", err)
	}
}

// touchSocket leaves a socket file at path with no one serving it.
func touchSocket(path string) error {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	// Without unlinking, as a killed process would.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	return ln.Close()
}

// url2path is the socket path of a mongodb:// URI naming one.
func url2path(uri string) (string, error) {
	host := strings.TrimSuffix(strings.TrimPrefix(uri, "mongodb://"), "/")
	return url.PathUnescape(host)
}
