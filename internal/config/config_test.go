package config

import (
	"os"
	"path/filepath"
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
		len(c.BackoffSchedule) != 4 || c.BackoffSchedule[3] != time.Minute || c.QueueWeights["critical"] != 6 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestBadValueNamesTheVariable(t *testing.T) {
	for name, val := range map[string]string{
		"REDIS_URL": "http://x", "MONGODB_URI": "postgres://x", "WORKER_CONCURRENCY": "ten", "MAX_RETRIES": "-1",
		"BACKOFF_SCHEDULE": "5s,soon", "RETRY_TRANSIENT_DELAY": "30", "RETRY_RATE_LIMIT_DELAY": "x", "TASK_TIMEOUT": "1d",
		"TASK_RETENTION": "-5s", "QUEUE_WEIGHTS": "critical=6", "DATA_ENCRYPTION_KEY": "short", "INSIGHTS_PROVIDER": "openai",
		"SHUTDOWN_TIMEOUT": "forever", "COMPLETION_WEBHOOK_URL": "ftp://x", "GEMINI_BASE_URL": "::",
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
