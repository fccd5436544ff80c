package deploy

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/config"
)

const (
	composeFile = "../docker-compose.yml"
	envExample  = "../.env.example"
)

// secrets are the variables that must never have a literal value in the
// compose file: they come from .env through interpolation.
var secrets = []string{"API_TOKEN", "ADMIN_PASSWORD", "VIEWER_PASSWORD", "DATA_ENCRYPTION_KEY", "GEMINI_API_KEY", "WEBHOOK_SECRET"}

// requiredSecrets stop `docker compose` when unset (${VAR:?...}).
var requiredSecrets = []string{"API_TOKEN", "ADMIN_PASSWORD"}

// section4 is docs/DESIGN.md section 4 less what the compose file wires itself
// (REDIS_URL, MONGODB_URI, HTTP_ADDR, DATA_DIR): each must be settable
// from .env.
var section4 = []string{
	"MONGODB_DB_NAME", "API_TOKEN", "ADMIN_PASSWORD", "VIEWER_PASSWORD", "WORKER_CONCURRENCY", "QUEUE_WEIGHTS",
	"MAX_RETRIES", "BACKOFF_SCHEDULE", "RETRY_TRANSIENT_DELAY", "RETRY_RATE_LIMIT_DELAY",
	"TASK_TIMEOUT", "TASK_RETENTION", "DATA_ENCRYPTION_KEY", "INSIGHTS_PROVIDER",
	"GEMINI_API_KEY", "GEMINI_MODEL", "GEMINI_BASE_URL", "COMPLETION_WEBHOOK_URL",
	"WEBHOOK_SECRET", "SHUTDOWN_TIMEOUT", "CORS_ORIGINS",
}

var appServices = []string{"api", "worker"}

// readEnvExample returns .env.example's variables in order, with values.
func readEnvExample(t *testing.T) (names []string, values map[string]string) {
	t.Helper()
	f, err := os.Open(envExample)
	if err != nil {
		t.Fatalf(".env.example: %v", err)
	}
	defer f.Close()
	values = map[string]string{}
	sc := bufio.NewScanner(f)
	var comment bool
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			comment = false
			continue
		}
		if strings.HasPrefix(line, "#") {
			comment = true
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf(".env.example: not NAME=value: %q", line)
		}
		if !comment {
			t.Errorf(".env.example: %s has no comment above it", k)
		}
		comment = false
		if _, dup := values[k]; dup {
			t.Errorf(".env.example: %s twice", k)
		}
		names = append(names, k)
		values[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return names, values
}

// testSecret is the value the tests give a secret: long enough for
// DATA_ENCRYPTION_KEY's 32 characters.
func testSecret(name string) string {
	return "test-" + strings.ToLower(name) + "-0123456789abcdef0123456789abcdef"
}

// writeDotEnv writes a .env built from .env.example, with the empty secrets
// filled in (as an operator does) and then the overrides applied (a "" value
// removes the variable).
func writeDotEnv(t *testing.T, overrides map[string]string) (path string, env map[string]string) {
	t.Helper()
	names, values := readEnvExample(t)
	env = map[string]string{}
	for _, k := range names {
		v := values[k]
		if v == "" && slices.Contains(secrets, k) {
			v = testSecret(k)
		}
		env[k] = v
	}
	for k, v := range overrides {
		if v == "" {
			delete(env, k)
			continue
		}
		env[k] = v
	}
	var b strings.Builder
	for _, k := range names {
		if v, ok := env[k]; ok {
			fmt.Fprintf(&b, "%s=%s\n", k, v)
		}
	}
	path = filepath.Join(t.TempDir(), ".env")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, env
}

