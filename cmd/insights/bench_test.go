package main

import (
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
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
	ru := os.Getenv("REDIS_URL")
	if ru == "" {
		t.Skip("REDIS_URL not set")
	}
	u, err := url.Parse(ru)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/13" // the bench command's own database (flushed); the loadtest test uses 14
	code, stdout, stderr := runCLI("bench", "-n", "30", "-c", "5", "-store", "embedded", "-skip-peers", "-redis", u.String())
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// 7 to 8 writes a workflow: lastInsights is skipped when a later
	// completion of the same system was stored first.
	if !strings.Contains(stdout, "| ours, FerretDB SQLite (embedded) | ") || !regexp.MustCompile(`\| 1\.00 \| (7\.\d|8\.0) \|`).MatchString(stdout) {
		t.Errorf("table without our measured row:\n%s", stdout)
	}
}
