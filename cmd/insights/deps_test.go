package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// benchPackages are the benchmark's own packages (cmd/insights-bench).
var benchPackages = []string{
	"github.com/bmsview/insights/cmd/insights-bench/internal/loadtest",
	"github.com/bmsview/insights/cmd/insights-bench/internal/peers",
}

// The product binary links none of the benchmark's code and does not know
// where the peer benchmarks live (../shared/peers): both belong to
// cmd/insights-bench, which does link them (so a rename cannot leave this
// test checking for packages that no longer exist).
func TestProductLinksNoBenchmark(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command in PATH")
	}
	product := listDeps(t, goBin, "./cmd/insights")
	for _, p := range product {
		if strings.HasPrefix(p.path, "github.com/bmsview/insights/cmd/insights-bench") || strings.HasSuffix(p.path, "/loadtest") || strings.HasSuffix(p.path, "/peers") {
			t.Errorf("go list -deps ./cmd/insights lists %s, a benchmark package", p.path)
		}
		if !strings.HasPrefix(p.path, "github.com/bmsview/insights") {
			continue
		}
		for _, f := range p.files {
			b, err := os.ReadFile(filepath.Join(p.dir, f))
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "../shared") {
				t.Errorf("%s/%s names ../shared, the benchmark's peers", p.path, f)
			}
		}
	}
	bench := map[string]bool{}
	for _, p := range listDeps(t, goBin, "./cmd/insights-bench") {
		bench[p.path] = true
	}
	for _, want := range benchPackages {
		if !bench[want] {
			t.Errorf("go list -deps ./cmd/insights-bench lacks %s", want)
		}
	}
}

type listedPackage struct {
	path, dir string
	files     []string // non-test Go files
}

// listDeps is `go list -deps` of pkg, run from the module root.
func listDeps(t *testing.T, goBin, pkg string) []listedPackage {
	t.Helper()
	cmd := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}\t{{.Dir}}\t{{join .GoFiles \" \"}}", pkg)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var pkgs []listedPackage
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.SplitN(line, "\t", 3)
		if len(f) != 3 {
			t.Fatalf("go list line %q", line)
		}
		pkgs = append(pkgs, listedPackage{path: f[0], dir: f[1], files: strings.Fields(f[2])})
	}
	if len(pkgs) < 10 {
		t.Fatalf("go list -deps %s found only %d packages", pkg, len(pkgs))
	}
	return pkgs
}