func projectOptions(t *testing.T, dotEnv string, extra ...cli.ProjectOptionsFn) *cli.ProjectOptions {
	t.Helper()
	// Only the temp .env feeds interpolation, never this process's
	// environment (CI sets REDIS_URL and the like).
	opts := append([]cli.ProjectOptionsFn{
		cli.WithWorkingDirectory(".."),
		cli.WithEnvFiles(dotEnv),
		cli.WithDotEnv,
	}, extra...)
	o, err := cli.NewProjectOptions([]string{composeFile}, opts...)
	if err != nil {
		t.Fatalf("compose options: %v", err)
	}
	return o
}

func loadProject(t *testing.T, overrides map[string]string) (*types.Project, map[string]string) {
	t.Helper()
	dotEnv, env := writeDotEnv(t, overrides)
	p, err := projectOptions(t, dotEnv).LoadProject(context.Background())
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p, env
}

func service(t *testing.T, p *types.Project, name string) types.ServiceConfig {
	t.Helper()
	s, ok := p.Services[name]
	if !ok {
		t.Fatalf("service %q missing; have %v", name, p.ServiceNames())
	}
	return s
}

func envValue(t *testing.T, s types.ServiceConfig, name string) string {
	t.Helper()
	v, ok := s.Environment[name]
	if !ok || v == nil {
		t.Fatalf("service %s: environment %s not set", s.Name, name)
	}
	return *v
}

// namedVolume asserts that s mounts a volume declared at the top level at
// target.
func namedVolume(t *testing.T, p *types.Project, s types.ServiceConfig, target string) {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target != target {
			continue
		}
		if v.Type != types.VolumeTypeVolume {
			t.Errorf("service %s: %s is a %s mount, want a named volume", s.Name, target, v.Type)
			return
		}
		if _, ok := p.Volumes[v.Source]; !ok {
			t.Errorf("service %s: volume %q is not declared under volumes:", s.Name, v.Source)
		}
		return
	}
	t.Errorf("service %s: no volume at %s (have %+v)", s.Name, target, s.Volumes)
}

func healthTest(t *testing.T, s types.ServiceConfig) []string {
	t.Helper()
	if s.HealthCheck == nil || s.HealthCheck.Disable || len(s.HealthCheck.Test) == 0 {
		t.Fatalf("service %s: no healthcheck", s.Name)
	}
	return s.HealthCheck.Test
}

// flagValue returns the argument after flag in args.
func flagValue(args []string, flag string) (string, bool) {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1], true
		}
		if v, ok := strings.CutPrefix(a, flag+"="); ok {
			return v, true
		}
	}
	return "", false
}

