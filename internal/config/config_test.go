package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func TestDefaults(t *testing.T) {
	c, err := Load(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if !c.EmbeddedRedis() || !c.EmbeddedMongo() || c.MongoDB != "bmsview" || c.DataDir != "./data" || c.HTTPAddr != ":8080" ||
		c.WorkerConcurrency != 10 || c.MaxRetries != 15 || c.RetryTransientDelay != 30*time.Second ||
		c.RetryRateLimitDelay != 5*time.Minute || c.TaskTimeout != 24*time.Hour || c.TaskRetention != 168*time.Hour ||
		c.InsightsProvider != "rules" || c.GeminiModel != "gemini-2.5-flash" || c.ShutdownTimeout != 25*time.Second ||
		len(c.BackoffSchedule) != 4 || c.BackoffSchedule[3] != time.Minute || c.QueueWeights["critical"] != 6 ||
		c.LogLevel != "info" || c.LogFormat != "text" {
		t.Errorf("defaults: %+v", c)
	}
	if c.SystemConcurrency != 0 || c.BreakerFailures != 5 || c.BreakerCooldown != time.Minute || c.GeminiRPM != 0 {
		t.Errorf("flow control defaults with rules: %+v", c)
	}
	// One live analysis per system with a model, unless set.
	if c, err := Load(env(map[string]string{"INSIGHTS_PROVIDER": "gemini", "GEMINI_API_KEY": "k"})); err != nil || c.SystemConcurrency != 1 {
		t.Errorf("SYSTEM_CONCURRENCY with gemini: %+v, %v; want 1", c, err)
	}
	if c, err := Load(env(map[string]string{"INSIGHTS_PROVIDER": "gemini", "GEMINI_API_KEY": "k", "SYSTEM_CONCURRENCY": "0"})); err != nil || c.SystemConcurrency != 0 {
		t.Errorf("SYSTEM_CONCURRENCY=0 with gemini: %+v, %v; want 0", c, err)
	}
	// LOG_LEVEL and LOG_FORMAT read like every other variable, in any case.
	if c, err := Load(env(map[string]string{"LOG_LEVEL": "DEBUG", "LOG_FORMAT": "Json"})); err != nil || c.LogLevel != "debug" || c.LogFormat != "json" {
		t.Errorf("LOG_LEVEL=DEBUG LOG_FORMAT=Json: %+v, %v", c, err)
	}
}

func TestBadValueNamesTheVariable(t *testing.T) {
	for name, val := range map[string]string{
		"REDIS_URL": "http://x", "MONGODB_URI": "postgres://x", "WORKER_CONCURRENCY": "ten", "MAX_RETRIES": "-1",
		"BACKOFF_SCHEDULE": "5s,soon", "RETRY_TRANSIENT_DELAY": "30", "RETRY_RATE_LIMIT_DELAY": "x", "TASK_TIMEOUT": "1d",
		"TASK_RETENTION": "-5s", "QUEUE_WEIGHTS": "critical=6", "DATA_ENCRYPTION_KEY": "short", "INSIGHTS_PROVIDER": "openai",
		"SHUTDOWN_TIMEOUT": "forever", "COMPLETION_WEBHOOK_URL": "ftp://x", "GEMINI_BASE_URL": "::",
		"LOG_LEVEL": "verbose", "LOG_FORMAT": "xml",
		"GEMINI_RPM": "-1", "GEMINI_TPM": "lots", "SYSTEM_CONCURRENCY": "one", "BREAKER_FAILURES": "-2", "BREAKER_COOLDOWN": "0s",
	} {
		_, err := Load(env(map[string]string{name: val}))
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s=%q: err %v, want one naming %s", name, val, err, name)
		}
	}
	if _, err := Load(env(map[string]string{"INSIGHTS_PROVIDER": "gemini"})); err == nil || !strings.Contains(err.Error(), "GEMINI_API_KEY") {
		t.Errorf("gemini without key: %v", err)
	}
}

