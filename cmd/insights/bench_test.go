package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/bmsview/insights/internal/testenv"
)

func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{{"bench", "-store", "mysql"}, {"bench", "-n", "0"}, {"bench", "-redis", "http://x"}} {
		code, _, stderr := runCLI(args...)
		if code != 2 || !strings.Contains(stderr, args[1]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", args, code, stderr, args[1])
		}
	}
}

// A short run of ours alone prints the table with our row measured.
func TestBenchOurs(t *testing.T) {
	redisURL := testenv.RealRedisURL(t, "bench") // the command's default database, which it flushes
	code, stdout, stderr := runCLI("bench", "-n", "30", "-c", "5", "-store", "embedded", "-skip-peers", "-redis", redisURL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// 7 to 8 writes a workflow: lastInsights is skipped when a later
	// completion of the same system was stored first.
	if !strings.Contains(stdout, "| ours, FerretDB SQLite (embedded) | ") || !regexp.MustCompile(`\| 1\.00 \| (7\.\d|8\.0) \|`).MatchString(stdout) {
		t.Errorf("table without our measured row:\n%s", stdout)
	}
}
