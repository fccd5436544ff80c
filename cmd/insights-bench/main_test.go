package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/bmsview/insights/internal/testenv"
)

func runCLI(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// Bad flags exit 2 with a message naming the flag; so does the old
// subcommand form (`insights bench ...` became this command).
func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{{"-store", "mysql"}, {"-n", "0"}, {"-redis", "http://x"}, {"bench", "-n", "30"}} {
		code, _, stderr := runCLI(args...)
		if code != 2 || !strings.Contains(stderr, args[0]) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", args, code, stderr, args[0])
		}
	}
	code, _, stderr := runCLI("-h")
	if code != 0 || !strings.Contains(stderr, "-skip-peers") {
		t.Errorf("-h: exit %d, stderr %q; want 0 and the flags", code, stderr)
	}
}

// A short run of ours alone prints the table with our row measured.
func TestBenchOurs(t *testing.T) {
	redisURL := testenv.RealRedisURL(t, "") // the command's default database, which it flushes
	code, stdout, stderr := runCLI("-n", "30", "-c", "5", "-store", "embedded", "-skip-peers", "-redis", redisURL)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// 7 to 8 writes a workflow: lastInsights is skipped when a later
	// completion of the same system was stored first.
	if !strings.Contains(stdout, "| ours, FerretDB SQLite (embedded) | ") || !regexp.MustCompile(`\| 1\.00 \| (7\.\d|8\.0) \|`).MatchString(stdout) {
		t.Errorf("table without our measured row:\n%s", stdout)
	}
}