func TestComposeServices(t *testing.T) {
	p, env := loadProject(t, nil)
	for _, name := range []string{"redis", "mongo", "api", "worker"} {
		service(t, p, name)
	}

	t.Run("redis", func(t *testing.T) {
		s := service(t, p, "redis")
		if !strings.HasPrefix(s.Image, "redis:7") {
			t.Errorf("redis image %q, want redis:7", s.Image)
		}
		if v, _ := flagValue(s.Command, "--appendonly"); v != "yes" {
			t.Errorf("redis command %q: want --appendonly yes", s.Command)
		}
		if v, _ := flagValue(s.Command, "--maxmemory-policy"); v != "noeviction" {
			t.Errorf("redis command %q: want --maxmemory-policy noeviction (an evicted key is a lost task)", s.Command)
		}
		namedVolume(t, p, s, "/data")
		if h := strings.Join(healthTest(t, s), " "); !strings.Contains(h, "redis-cli") || !strings.Contains(h, "ping") {
			t.Errorf("redis healthcheck %q does not ping", h)
		}
	})

	t.Run("mongo", func(t *testing.T) {
		s := service(t, p, "mongo")
		if !strings.HasPrefix(s.Image, "mongo:7") {
			t.Errorf("mongo image %q, want mongo:7", s.Image)
		}
		rs, ok := flagValue(s.Command, "--replSet")
		if !ok || rs == "" {
			t.Fatalf("mongo command %q: want --replSet", s.Command)
		}
		namedVolume(t, p, s, "/data/db")
		h := strings.Join(healthTest(t, s), " ")
		for _, want := range []string{"rs.initiate", "_id: '" + rs + "'", "mongo:27017", "isWritablePrimary"} {
			if !strings.Contains(h, want) {
				t.Errorf("mongo healthcheck %q lacks %q", h, want)
			}
		}
		// The URI the app uses names the same replica set and host.
		u, err := url.Parse(envValue(t, service(t, p, "api"), "MONGODB_URI"))
		if err != nil {
			t.Fatal(err)
		}
		if got := u.Query().Get("replicaSet"); got != rs {
			t.Errorf("MONGODB_URI replicaSet=%q, mongo runs --replSet %q", got, rs)
		}
		if u.Host != "mongo:27017" {
			t.Errorf("MONGODB_URI host %q, want mongo:27017", u.Host)
		}
	})

	for _, name := range appServices {
		t.Run(name, func(t *testing.T) {
			s := service(t, p, name)
			want := []string{"serve", "--role", name}
			if !slices.Equal([]string(s.Command), want) {
				t.Errorf("%s command %q, want %q", name, s.Command, want)
			}
			if s.Build == nil {
				t.Fatalf("%s: no build section", name)
			}
			if s.Build.Dockerfile != "Dockerfile" {
				t.Errorf("%s builds from %q, want Dockerfile", name, s.Build.Dockerfile)
			}
			if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
				t.Errorf("%s: build context: %v", name, err)
			}
			for _, dep := range []string{"redis", "mongo"} {
				d, ok := s.DependsOn[dep]
				if !ok {
					t.Errorf("%s does not depend on %s", name, dep)
					continue
				}
				if d.Condition != types.ServiceConditionHealthy {
					t.Errorf("%s depends on %s with condition %q, want %q", name, dep, d.Condition, types.ServiceConditionHealthy)
				}
			}
			if got := envValue(t, s, "REDIS_URL"); got != "redis://redis:6379/0" {
				t.Errorf("%s REDIS_URL=%q", name, got)
			}
			if got := envValue(t, s, "MONGODB_URI"); got != "mongodb://mongo:27017/?replicaSet=rs0" {
				t.Errorf("%s MONGODB_URI=%q", name, got)
			}
			opt, err := asynq.ParseRedisURI(envValue(t, s, "REDIS_URL"))
			if err != nil {
				t.Fatalf("REDIS_URL: %v", err)
			}
			if o, ok := opt.(asynq.RedisClientOpt); !ok || o.Addr != "redis:6379" || o.DB != 0 {
				t.Errorf("REDIS_URL parses to %#v", opt)
			}
			// Secrets arrive from .env.
			for _, k := range secrets {
				if got := envValue(t, s, k); got != env[k] {
					t.Errorf("%s %s=%q, want the .env value %q", name, k, got, env[k])
				}
			}
			// The environment, as compose hands it over, is a valid
			// configuration for the service.
			cfg, err := config.Load(func(k string) string {
				if v, ok := s.Environment[k]; ok && v != nil {
					return *v
				}
				return ""
			})
			if err != nil {
				t.Fatalf("%s environment does not load: %v", name, err)
			}
			if cfg.EmbeddedRedis() || cfg.EmbeddedMongo() {
				t.Errorf("%s would run embedded stores", name)
			}
			if cfg.MongoDB != "bmsview" {
				t.Errorf("%s MONGODB_DB_NAME=%q", name, cfg.MongoDB)
			}
		})
	}

	t.Run("api port and readiness", func(t *testing.T) {
		s := service(t, p, "api")
		var published bool
		for _, port := range s.Ports {
			if port.Target == 8080 && port.Published == "8080" {
				published = true
			}
		}
		if !published {
			t.Errorf("api ports %+v: want 8080 published on 8080", s.Ports)
		}
		h := healthTest(t, s)
		if !slices.Contains(h, "/insights") || !slices.Contains(h, "healthcheck") || !strings.Contains(strings.Join(h, " "), "/readyz") {
			t.Errorf("api healthcheck %q: want the binary checking /readyz", h)
		}
	})

	t.Run("worker replicas", func(t *testing.T) {
		s := service(t, p, "worker")
		if s.Deploy == nil || s.Deploy.Replicas == nil {
			t.Errorf("worker has no deploy.replicas; want 2")
		} else if *s.Deploy.Replicas != 2 {
			t.Errorf("worker deploy.replicas %d, want 2", *s.Deploy.Replicas)
		}
		if len(s.Ports) != 0 {
			t.Errorf("worker publishes %+v: replicas cannot share a host port", s.Ports)
		}
	})

	t.Run("stores are not published", func(t *testing.T) {
		for _, name := range []string{"redis", "mongo"} {
			if s := service(t, p, name); len(s.Ports) != 0 {
				t.Errorf("%s publishes %+v; it has no password and belongs on the compose network", name, s.Ports)
			}
		}
	})

	t.Run("stop grace covers SHUTDOWN_TIMEOUT", func(t *testing.T) {
		for _, name := range appServices {
			s := service(t, p, name)
			if s.StopGracePeriod == nil || *s.StopGracePeriod <= types.Duration(25e9) {
				t.Errorf("%s stop_grace_period %v, want more than SHUTDOWN_TIMEOUT's 25s", name, s.StopGracePeriod)
			}
		}
	})
}

