package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is one FROM and what follows it.
type stage struct {
	from, name string
	ins        []instruction
}

func (s stage) all(cmd string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.cmd == cmd {
			out = append(out, in)
		}
	}
	return out
}

func (s stage) last(cmd string) (instruction, bool) {
	all := s.all(cmd)
	if len(all) == 0 {
		return instruction{}, false
	}
	return all[len(all)-1], true
}

// parseDockerfile splits a Dockerfile into stages, with ARGs declared
// before the first FROM substituted into FROM lines.
func parseDockerfile(t *testing.T, text string) (stages []stage) {
	t.Helper()
	var ins []instruction
	var cur strings.Builder
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() > 0 && strings.HasPrefix(trimmed, "#") {
			continue // a comment inside a continued instruction
		}
		if c, ok := strings.CutSuffix(trimmed, `\`); ok {
			cur.WriteString(c + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		ins = append(ins, instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)})
		cur.Reset()
	}
	globalArgs := map[string]string{}
	for _, in := range ins {
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			for i := 0; i < len(f); i++ {
				if strings.HasPrefix(f[i], "--") {
					continue
				}
				from := f[i]
				for k, v := range globalArgs {
					from = strings.ReplaceAll(from, "${"+k+"}", v)
					from = strings.ReplaceAll(from, "$"+k, v)
				}
				st := stage{from: from}
				if i+2 < len(f) && strings.EqualFold(f[i+1], "AS") {
					st.name = f[i+2]
				}
				stages = append(stages, st)
				break
			}
			continue
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				k, v, _ := strings.Cut(in.args, "=")
				globalArgs[k] = v
			}
			continue
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	return stages
}

// execForm decodes a JSON-array (exec form) argument.
func execForm(t *testing.T, what, args string) []string {
	t.Helper()
	var out []string
	if err := json.Unmarshal([]byte(args), &out); err != nil {
		t.Errorf("%s %s: want the exec (JSON array) form: %v", what, args, err)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	b, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	stages := parseDockerfile(t, string(b))
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	t.Run("build stage", func(t *testing.T) {
		if !strings.HasPrefix(build.from, "golang:1.26") {
			t.Errorf("builder FROM %q, want golang:1.26", build.from)
		}
		var goBuild string
		for _, in := range build.all("RUN") {
			if strings.Contains(in.args, "go build") {
				goBuild = in.args
			}
		}
		if goBuild == "" {
			t.Fatal("no RUN go build")
		}
		for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "-o /insights", "./cmd/insights", "--mount=type=cache,target=/go/pkg/mod"} {
			if !strings.Contains(goBuild, want) {
				t.Errorf("go build step lacks %q: %s", want, goBuild)
			}
		}
		if strings.Contains(goBuild, "CGO_ENABLED=1") {
			t.Error("go build enables cgo")
		}
	})

	t.Run("final stage", func(t *testing.T) {
		if !strings.HasPrefix(final.from, "gcr.io/distroless/static") && final.from != "scratch" {
			t.Errorf("final FROM %q, want distroless static or scratch", final.from)
		}
		if final.from == "scratch" && !strings.Contains(string(b), "ca-certificates") {
			t.Error("a scratch image needs CA certificates copied in")
		}
		var copied bool
		for _, in := range final.all("COPY") {
			if strings.Contains(in.args, "--from="+build.name) && strings.Contains(in.args, "/insights") {
				copied = true
			}
		}
		if !copied {
			t.Errorf("final stage does not COPY /insights from stage %q", build.name)
		}
		user, ok := final.last("USER")
		if !ok && !strings.HasSuffix(final.from, ":nonroot") {
			t.Fatal("final stage sets no USER")
		}
		if ok {
			u, _, _ := strings.Cut(user.args, ":")
			if u == "root" || u == "0" || u == "" {
				t.Errorf("USER %q runs as root", user.args)
			}
		}
		if in, ok := final.last("EXPOSE"); !ok || !slices.Contains(strings.Fields(in.args), "8080") {
			t.Errorf("EXPOSE %q, want 8080", in.args)
		}
		hc, ok := final.last("HEALTHCHECK")
		if !ok {
			t.Fatal("no HEALTHCHECK")
		}
		_, cmd, ok := strings.Cut(hc.args, "CMD ")
		if !ok {
			t.Fatalf("HEALTHCHECK %q has no CMD", hc.args)
		}
		if got := execForm(t, "HEALTHCHECK CMD", strings.TrimSpace(cmd)); !slices.Equal(got, []string{"/insights", "healthcheck"}) {
			t.Errorf("HEALTHCHECK CMD %q, want the binary checking itself: [/insights healthcheck]", got)
		}
		if ep, ok := final.last("ENTRYPOINT"); !ok || !slices.Equal(execForm(t, "ENTRYPOINT", ep.args), []string{"/insights"}) {
			t.Errorf("ENTRYPOINT %q, want [\"/insights\"]", ep.args)
		}
		if c, ok := final.last("CMD"); !ok || !slices.Equal(execForm(t, "CMD", c.args), []string{"serve"}) {
			t.Errorf("CMD %q, want [\"serve\"]", c.args)
		}
		for _, in := range final.all("RUN") {
			t.Errorf("final stage RUNs %q: distroless has no shell", in.args)
		}
	})
}

func TestDockerignore(t *testing.T) {
	b, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(regexp.MustCompile(`(?m)#.*$`).ReplaceAllString(string(b), "")))
	for _, want := range []string{".git", ".env", "/data/", "/insights"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore lacks %q", want)
		}
	}
	// What the build needs must stay in the context.
	for _, kept := range []string{"go.mod", "go.sum", "cmd", "internal", "*.go"} {
		if slices.Contains(lines, kept) || slices.Contains(lines, "/"+kept) {
			t.Errorf(".dockerignore drops %q, which the build needs", kept)
		}
	}
}

// TestStaticBuild: the Dockerfile builds with CGO_ENABLED=0 for a static
// binary on distroless/static; every package ./cmd/insights imports (the
// embedded FerretDB's SQLite is modernc's pure Go) must build without cgo.
// go list is enough to see that, and fast: it compiles nothing.
func TestStaticBuild(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	if m, _ := filepath.Glob("../cmd/insights/*.go"); len(m) == 0 {
		t.Skip("cmd/insights has no Go files yet")
	}
	cmd := exec.Command(goBin, "list", "-e", "-deps", "-f", "{{.ImportPath}}\t{{if .Error}}{{.Error}}{{end}}{{range .DepsErrors}}{{.}}; {{end}}", "./cmd/insights")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("CGO_ENABLED=0 go list ./cmd/insights: %v\n%s", err, out)
	}
	var n int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, perr, _ := strings.Cut(line, "\t")
		n++
		if perr != "" {
			t.Errorf("with CGO_ENABLED=0, %s: %s", pkg, perr)
		}
	}
	if n < 10 {
		t.Errorf("go list found only %d packages:\n%s", n, out)
	}
}
