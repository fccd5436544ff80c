package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/testenv"
)

// TestServeSplitRoleRefusesEmbeddedStores: an api-only or worker-only
// process on an embedded Redis or MongoDB would have stores of its own, so
// the api's events would never reach the worker. serve exits 2 naming the
// role and the missing variable, before it starts anything or writes
// DATA_DIR. It runs as a child process so that a serve that does start is
// killed at the deadline instead of hanging the test.
func TestServeSplitRoleRefusesEmbeddedStores(t *testing.T) {
	// Nothing is dialled before the refusal, so these need no servers; an
	// empty value is unset (and hides the REDIS_URL of the test run).
	const redisURL, mongoURI = "redis://127.0.0.1:1/0", "mongodb://127.0.0.1:1"
	for _, tc := range []struct {
		role, redis, mongo string
		want, notWant      []string
	}{
		{"worker", "", "", []string{"--role worker", "REDIS_URL", "MONGODB_URI"}, nil},
		{"api", "", "", []string{"--role api", "REDIS_URL", "MONGODB_URI"}, nil},
		{"worker", redisURL, "", []string{"--role worker", "MONGODB_URI"}, []string{"REDIS_URL"}},
		{"api", redisURL, "", []string{"--role api", "MONGODB_URI"}, []string{"REDIS_URL"}},
		{"worker", "", mongoURI, []string{"--role worker", "REDIS_URL"}, []string{"MONGODB_URI"}},
		{"api", "", mongoURI, []string{"--role api", "REDIS_URL"}, []string{"MONGODB_URI"}},
	} {
		name := tc.role + "/embedded"
		if tc.redis == "" {
			name += "_redis"
		}
		if tc.mongo == "" {
			name += "_mongo"
		}
		t.Run(name, func(t *testing.T) {
			dataDir := t.TempDir()
			e := &env{vars: map[string]string{"REDIS_URL": tc.redis, "REDIS_CLUSTER_ADDRS": "", "MONGODB_URI": tc.mongo,
				"DATA_DIR": dataDir, "HTTP_ADDR": "127.0.0.1:0"}}
			p := e.start(t, "serve --role "+tc.role)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				t.Fatal("serve still running after 30 s, want it refused at start-up")
			}
			if p.code != 2 {
				t.Errorf("exit code %d, want 2", p.code)
			}
			// The stderr reader may lag p.done by a moment.
			testenv.WaitFor(t, 5*time.Second, "the refusal on stderr", func() (bool, error) {
				return strings.Contains(p.log(), "needs a shared"), nil
			})
			msg := p.log()
			t.Logf("exit %d: %s", p.code, strings.TrimSpace(msg))
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q does not name %s", msg, w)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(msg, w) {
					t.Errorf("stderr %q names %s, which is set", msg, w)
				}
			}
			if ents, err := os.ReadDir(dataDir); err != nil || len(ents) > 0 {
				t.Errorf("DATA_DIR written before the refusal: %v %v", ents, err)
			}
		})
	}
}

// TestHTTPServerBoundsReads: serve's server limits header, body and idle
// time, so a slow or idle client cannot hold a connection for ever.
func TestHTTPServerBoundsReads(t *testing.T) {
	srv := newHTTPServer(":0")
	if srv.ReadHeaderTimeout <= 0 || srv.ReadTimeout <= 0 || srv.IdleTimeout <= 0 {
		t.Errorf("ReadHeaderTimeout %v, ReadTimeout %v, IdleTimeout %v: want all > 0",
			srv.ReadHeaderTimeout, srv.ReadTimeout, srv.IdleTimeout)
	}
}

// serve prints a credential only the start it was generated: one read
// back from DATA_DIR is named with its file, never shown.
func TestBannerShowsOnlyGeneratedCredentials(t *testing.T) {
	dir := t.TempDir()
	var out strings.Builder
	printBanner(&out, &config.Config{DataDir: dir, APIToken: "kept-token-0123456789", AdminPassword: "kept-password-987654",
		Kept: []string{"API_TOKEN", "ADMIN_PASSWORD"}}, "127.0.0.1:8080", "all")
	if s := out.String(); strings.Contains(s, "kept-token-0123456789") || strings.Contains(s, "kept-password-987654") ||
		strings.Contains(s, "generated;") || !strings.Contains(s, filepath.Join(dir, "api_token")) {
		t.Errorf("banner with credentials read back:\n%s", s)
	}
	out.Reset()
	printBanner(&out, &config.Config{DataDir: dir, APIToken: "new-token-0123456789", AdminPassword: "kept-password-987654",
		Generated: []string{"API_TOKEN"}, Kept: []string{"ADMIN_PASSWORD"}}, "127.0.0.1:8080", "all")
	if s := out.String(); !strings.Contains(s, "API_TOKEN=new-token-0123456789") || strings.Contains(s, "kept-password-987654") {
		t.Errorf("banner with a new token and a kept password:\n%s", s)
	}
}

// A start-up error never prints a password of REDIS_URL or MONGODB_URI.
func TestServeErrorsHidePasswords(t *testing.T) {
	for _, tc := range []struct{ name, val, secret string }{
		{"REDIS_URL", "redis://user:hunter2-pw@host:port/0", "hunter2-pw"},
		{"MONGODB_URI", "mongodb://u:s3cr%et-pw@127.0.0.1/", "s3cr"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "")
			t.Setenv("MONGODB_URI", "")
			t.Setenv("DATA_DIR", t.TempDir())
			t.Setenv(tc.name, tc.val)
			var stdout, stderr strings.Builder
			code := run(context.Background(), []string{"serve"}, strings.NewReader(""), &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.name) {
				t.Fatalf("exit %d, stderr %q: want a failure naming %s", code, stderr.String(), tc.name)
			}
			if strings.Contains(stderr.String()+stdout.String(), tc.secret) {
				t.Errorf("the password is printed: %s", stderr.String())
			}
		})
	}
}