func TestGeneratedCredentialsKeptInDataDir(t *testing.T) {
	dir := t.TempDir()
	c, _ := Load(env(map[string]string{"DATA_DIR": dir}))
	if err := c.EnsureCredentials(); err != nil {
		t.Fatal(err)
	}
	if len(c.APIToken) < 32 || len(c.AdminPassword) < 32 || len(c.Generated) != 2 {
		t.Fatalf("generated %+v", c)
	}
	fi, err := os.Stat(filepath.Join(dir, "api_token"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("api_token file: %v %v", fi, err)
	}
	c2, _ := Load(env(map[string]string{"DATA_DIR": dir}))
	_ = c2.EnsureCredentials()
	if c2.APIToken != c.APIToken || c2.AdminPassword != c.AdminPassword {
		t.Error("credentials changed across restarts")
	}
	c3, _ := Load(env(map[string]string{"DATA_DIR": dir, "API_TOKEN": "given"}))
	_ = c3.EnsureCredentials()
	if c3.APIToken != "given" {
		t.Error("API_TOKEN not honoured")
	}
}

// TestDurationsRefuseWhatWouldBeReplaced: the consumers of these values
// read 0 as "the default", so 0 (and a negative value, and for asynq's
// whole-second fields anything under 1s) stops start-up with the variable
// and the reason, instead of quietly running with another value.
func TestDurationsRefuseWhatWouldBeReplaced(t *testing.T) {
	for _, tc := range []struct{ name, val, want string }{
		{"RETRY_TRANSIENT_DELAY", "0s", "RETRY_TRANSIENT_DELAY: must be greater than 0 (got 0s): 0 would silently become the default 30s"},
		{"RETRY_TRANSIENT_DELAY", "0", "RETRY_TRANSIENT_DELAY: must be greater than 0 (got 0s)"},
		{"RETRY_TRANSIENT_DELAY", "-1s", "RETRY_TRANSIENT_DELAY: must be greater than 0 (got -1s): a time span cannot be negative"},
		{"RETRY_RATE_LIMIT_DELAY", "0s", "RETRY_RATE_LIMIT_DELAY: must be greater than 0 (got 0s): 0 would silently become the default 5m"},
		{"RETRY_RATE_LIMIT_DELAY", "-5m", "RETRY_RATE_LIMIT_DELAY: must be greater than 0 (got -5m)"},
		{"TASK_TIMEOUT", "0s", "TASK_TIMEOUT: must be greater than 0 (got 0s): 0 would silently become the default 24h"},
		{"TASK_TIMEOUT", "-1h", "TASK_TIMEOUT: must be greater than 0 (got -1h)"},
		{"TASK_TIMEOUT", "999ms", "TASK_TIMEOUT: must be at least 1s (got 999ms): asynq keeps whole seconds and reads 0 as its own 30m default"},
		{"TASK_RETENTION", "0s", "TASK_RETENTION: must be greater than 0 (got 0s): 0 would silently become the default 168h"},
		{"TASK_RETENTION", "-5s", "TASK_RETENTION: must be greater than 0 (got -5s)"},
		{"TASK_RETENTION", "500ms", "TASK_RETENTION: must be at least 1s (got 500ms): asynq keeps whole seconds"},
		{"SHUTDOWN_TIMEOUT", "0s", "SHUTDOWN_TIMEOUT: must be greater than 0 (got 0s): 0 would silently become the default 25s"},
		{"SHUTDOWN_TIMEOUT", "-25s", "SHUTDOWN_TIMEOUT: must be greater than 0 (got -25s)"},
		{"BACKOFF_SCHEDULE", "0s", "BACKOFF_SCHEDULE: entry 1 must be greater than 0 (got 0s): a zero or negative delay retries at once"},
		{"BACKOFF_SCHEDULE", "5s,0s,30s", "BACKOFF_SCHEDULE: entry 2 must be greater than 0 (got 0s)"},
		{"BACKOFF_SCHEDULE", "5s,-10s", "BACKOFF_SCHEDULE: entry 2 must be greater than 0 (got -10s)"},
	} {
		t.Run(tc.name+"="+tc.val, func(t *testing.T) {
			c, err := Load(env(map[string]string{tc.name: tc.val}))
			if err == nil {
				t.Fatalf("accepted, config %+v", c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %q\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// TestDurationEdgesAccepted: the smallest values that reach their consumer
// unchanged, and MAX_RETRIES=0 (no retries, honoured downstream).
func TestDurationEdgesAccepted(t *testing.T) {
	for _, tc := range []struct {
		name, val string
		got       func(*Config) any
		want      any
	}{
		{"RETRY_TRANSIENT_DELAY", "1ns", func(c *Config) any { return c.RetryTransientDelay }, time.Nanosecond},
		{"RETRY_RATE_LIMIT_DELAY", "1ms", func(c *Config) any { return c.RetryRateLimitDelay }, time.Millisecond},
		{"TASK_TIMEOUT", "1s", func(c *Config) any { return c.TaskTimeout }, time.Second},
		{"TASK_RETENTION", "1s", func(c *Config) any { return c.TaskRetention }, time.Second},
		{"SHUTDOWN_TIMEOUT", "1ms", func(c *Config) any { return c.ShutdownTimeout }, time.Millisecond},
		{"BACKOFF_SCHEDULE", "1ms", func(c *Config) any { return c.BackoffSchedule }, []time.Duration{time.Millisecond}},
		{"BACKOFF_SCHEDULE", " 1s , 2m ", func(c *Config) any { return c.BackoffSchedule }, []time.Duration{time.Second, 2 * time.Minute}},
		{"MAX_RETRIES", "0", func(c *Config) any { return c.MaxRetries }, 0},
		// Blank is unset: the default, not 0.
		{"RETRY_TRANSIENT_DELAY", "  ", func(c *Config) any { return c.RetryTransientDelay }, 30 * time.Second},
	} {
		t.Run(tc.name+"="+tc.val, func(t *testing.T) {
			c, err := Load(env(map[string]string{tc.name: tc.val}))
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.got(c); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestViewerPassword: VIEWER_PASSWORD is optional (unset: no viewer), read
// as given, and refused when it is also an admin credential, given or
// generated.
func TestViewerPassword(t *testing.T) {
	for _, tc := range []struct {
		name    string
		vars    map[string]string
		want    string
		wantErr string
	}{
		{"unset: no viewer", map[string]string{"ADMIN_PASSWORD": "a"}, "", ""},
		{"set", map[string]string{"VIEWER_PASSWORD": "look-only", "ADMIN_PASSWORD": "a"}, "look-only", ""},
		{"set, admin generated", map[string]string{"VIEWER_PASSWORD": "look-only"}, "look-only", ""},
		{"same as ADMIN_PASSWORD", map[string]string{"VIEWER_PASSWORD": "same", "ADMIN_PASSWORD": "same"}, "", "VIEWER_PASSWORD: must differ from ADMIN_PASSWORD"},
		{"same as API_TOKEN", map[string]string{"VIEWER_PASSWORD": "same", "API_TOKEN": "same"}, "", "VIEWER_PASSWORD: must differ from API_TOKEN"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Load(env(tc.vars))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.ViewerPassword != tc.want {
				t.Errorf("ViewerPassword %q, want %q", c.ViewerPassword, tc.want)
			}
		})
	}
	// A generated ADMIN_PASSWORD is kept in DATA_DIR: a viewer password
	// set to it later is refused once the credentials are filled in.
	dir := t.TempDir()
	c, _ := Load(env(map[string]string{"DATA_DIR": dir}))
	if err := c.EnsureCredentials(); err != nil {
		t.Fatal(err)
	}
	c2, err := Load(env(map[string]string{"DATA_DIR": dir, "VIEWER_PASSWORD": c.AdminPassword}))
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.EnsureCredentials(); err == nil || !strings.Contains(err.Error(), "VIEWER_PASSWORD: must differ from ADMIN_PASSWORD") {
		t.Fatalf("viewer password = the generated admin password: %v", err)
	}
}

// Credentials read back from DATA_DIR are kept, not "generated" (serve
// prints only generated ones), and the files and the folder get modes
// 0600 and 0700 back even when they exist with looser ones.
func TestKeptCredentialsNotGeneratedAndModesEnforced(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	c, _ := Load(env(map[string]string{"DATA_DIR": dir}))
	if err := c.EnsureCredentials(); err != nil {
		t.Fatal(err)
	}
	if len(c.Generated) != 2 || len(c.Kept) != 0 {
		t.Fatalf("first start: generated %v, kept %v; want both generated", c.Generated, c.Kept)
	}
	// Loosened, as an older version or a copy left them.
	for _, f := range []string{"api_token", "admin_password"} {
		if err := os.Chmod(filepath.Join(dir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c2, _ := Load(env(map[string]string{"DATA_DIR": dir}))
	if err := c2.EnsureCredentials(); err != nil {
		t.Fatal(err)
	}
	if len(c2.Generated) != 0 || len(c2.Kept) != 2 || c2.APIToken != c.APIToken || c2.AdminPassword != c.AdminPassword {
		t.Fatalf("second start: generated %v, kept %v; want both kept, unchanged", c2.Generated, c2.Kept)
	}
	for _, f := range []string{"api_token", "admin_password"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", f, fi.Mode(), err)
		}
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("DATA_DIR: %v %v, want mode 0700", fi.Mode(), err)
	}
	// A file a new start writes over keeps no loose mode either.
	if err := os.WriteFile(filepath.Join(dir, "api_token"), []byte("\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c3, _ := Load(env(map[string]string{"DATA_DIR": dir}))
	if err := c3.EnsureCredentials(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, "api_token")); len(c3.Generated) != 1 || fi.Mode().Perm() != 0o600 {
		t.Errorf("regenerated over an empty file: generated %v, mode %v", c3.Generated, fi.Mode())
	}
}

// A malformed REDIS_URL or MONGODB_URI stops start-up naming the variable,
// never printing its password (url.Parse quotes the whole value).
func TestMalformedURLErrorsHidePasswords(t *testing.T) {
	for _, tc := range []struct{ name, val, secret string }{
		{"REDIS_URL", "redis://:s3cr%et-pw@127.0.0.1:6379/0", "s3cr"},
		{"REDIS_URL", "redis://user:hunter2-pw@host:port/0", "hunter2-pw"},
		{"REDIS_URL", "redis://user:pass word-pw@ho st:1/0", "pass word-pw"},
		{"REDIS_URL", "redis://:top-secret-pw@127.0.0.1:6379/x", "top-secret-pw"},
		{"MONGODB_URI", "mongodb://u:s3cr%et-pw@127.0.0.1/", "s3cr"},
		{"MONGODB_URI", "mongodb://u:hunter2-pw@host:port/", "hunter2-pw"},
	} {
		_, err := Load(env(map[string]string{tc.name: tc.val}))
		if err == nil {
			t.Errorf("%s=%s accepted", tc.name, tc.val)
			continue
		}
		if !strings.Contains(err.Error(), tc.name) {
			t.Errorf("%s: error %q does not name the variable", tc.name, err)
		}
		if strings.Contains(err.Error(), tc.secret) {
			t.Errorf("%s: error %q shows the password", tc.name, err)
		}
	}
	msg := Redact("dial mongodb://u:p%40ss-word@h/ failed; API key sk-123456; token second-token-77", Secrets(env(map[string]string{
		"API_TOKEN":   "first-token-66, second-token-77",
		"MONGODB_URI": "mongodb://u:p%40ss-word@h/", "GEMINI_API_KEY": "sk-123456"})))
	if strings.Contains(msg, "ss-word") || strings.Contains(msg, "sk-123456") || strings.Contains(msg, "second-token") {
		t.Errorf("Redact left a secret: %s", msg)
	}
}
