package web

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

const chromiumPath = "/usr/bin/chromium"

// artifactsDir is where screenshots go: $ARTIFACTS_DIR, else
// web/testdata/artifacts (gitignored).
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("ARTIFACTS_DIR")
	if dir == "" {
		dir = filepath.Join("testdata", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startBrowser starts headless Chromium for a test (skipped without it,
// but outside CI) and returns the browser's context and one for the test,
// bounded by within.
func startBrowser(t *testing.T, within time.Duration) (bctx, ctx context.Context) {
	t.Helper()
	if _, err := os.Stat(chromiumPath); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing and CI=true: the browser test must run in CI (.ci/browser.sh installs it)", chromiumPath)
		}
		t.Skipf("skipping the browser test: %s not found (install it with .ci/browser.sh; in CI it is required)", chromiumPath)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	bctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(cancelCtx)
	// Start the browser on a context without deadline (a deadline on the
	// first call would bound the browser's life), then bound the test.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("start %s: %v", chromiumPath, err)
	}
	ctx, cancelTimeout := context.WithTimeout(bctx, within)
	t.Cleanup(cancelTimeout)
	return bctx, ctx
}

// TestBrowserRunArchivedFromDashboard drives the dashboard in headless
// Chromium: a job fails for good (archived), the cause is fixed, the
// operator presses Run on the archived task in asynqmon, and the job page
// shows it completed with its earlier steps run once.
func TestBrowserRunArchivedFromDashboard(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	bctx, ctx := startBrowser(t, 90*time.Second)
	shots := artifactsDir(t)

	// A job that fails for good at process-insights.
	const jobID = "job-browser"
	e.fail.set(true, jobID)
	eventID := e.send(jobID)["eventId"].(string)
	e.waitStatus(jobID, tasks.StatusFailed, 20*time.Second)
	e.waitTask("default", eventID, 10*time.Second, asynq.TaskStateArchived)

	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			buf, err := chromedp.FullScreenshot(100)(ctx, t) // 100: PNG
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644)
		})
	}
	fail := func(what string, err error) {
		t.Helper()
		fctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		_ = chromedp.Do(fctx, shot("failure-"+strings.ReplaceAll(what, " ", "-")))
		html, _ := chromedp.Run(fctx, chromedp.OuterHTML(chromedp.CSS("body")))
		t.Fatalf("%s: %v\npage:\n%.3000s", what, err, html)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			fail(what, err)
		}
	}
	text := func(what string, sel chromedp.CSS) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(sel))
		if err != nil {
			fail(what, err)
		}
		return strings.TrimSpace(v)
	}
	attr := func(what string, sel chromedp.CSS, name string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.AttributeValue(sel, name))
		if err != nil || !v.Exists {
			fail(what, fmt.Errorf("attribute %s of %s: %v (exists %v)", name, sel, err, v.Exists))
		}
		return v.Value
	}
	x := func(xpath string) chromedp.Search { return chromedp.Search(xpath) }

	// Without credentials the dashboard is closed: the Basic challenge has
	// no one to answer it in a headless browser.
	if err := chromedp.Do(ctx, chromedp.Navigate(e.ts.URL+"/monitoring/")); err == nil {
		if body := text("closed dashboard", "body"); !strings.Contains(body, "authentication required") {
			t.Fatalf("dashboard without credentials shows: %.300s", body)
		}
	} else if !strings.Contains(err.Error(), "AUTH") {
		t.Fatalf("dashboard without credentials: %v", err)
	}

	// Sign in: Basic credentials on every request of the browser, the
	// dashboard's own API calls included.
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(AdminUser+":"+testPassword))
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": basic}}); err != nil {
		t.Fatal(err)
	}

	queueLink := x(`//a[contains(@href, "/monitoring/queues/default")]`)
	do("open asynqmon",
		chromedp.Navigate(e.ts.URL+"/monitoring/"),
		chromedp.WaitVisible(queueLink),
		shot("1-asynqmon-home"))

	// The queue holding the failed job, then its archived tasks.
	archivedTab := x(`//div[contains(@class, "MuiChip-clickable")][contains(., "Archived")]`)
	row := `//tr[contains(., "` + jobID + `")]`
	do("open archived tasks",
		chromedp.Click(queueLink),
		chromedp.WaitVisible(archivedTab),
		chromedp.Click(archivedTab),
		chromedp.WaitVisible(x(row)),
		shot("2-archived-tasks"))
	loc, err := chromedp.Run(ctx, chromedp.Location())
	if err != nil || !strings.Contains(loc, "/monitoring/queues/default") || !strings.Contains(loc, "status=archived") {
		t.Fatalf("archived tasks at %s (%v)", loc, err)
	}

	// The cause is fixed; the operator presses Run on the archived task.
	// The row's buttons are looked up afresh for every action (asynqmon
	// re-renders the table while it polls).
	e.fail.set(false)
	cell := `[...document.querySelectorAll('tbody tr')].find(r => r.textContent.includes('` + jobID + `'))?.querySelector('td:last-child')`
	moreButton := chromedp.JSPath(cell + `?.querySelector('button')`)
	runButton := chromedp.JSPath(cell + `?.querySelectorAll('button')[1]`)
	do("show the row's actions",
		chromedp.Click(moreButton),
		chromedp.WaitVisible(runButton),
		shot("3-row-actions"))
	pressed := false
	for try := 1; try <= 3 && !pressed; try++ {
		do("press Run", chromedp.WaitVisible(runButton), chromedp.Click(runButton))
		for deadline := time.Now().Add(5 * time.Second); !pressed && time.Now().Before(deadline); {
			info, err := e.inspector.GetTaskInfo("default", eventID)
			pressed = err != nil || info.State != asynq.TaskStateArchived
			time.Sleep(20 * time.Millisecond)
		}
		if !pressed {
			t.Logf("press %d of Run had no effect; pressing again", try)
		}
	}
	if !pressed {
		fail("press Run", fmt.Errorf("the archived task is still archived after 3 presses"))
	}
	do("archived list empties", chromedp.WaitNotPresent(x(row)), shot("3b-after-run"))

	j := e.waitDone(jobID)
	want := map[string]int{"initialize": 1, "fetch-job": 1, "validate": 1, "process-insights": 2, "store-results": 1, "send-completion": 1}
	for s, n := range want {
		if testenv.Runs(j)[s] != n {
			t.Fatalf("runs in the store %v, want %v", testenv.Runs(j), want)
		}
	}

	// The job page shows it completed, with the timeline.
	do("job page",
		chromedp.Navigate(e.ts.URL+"/jobs/"+jobID),
		chromedp.WaitVisible(chromedp.CSS(`#timeline`)),
		shot("4-job-completed"))
	if st := text("job status", "#job-status"); st != "completed" {
		t.Fatalf("job page shows %q", st)
	}
	for s, n := range want {
		if got := attr("step "+s, chromedp.CSS(fmt.Sprintf(`li[data-step=%q]`, s)), "data-runs"); got != fmt.Sprint(n) {
			t.Fatalf("page: step %s runs %q, want %d", s, got, n)
		}
	}
	if h := text("rendered markdown", "#result .markdown h2"); h != "KEY FINDINGS" {
		t.Fatalf("result heading %q", h)
	}
	if href := attr("asynqmon link", "#monitor-link", "href"); href != "/monitoring/queues/default/tasks/"+eventID {
		t.Fatalf("task link %q", href)
	}

	// The index lists it with the counts.
	do("index",
		chromedp.Navigate(e.ts.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-job="`+jobID+`"] .st-completed`)),
		shot("5-index"))
	rows, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('tr[data-job]').length`))
	if err != nil || rows != 1 {
		t.Fatalf("index shows %d jobs, want 1 (%v)", rows, err)
	}
	if c := text("completed count", `li[data-status="completed"] b`); c != "1" {
		t.Fatalf("completed count %q", c)
	}
	t.Logf("screenshots in %s", shots)
}
