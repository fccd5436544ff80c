package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Every row names a package of the module and an index of its own, and no
// row takes a reserved database.
func TestRedisDBTable(t *testing.T) {
	seen := map[int]redisDB{}
	keys := map[string]bool{}
	for _, r := range redisDBs {
		if r.db < 0 || r.db > 15 {
			t.Errorf("%+v: index outside Redis's default 0–15", r)
		}
		if why, ok := reservedRedisDBs[r.db]; ok {
			t.Errorf("%+v takes database %d, reserved for %s", r, r.db, why)
		}
		if o, ok := seen[r.db]; ok {
			t.Errorf("%+v and %+v share database %d", o, r, r.db)
		}
		seen[r.db] = r
		key := r.pkg + "|" + r.use
		if keys[key] {
			t.Errorf("package %s has two rows for use %q", r.pkg, r.use)
		}
		keys[key] = true
		if st, err := os.Stat(filepath.Join("..", "..", r.pkg)); err != nil || !st.IsDir() {
			t.Errorf("%+v: no package %s in the module (%v)", r, r.pkg, err)
		}
	}
	for _, db := range freeRedisDBs() {
		if _, ok := seen[db]; ok || reservedRedisDBs[db] != "" {
			t.Errorf("database %d listed free but taken", db)
		}
	}
}

// The test binary knows its package; a package without a row is told how
// to get one.
func TestRedisDBLookup(t *testing.T) {
	pkg, err := testPackage()
	if err != nil || pkg != "internal/testenv" {
		t.Fatalf("testPackage() = %q, %v; want internal/testenv", pkg, err)
	}
	if db, err := lookupRedisDB("web", ""); err != nil || db != 3 {
		t.Errorf("web: %d, %v; want 3", db, err)
	}
	if db, err := lookupRedisDB("internal/app", "reconcile"); err != nil || db != 6 {
		t.Errorf("internal/app reconcile: %d, %v; want 6", db, err)
	}
	_, err = lookupRedisDB(pkg, "")
	if err == nil {
		t.Fatal("a package without a row got a database")
	}
	for _, want := range []string{"internal/testenv", "redisDBs", fmt.Sprint(freeRedisDBs())} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if _, err := lookupRedisDB("web", "bench"); err == nil || !strings.Contains(err.Error(), `"bench"`) {
		t.Errorf("unknown use: %v", err)
	}
}
