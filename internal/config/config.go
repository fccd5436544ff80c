// Package config reads the service's configuration from the environment
// (docs/DESIGN.md section 4). A bad value stops start-up with an error that
// names the variable.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/handlers"
	"github.com/bmsview/insights/internal/flow"
	"github.com/bmsview/insights/internal/insights"
	"github.com/bmsview/insights/tasks"
)

// Config is the whole configuration. Every field is documented with the
// variable it comes from and what happens when that is unset. No duration
// is 0: Load refuses it, because the consumers read 0 as "the default".
type Config struct {
	RedisURL          string   // REDIS_URL; "" → embedded miniredis
	RedisClusterAddrs []string // REDIS_CLUSTER_ADDRS; takes precedence over REDIS_URL
	MongoURI          string   // MONGODB_URI; "" → embedded FerretDB under DataDir
	MongoDB           string   // MONGODB_DB_NAME; "bmsview"
	DataDir           string   // DATA_DIR; "./data"
	HTTPAddr          string   // HTTP_ADDR; ":8080"

	APIToken      string // API_TOKEN; random, printed once at start
	AdminPassword string // ADMIN_PASSWORD; random, printed once at start
	// ViewerPassword is VIEWER_PASSWORD, the HTTP Basic password of the
	// read-only user "viewer"; "" → no viewer. It must differ from
	// ADMIN_PASSWORD and API_TOKEN: a viewer who knew one of those could
	// act as the admin by changing the user name or the scheme.
	ViewerPassword string
	// Generated lists the credentials that were generated, to print them.
	Generated []string

	// The worker's settings: unset, each takes the Default* of the package
	// that applies it (handlers, tasks), its one home.
	WorkerConcurrency   int             // WORKER_CONCURRENCY; handlers.DefaultConcurrency
	QueueWeights        map[string]int  // QUEUE_WEIGHTS; handlers.DefaultQueueWeights
	MaxRetries          int             // MAX_RETRIES; handlers.DefaultMaxRetries; 0: none
	BackoffSchedule     []time.Duration // BACKOFF_SCHEDULE; handlers.DefaultBackoff; each > 0
	RetryTransientDelay time.Duration   // RETRY_TRANSIENT_DELAY; handlers.DefaultTransientDelay; > 0
	RetryRateLimitDelay time.Duration   // RETRY_RATE_LIMIT_DELAY; handlers.DefaultRateLimitDelay; > 0
	TaskTimeout         time.Duration   // TASK_TIMEOUT; tasks.DefaultTaskTimeout; ≥ 1s
	TaskRetention       time.Duration   // TASK_RETENTION; tasks.DefaultTaskRetention; ≥ 1s
	EncryptionKey       string          // DATA_ENCRYPTION_KEY; "" → stored in clear
	InsightsProvider    string          // INSIGHTS_PROVIDER; "rules"
	GeminiAPIKey        string          // GEMINI_API_KEY
	GeminiModel         string          // GEMINI_MODEL; insights.DefaultGeminiModel
	GeminiBaseURL       string          // GEMINI_BASE_URL; Google's
	WebhookURL          string          // COMPLETION_WEBHOOK_URL; "" → no webhook
	WebhookSecret       string          // WEBHOOK_SECRET
	ShutdownTimeout     time.Duration   // SHUTDOWN_TIMEOUT; handlers.DefaultShutdownTimeout; > 0
	CORSOrigins         []string        // CORS_ORIGINS; none
	GeminiRPM           int             // GEMINI_RPM; 0: no limit
	GeminiTPM           int             // GEMINI_TPM; 0: no limit
	SystemConcurrency   int             // SYSTEM_CONCURRENCY; 1 with gemini, 0 (no limit) with rules
	BreakerFailures     int             // BREAKER_FAILURES; flow.DefaultBreakerFailures; 0: off
	BreakerCooldown     time.Duration   // BREAKER_COOLDOWN; flow.DefaultBreakerCooldown; > 0
	LogLevel            string          // LOG_LEVEL; "info" (debug, info, warn, error)
	LogFormat           string          // LOG_FORMAT; "text" (text, json)
}