// interpolation matches ${VAR}, ${VAR:-default}, ${VAR:?message} and the
// forms without the colon: m[1] the name, m[2] "-" or "?", m[3] the rest.
var interpolation = regexp.MustCompile(`^\$\{([A-Z0-9_]+)(?::?([-?])(.*))?\}$`)

// TestComposeSecretsNotLiteral reads the compose model before interpolation:
// every secret, and anything named like one, is ${VAR} with no default.
func TestComposeSecretsNotLiteral(t *testing.T) {
	dotEnv, _ := writeDotEnv(t, nil)
	model, err := projectOptions(t, dotEnv, cli.WithInterpolation(false)).LoadModel(context.Background())
	if err != nil {
		t.Fatalf("load model: %v", err)
	}
	services, _ := model["services"].(map[string]any)
	if len(services) == 0 {
		t.Fatal("no services in the raw model")
	}
	secretLike := regexp.MustCompile(`TOKEN|PASSWORD|SECRET|_KEY$|PASSWD|CREDENTIAL`)
	for name, raw := range services {
		svc, _ := raw.(map[string]any)
		env := map[string]string{}
		switch e := svc["environment"].(type) {
		case map[string]any:
			for k, v := range e {
				if v != nil {
					env[k] = fmt.Sprint(v)
				}
			}
		case []any:
			for _, kv := range e {
				k, v, _ := strings.Cut(fmt.Sprint(kv), "=")
				env[k] = v
			}
		}
		for k, v := range env {
			if !slices.Contains(secrets, k) && !secretLike.MatchString(k) {
				continue
			}
			m := interpolation.FindStringSubmatch(v)
			if m == nil {
				t.Errorf("service %s: %s has the literal value %q; take it from .env as ${%s}", name, k, v, k)
				continue
			}
			if m[1] != k {
				t.Errorf("service %s: %s comes from ${%s}", name, k, m[1])
			}
			if m[2] == "-" && m[3] != "" {
				t.Errorf("service %s: %s has the default %q in the compose file", name, k, m[3])
			}
		}
		if slices.Contains(appServices, name) {
			for _, k := range secrets {
				if _, ok := env[k]; !ok {
					t.Errorf("service %s: secret %s is not passed", name, k)
				}
			}
		}
	}

	// No secret's value from .env.example leaks into the file either.
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	_, values := readEnvExample(t)
	for _, k := range secrets {
		if values[k] != "" {
			t.Errorf(".env.example gives the secret %s a value; leave it empty", k)
		}
		for _, line := range strings.Split(string(raw), "\n") {
			l := strings.TrimSpace(line)
			if strings.HasPrefix(l, k+":") || strings.HasPrefix(l, "- "+k+"=") {
				v := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(l, "- "+k+"="), k+":"))
				if !interpolation.MatchString(strings.Trim(v, `"'`)) {
					t.Errorf("docker-compose.yml: %q is not an interpolation", l)
				}
			}
		}
	}
}

