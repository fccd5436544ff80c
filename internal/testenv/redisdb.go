package testenv

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/devstack"
)

// redisDBs is the one table of the Redis databases that tests use on the
// shared server of REDIS_URL. `go test ./...` runs the packages' test
// binaries at the same time and each flushes its databases, so two rows
// must never share an index: a package that took another's would wipe its
// queues mid-test. A package gets its database from here (Redis, RedisFor,
// RealRedisURL), never by a number of its own; one missing from the table
// fails with a message saying so. reservedRedisDBs are taken too; 15 is
// free.
var redisDBs = []redisDB{
	{pkg: "handlers", db: 1},
	{pkg: "web", db: 3},
	{pkg: "cmd/insights", db: 4},
	{pkg: "internal/app", db: 5}, // the end-to-end tests
	{pkg: "internal/app", use: "reconcile", db: 6},
	{pkg: "internal/ops", db: 7},
	{pkg: "internal/ops", use: "bench-bulk", db: 8}, // BenchmarkBulkRetry
	{pkg: "internal/flow", db: 2},
	{pkg: "handlers", use: "bench-workflow", db: 9}, // BenchmarkWorkflow
	{pkg: "handlers", use: "bench-noop", db: 10},    // its raw asynq beside it
	{pkg: "cmd/insights-bench", db: 13},             // the command's default, which it flushes
	{pkg: "cmd/insights-bench/internal/loadtest", db: 14},
}

// reservedRedisDBs are databases on the same server that no test may take.
var reservedRedisDBs = map[int]string{
	0:  "a service a developer runs on the same server (CI's REDIS_URL names it)",
	11: "insights-bench's peers (BullMQ, asynq; cmd/insights-bench/internal/peers), which flush it",
	12: "insights-bench's peers (BullMQ, asynq; cmd/insights-bench/internal/peers), which flush it",
}

// redisDB is one row of redisDBs: the database db of test package pkg (its
// import path below the module) for use ("" the package's own).
type redisDB struct {
	pkg, use string
	db       int
}

// lookupRedisDB finds pkg's database for use in redisDBs.
func lookupRedisDB(pkg, use string) (int, error) {
	for _, r := range redisDBs {
		if r.pkg == pkg && r.use == use {
			return r.db, nil
		}
	}
	what := "its own Redis database"
	if use != "" {
		what = fmt.Sprintf("a Redis database for %q", use)
	}
	return 0, fmt.Errorf("testenv: package %s has no row for %s in redisDBs (internal/testenv/redisdb.go): "+
		"add one with a free index (%v); never reuse another package's, which its tests flush", pkg, what, freeRedisDBs())
}

// freeRedisDBs lists the indexes of Redis's default 16 databases that are
// neither in redisDBs nor reserved.
func freeRedisDBs() []int {
	var free []int
	for db := range 16 {
		if _, ok := reservedRedisDBs[db]; !ok && !slices.ContainsFunc(redisDBs, func(r redisDB) bool { return r.db == db }) {
			free = append(free, db)
		}
	}
	return free
}

// testPackage is the import path, below the module, of the package whose
// test binary this is: the binary is built for it whichever package's code
// asks, so a helper shared between packages still gets its caller's row.
// The build info names it, with ".test" after it but for a main package.
func testPackage() (string, error) {
	bi, ok := debug.ReadBuildInfo()
	if !ok || !testing.Testing() {
		return "", errors.New("testenv: not a test binary; Redis databases are handed out to test packages only")
	}
	return strings.TrimPrefix(strings.TrimSuffix(bi.Path, ".test"), bi.Main.Path+"/"), nil
}

// redisDBFor is the calling test package's database for use, or fails t.
func redisDBFor(t testing.TB, use string) int {
	t.Helper()
	pkg, err := testPackage()
	if err != nil {
		t.Fatal(err)
	}
	db, err := lookupRedisDB(pkg, use)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// Redis returns connection options for this test package's own Redis
// database (its row in redisDBs), flushed first. With REDIS_URL set it is
// that server; else a miniredis that stops when the test ends.
func Redis(t testing.TB) asynq.RedisClientOpt {
	t.Helper()
	return redisAt(t, redisDBFor(t, ""))
}

// RedisFor is Redis for a second database of the package, kept apart from
// its own for use (a row of redisDBs).
func RedisFor(t testing.TB, use string) asynq.RedisClientOpt {
	t.Helper()
	return redisAt(t, redisDBFor(t, use))
}

func redisAt(t testing.TB, db int) asynq.RedisClientOpt {
	t.Helper()
	if u := os.Getenv("REDIS_URL"); u != "" {
		o := parseRedisURL(t, u)
		o.DB = db
		c := redis.NewClient(&redis.Options{Addr: o.Addr, Username: o.Username, Password: o.Password, DB: db, TLSConfig: o.TLSConfig})
		defer c.Close()
		if err := c.FlushDB(context.Background()).Err(); err != nil {
			t.Fatalf("flush redis db %d: %v", db, err)
		}
		return o
	}
	r, err := devstack.StartRedis()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return asynq.RedisClientOpt{Addr: r.Addr(), Password: r.Password}
}

// RealRedisURL is the redis:// URL of the package's database for use ("":
// its own) on REDIS_URL's server, for code that takes a URL and flushes the
// database itself (loadtest.Run, insights-bench). Without REDIS_URL the
// test is skipped: that code needs a real server.
func RealRedisURL(t testing.TB, use string) string {
	t.Helper()
	u := os.Getenv("REDIS_URL")
	if u == "" {
		t.Skip("REDIS_URL not set")
	}
	p, err := url.Parse(u)
	if err != nil {
		t.Fatalf("REDIS_URL %q: %v", u, err)
	}
	p.Path = fmt.Sprintf("/%d", redisDBFor(t, use))
	return p.String()
}

// parseRedisURL reads REDIS_URL, which must name one plain server.
func parseRedisURL(t testing.TB, u string) asynq.RedisClientOpt {
	t.Helper()
	opt, err := asynq.ParseRedisURI(u)
	if err != nil {
		t.Fatalf("REDIS_URL: %v", err)
	}
	o, ok := opt.(asynq.RedisClientOpt)
	if !ok {
		t.Fatalf("REDIS_URL: tests need a plain redis:// URL, got %T", opt)
	}
	return o
}