// Embedded reports whether Redis or MongoDB runs in process.
func (c *Config) EmbeddedRedis() bool { return c.RedisURL == "" && len(c.RedisClusterAddrs) == 0 }

// EmbeddedMongo reports whether MongoDB is the embedded FerretDB.
func (c *Config) EmbeddedMongo() bool { return c.MongoURI == "" }

// Load reads the configuration from getenv (os.Getenv when nil).
func Load(getenv func(string) string) (*Config, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	p := parser{getenv: getenv}
	c := &Config{
		RedisURL:            p.url("REDIS_URL", "redis", "rediss", "redis-sentinel"),
		RedisClusterAddrs:   p.list("REDIS_CLUSTER_ADDRS"),
		MongoURI:            p.url("MONGODB_URI", "mongodb", "mongodb+srv"),
		MongoDB:             p.str("MONGODB_DB_NAME", "bmsview"),
		DataDir:             p.str("DATA_DIR", "./data"),
		HTTPAddr:            p.str("HTTP_ADDR", ":8080"),
		APIToken:            getenv("API_TOKEN"),
		AdminPassword:       getenv("ADMIN_PASSWORD"),
		ViewerPassword:      getenv("VIEWER_PASSWORD"),
		WorkerConcurrency:   p.intRange("WORKER_CONCURRENCY", handlers.DefaultConcurrency, 1, 10000),
		MaxRetries:          p.intRange("MAX_RETRIES", handlers.DefaultMaxRetries, 0, 1000),
		BackoffSchedule:     p.durations("BACKOFF_SCHEDULE", handlers.DefaultBackoff),
		RetryTransientDelay: p.duration("RETRY_TRANSIENT_DELAY", handlers.DefaultTransientDelay, 0, ""),
		RetryRateLimitDelay: p.duration("RETRY_RATE_LIMIT_DELAY", handlers.DefaultRateLimitDelay, 0, ""),
		TaskTimeout:         p.duration("TASK_TIMEOUT", tasks.DefaultTaskTimeout, time.Second, "asynq keeps whole seconds and reads 0 as its own 30m default"),
		TaskRetention:       p.duration("TASK_RETENTION", tasks.DefaultTaskRetention, time.Second, "asynq keeps whole seconds and drops a completed task at once with 0"),
		EncryptionKey:       getenv("DATA_ENCRYPTION_KEY"),
		InsightsProvider:    p.oneOf("INSIGHTS_PROVIDER", "rules", "rules", "gemini"),
		GeminiAPIKey:        getenv("GEMINI_API_KEY"),
		GeminiModel:         p.str("GEMINI_MODEL", insights.DefaultGeminiModel),
		GeminiBaseURL:       p.url("GEMINI_BASE_URL", "http", "https"),
		WebhookURL:          p.url("COMPLETION_WEBHOOK_URL", "http", "https"),
		WebhookSecret:       getenv("WEBHOOK_SECRET"),
		ShutdownTimeout:     p.duration("SHUTDOWN_TIMEOUT", handlers.DefaultShutdownTimeout, 0, ""),
		CORSOrigins:         p.list("CORS_ORIGINS"),
		GeminiRPM:           p.intRange("GEMINI_RPM", 0, 0, 1000000),
		GeminiTPM:           p.intRange("GEMINI_TPM", 0, 0, 1000000000),
		BreakerFailures:     p.intRange("BREAKER_FAILURES", flow.DefaultBreakerFailures, 0, 1000),
		BreakerCooldown:     p.duration("BREAKER_COOLDOWN", flow.DefaultBreakerCooldown, 0, ""),
		LogLevel:            strings.ToLower(p.oneOfFold("LOG_LEVEL", "info", "debug", "info", "warn", "error")),
		LogFormat:           strings.ToLower(p.oneOfFold("LOG_FORMAT", "text", "text", "json")),
	}
	// One live process-insights per system with a model (two runs of one
	// battery would analyse the same history side by side, twice the
	// calls); none with the built-in rules.
	defConcurrency := 0
	if c.InsightsProvider == "gemini" {
		defConcurrency = 1
	}
	c.SystemConcurrency = p.intRange("SYSTEM_CONCURRENCY", defConcurrency, 0, 1000)
	weights := p.str("QUEUE_WEIGHTS", handlers.DefaultQueueWeights)
	if w, err := handlers.ParseQueueWeights(weights); err != nil {
		p.fail("QUEUE_WEIGHTS", err.Error())
	} else {
		c.QueueWeights = w
	}
	if c.EncryptionKey != "" && len(c.EncryptionKey) < 32 {
		p.fail("DATA_ENCRYPTION_KEY", "must be at least 32 characters")
	}
	if c.InsightsProvider == "gemini" && c.GeminiAPIKey == "" {
		p.fail("GEMINI_API_KEY", "required when INSIGHTS_PROVIDER=gemini")
	}
	if c.RedisURL != "" {
		if _, err := asynq.ParseRedisURI(c.RedisURL); err != nil {
			p.fail("REDIS_URL", err.Error())
		}
	}
	if err := c.checkViewer(); err != nil {
		p.fail("VIEWER_PASSWORD", err.Error())
	}
	if p.err != nil {
		return nil, p.err
	}
	return c, nil
}