// TestComposeRequiresSecrets: without API_TOKEN or ADMIN_PASSWORD in .env,
// compose refuses to start and names the variable.
func TestComposeRequiresSecrets(t *testing.T) {
	for _, k := range requiredSecrets {
		dotEnv, _ := writeDotEnv(t, map[string]string{k: ""})
		_, err := projectOptions(t, dotEnv).LoadProject(context.Background())
		if err == nil {
			t.Errorf("compose loads without %s", k)
			continue
		}
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error without %s does not name it: %v", k, err)
		}
	}
}

// TestEnvExampleMatchesCompose: .env.example lists every variable the
// compose file reads and every variable of docs/DESIGN.md section 4 that an
// operator sets, each with a comment, and nothing the compose file ignores.
func TestEnvExampleMatchesCompose(t *testing.T) {
	names, _ := readEnvExample(t)
	raw, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var code strings.Builder // the file without its comment lines
	for _, line := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			code.WriteString(line + "\n")
		}
	}
	used := map[string]bool{}
	for _, m := range regexp.MustCompile(`\$\{([A-Z0-9_]+)`).FindAllStringSubmatch(code.String(), -1) {
		used[m[1]] = true
	}
	for k := range used {
		if !slices.Contains(names, k) {
			t.Errorf("docker-compose.yml reads ${%s}, .env.example does not list it", k)
		}
	}
	for _, k := range names {
		if !used[k] {
			t.Errorf(".env.example lists %s, docker-compose.yml does not use it", k)
		}
	}
	for _, k := range section4 {
		if !slices.Contains(names, k) {
			t.Errorf(".env.example lacks %s (docs/DESIGN.md section 4)", k)
		}
	}
	// .env.example's own values load as a valid configuration (secrets
	// filled in as an operator would).
	_, env := writeDotEnv(t, nil)
	if _, err := config.Load(func(k string) string { return env[k] }); err != nil {
		t.Errorf(".env.example does not load: %v", err)
	}
}

// TestDotEnvIgnored: .env is gitignored and not tracked; .env.example is.
func TestDotEnvIgnored(t *testing.T) {
	git, err := exec.LookPath("git")
	if err == nil {
		if err := exec.Command(git, "-C", "..", "rev-parse", "--git-dir").Run(); err != nil {
			git = ""
		}
	}
	if err != nil || git == "" {
		// No git or no work tree: read .gitignore itself.
		b, err := os.ReadFile("../.gitignore")
		if err != nil {
			t.Fatalf(".gitignore: %v", err)
		}
		lines := strings.Split(string(b), "\n")
		if !slices.ContainsFunc(lines, func(l string) bool { l = strings.TrimSpace(l); return l == ".env" || l == "/.env" }) {
			t.Error(".gitignore does not list .env")
		}
		return
	}
	if err := exec.Command(git, "-C", "..", "check-ignore", "-q", "--no-index", ".env").Run(); err != nil {
		t.Errorf(".env is not gitignored: %v", err)
	}
	if err := exec.Command(git, "-C", "..", "check-ignore", "-q", "--no-index", ".env.example").Run(); err == nil {
		t.Error(".env.example is gitignored; it must be committed")
	}
	out, err := exec.Command(git, "-C", "..", "ls-files", "--", ".env").Output()
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != "" {
		t.Error(".env is tracked by git")
	}
}
