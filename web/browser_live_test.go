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
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/tasks"
)

// TestBrowserLiveJobPage opens a live job's page in headless Chromium: the
// page follows the job's stream (live.js under the page's script policy),
// shows a new progress row, the status badge and a step's badge change
// without a navigation (a marker set on window survives), and reloads once
// the job has completed, showing the result and the chain.
func TestBrowserLiveJobPage(t *testing.T) {
	e := newEnv(t, envOptions{})
	// After the env: the browser closes first, so no stream holds the
	// test server's Close.
	bctx, ctx := startBrowser(t, 60*time.Second)
	e.server.live = liveTiming{poll: 100 * time.Millisecond, keepAlive: time.Second, max: time.Minute, retry: 500 * time.Millisecond}
	shots := artifactsDir(t)
	const jobID = "job-browser-live"
	eventID := e.send(jobID)["eventId"].(string) // queued: no worker yet

	fail := func(what string, err error) {
		t.Helper()
		fctx, cancel := context.WithTimeout(bctx, 10*time.Second)
		defer cancel()
		if buf, err := chromedp.Run(fctx, chromedp.FullScreenshot(100)); err == nil {
			_ = os.WriteFile(filepath.Join(shots, "failure-live-"+strings.ReplaceAll(what, " ", "-")+".png"), buf, 0o644)
		}
		html, _ := chromedp.Run(fctx, chromedp.OuterHTML(chromedp.CSS("body")))
		t.Fatalf("%s: %v\npage:\n%.4000s", what, err, html)
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			fail(what, err)
		}
	}
	eval := func(what, js string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			fail(what, err)
		}
		return v
	}
	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
			buf, err := chromedp.FullScreenshot(100)(ctx, t)
			if err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(shots, name+".png"), buf, 0o644)
		})
	}

	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(AdminUser+":"+testPassword))
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": basic}}); err != nil {
		t.Fatal(err)
	}

	// The queued job's page connects to its stream.
	do("open the live job page",
		chromedp.Navigate(e.ts.URL+"/jobs/"+jobID),
		chromedp.WaitVisible(chromedp.CSS("#live")),
		chromedp.Poll[chromedp.Void](`document.getElementById('live').getAttribute('data-stream') === 'open'`,
			chromedp.WithPollingTimeout(15*time.Second)),
		shot("live-1-queued"))
	if st := eval("status", `document.getElementById('job-status').textContent`); st != tasks.StatusQueued {
		t.Fatalf("page shows status %q", st)
	}
	eval("set the marker", `window.liveMarker = 'kept'; 'ok'`)

	// The run starts: an earlier attempt's failed step, two progress events.
	e.pushProgress(jobID, bson.D{{Key: "status", Value: tasks.StatusProcessing}},
		progress("status", map[string]any{"message": "Analysis started"}),
		progress("tool_call", map[string]any{"toolName": "request_bms_data"}))
	failed := store.StepState{Status: store.StepFailed, Runs: 1, Attempt: 1, Error: "the provider is unavailable", StartedAt: time.Now().UTC()}
	if err := e.store.SaveCheckpoint(context.Background(), store.Checkpoint{Job: e.job(jobID), Step: tasks.StepProcessInsights, State: failed}); err != nil {
		t.Fatal(err)
	}
	// A poll does not survive a navigation: this one holding means the
	// page changed in place.
	do("the live update",
		chromedp.Poll[chromedp.Void](`document.querySelectorAll('#progress li').length === 2 &&
			document.getElementById('job-status').textContent === 'processing' &&
			document.querySelector('li[data-step="process-insights"]').getAttribute('data-runs') === '1'`,
			chromedp.WithPollingTimeout(15*time.Second)),
		shot("live-2-processing"))
	got := eval("the page after the update", `[window.liveMarker,
		document.getElementById('job-status').className,
		document.querySelector('#progress li:last-child').textContent,
		document.getElementById('no-progress') === null ? 'gone' : 'there',
		document.querySelector('li[data-step="process-insights"]').getAttribute('data-status'),
		document.querySelector('li[data-step="process-insights"] .badge').textContent,
		document.querySelector('li[data-step="process-insights"] .runs').textContent].join('|')`)
	parts := strings.Split(got, "|")
	if len(parts) != 7 || parts[0] != "kept" || parts[1] != "badge st-processing" || !strings.Contains(parts[2], "tool_call") || !strings.Contains(parts[2], "🔧 Fetching BMS historical data...") ||
		parts[3] != "gone" || parts[4] != "failed" || parts[5] != "failed" || parts[6] != "1" {
		t.Fatalf("after the live update: %q", got)
	}

	// A worker completes the run: the page reloads by itself and shows the
	// result and the chain.
	e.startWorker()
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Errors while the page reloads are expected: ask again.
		v, err := chromedp.Run(ctx, chromedp.Evaluate[string](`[String(window.liveMarker),
			(document.getElementById('job-status') || {}).textContent,
			String(!!document.querySelector('#result .markdown h2')),
			String(!!document.getElementById('live'))].join('|')`))
		if err == nil {
			last = v
			if v == "undefined|completed|true|false" {
				break
			}
		}
		if time.Now().After(deadline) {
			fail("reload on completion", fmt.Errorf("page state %q (marker|status|result|live), last error %v", last, err))
		}
		time.Sleep(50 * time.Millisecond)
	}
	do("the completed page", shot("live-3-completed"))
	got = eval("the reloaded page", `[document.querySelector('li[data-step="process-insights"]').getAttribute('data-runs'),
		document.getElementById('chain-task').textContent,
		document.getElementById('chain-state').getAttribute('data-state'),
		document.getElementById('progress').textContent.includes('Analysis started')].join('|')`)
	parts = strings.Split(got, "|")
	sent := map[string]bool{"pending": true, "active": true, "completed": true}
	if len(parts) != 4 || parts[0] != "2" || parts[1] != tasks.FollowUpTaskIDPrefix+eventID || !sent[parts[2]] || parts[3] != "true" {
		t.Fatalf("reloaded page (process-insights runs|chain task|chain state|progress kept): %q", got)
	}
}