// checkViewer refuses a viewer password that is also an admin credential:
// the viewer would then be an admin in all but name. Unset credentials
// are not compared (the generated ones are checked once made).
func (c *Config) checkViewer() error {
	switch {
	case c.ViewerPassword == "":
		return nil
	case c.ViewerPassword == c.AdminPassword:
		return errors.New("must differ from ADMIN_PASSWORD (the viewer is read-only; with the admin's password it could log in as admin)")
	case slices.ContainsFunc(strings.Split(c.APIToken, ","), func(t string) bool { return strings.TrimSpace(t) == c.ViewerPassword }):
		return errors.New("must differ from API_TOKEN (the viewer is read-only; with the token it could act as Bearer)")
	}
	return nil
}

// EnsureCredentials fills API_TOKEN and ADMIN_PASSWORD when unset. In
// embedded mode they are kept in DATA_DIR (mode 0600) so they stay the same
// across restarts; otherwise they are new for each start.
func (c *Config) EnsureCredentials() error {
	for _, cred := range []struct {
		name string
		dst  *string
	}{{"API_TOKEN", &c.APIToken}, {"ADMIN_PASSWORD", &c.AdminPassword}} {
		if *cred.dst != "" {
			continue
		}
		var path string
		if c.EmbeddedMongo() {
			path = filepath.Join(c.DataDir, strings.ToLower(cred.name))
			if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				*cred.dst = strings.TrimSpace(string(b))
				c.Generated = append(c.Generated, cred.name)
				continue
			}
		}
		buf := make([]byte, 24)
		if _, err := rand.Read(buf); err != nil {
			return err
		}
		*cred.dst = hex.EncodeToString(buf)
		c.Generated = append(c.Generated, cred.name)
		if path != "" {
			if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
				return fmt.Errorf("DATA_DIR: %w", err)
			}
			if err := os.WriteFile(path, []byte(*cred.dst+"\n"), 0o600); err != nil {
				return fmt.Errorf("DATA_DIR: keep %s: %w", cred.name, err)
			}
		}
	}
	if err := c.checkViewer(); err != nil {
		return fmt.Errorf("config: VIEWER_PASSWORD: %w", err)
	}
	return nil
}

// RedisConnOpt returns asynq's connection options.
func (c *Config) RedisConnOpt() (asynq.RedisConnOpt, error) {
	if len(c.RedisClusterAddrs) > 0 {
		return asynq.RedisClusterClientOpt{Addrs: c.RedisClusterAddrs}, nil
	}
	opt, err := asynq.ParseRedisURI(c.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	return opt, nil
}

type parser struct {
	getenv func(string) string
	err    error
}

func (p *parser) fail(name, msg string) {
	if p.err == nil {
		p.err = fmt.Errorf("config: %s: %s", name, msg)
	}
}

func (p *parser) str(name, def string) string {
	if v := strings.TrimSpace(p.getenv(name)); v != "" {
		return v
	}
	return def
}

func (p *parser) list(name string) []string {
	var out []string
	for _, s := range strings.Split(p.getenv(name), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func (p *parser) url(name string, schemes ...string) string {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil {
		p.fail(name, "not a URL: "+err.Error())
		return ""
	}
	for _, s := range schemes {
		if u.Scheme == s {
			return v
		}
	}
	p.fail(name, fmt.Sprintf("scheme %q not supported (want %s)", u.Scheme, strings.Join(schemes, ", ")))
	return ""
}

func (p *parser) intRange(name string, def, lo, hi int) int {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.fail(name, fmt.Sprintf("want an integer %d–%d, got %q", lo, hi, v))
		return def
	}
	return n
}

// duration reads a duration greater than 0 and, when floor is set, at
// least floor (why says what asynq would do below it). 0 is refused, not
// passed on: handlers.NewRunner, handlers.ServerConfig, handlers.NewInsights
// and tasks.NewClient read 0 as "use the default", so RETRY_TRANSIENT_DELAY=0s
// would quietly become 30s and TASK_RETENTION=0s 168h, not "keep nothing".
func (p *parser) duration(name string, def, floor time.Duration, why string) time.Duration {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		p.fail(name, fmt.Sprintf("want a duration such as 30s or 5m, got %q", v))
		return def
	}
	switch {
	case d == 0:
		p.fail(name, fmt.Sprintf("must be greater than 0 (got 0s): 0 would silently become the default %s; unset it for that", short(def)))
		return def
	case d < 0:
		p.fail(name, fmt.Sprintf("must be greater than 0 (got %s): a time span cannot be negative", short(d)))
		return def
	case d < floor:
		p.fail(name, fmt.Sprintf("must be at least %s (got %s): %s", short(floor), short(d), why))
		return def
	}
	return d
}

// durations reads BACKOFF_SCHEDULE. Every entry must be greater than 0: a
// zero delay would retry at once (asynq's next 1 s check), spending the
// whole retry budget in seconds, and 0 is also the runner's "no delay
// chosen" mark, so it only reaches asynq by coincidence.
func (p *parser) durations(name string, def []time.Duration) []time.Duration {
	v := strings.TrimSpace(p.getenv(name))
	if v == "" {
		return def
	}
	var out []time.Duration
	for i, s := range strings.Split(v, ",") {
		d, err := time.ParseDuration(strings.TrimSpace(s))
		if err != nil {
			p.fail(name, fmt.Sprintf("want comma-separated durations such as 5s,10s,30s, got %q", s))
			return def
		}
		if d <= 0 {
			p.fail(name, fmt.Sprintf("entry %d must be greater than 0 (got %s): a zero or negative delay retries at once and spends the retry budget in seconds", i+1, short(d)))
			return def
		}
		out = append(out, d)
	}
	return out
}

// short prints a duration without trailing zero units: 5m, not 5m0s.
func short(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// oneOfFold is oneOf ignoring case (LOG_LEVEL=DEBUG).
func (p *parser) oneOfFold(name, def string, allowed ...string) string {
	v := p.str(name, def)
	for _, a := range allowed {
		if strings.EqualFold(v, a) {
			return a
		}
	}
	p.fail(name, fmt.Sprintf("want one of %s, got %q", strings.Join(allowed, ", "), v))
	return def
}

func (p *parser) oneOf(name, def string, allowed ...string) string {
	v := p.str(name, def)
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	p.fail(name, fmt.Sprintf("want one of %s, got %q", strings.Join(allowed, ", "), v))
	return def
}
