package web

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/bmsview/insights/tasks"
)

// waitJS waits until the expression is true on the page, with a deadline.
func (b *browser) waitJS(what, expr string, within time.Duration) {
	b.t.Helper()
	for deadline := time.Now().Add(within); ; {
		ok, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			b.fail(what, fmt.Errorf("not within %s (%v)", within, err))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (b *browser) evalInt(what, expr string) int {
	b.t.Helper()
	n, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](expr))
	if err != nil {
		b.fail(what, err)
	}
	return n
}

// TestBrowserFailureGroupRetriedWithItsOutcome is a failure group of
// several jobs, each message naming its own job, retried from the page: it
// is one group, its retry warns that the failure is permanent, and the
// bulk action's page shows what the runs then did: failed again while the
// cause stands, completed once it is fixed. The audit page links both
// retries.
func TestBrowserFailureGroupRetriedWithItsOutcome(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	b := newBrowser(t, 150*time.Second)

	jobs := []string{"grp-1", "grp-2", "grp-3", "grp-4"}
	e.fail.named.Store(true)
	e.fail.set(true, jobs...)
	for _, id := range jobs {
		e.send(id)
	}
	for _, id := range jobs {
		e.waitStatus(id, tasks.StatusFailed, 20*time.Second)
	}

	group := chromedp.CSS(`#failure-groups tr[data-kind="business"]`)
	b.do("failures page",
		chromedp.Navigate(e.ts.URL+"/failures"),
		chromedp.WaitVisible(group),
		b.shot("console-failures"))
	if n := b.evalInt("groups", `document.querySelectorAll('#failure-groups tr[data-kind]').length`); n != 1 {
		b.fail("one group", fmt.Errorf("%d groups for one cause", n))
	}
	if c := b.text("group count", `#failure-groups tr[data-kind="business"] td b`); c != "4" {
		b.fail("group count", fmt.Errorf("the group counts %q, want 4", c))
	}
	if p := b.text("pattern", `#failure-groups .group-pattern`); p != "job <id>: analysis refused: the snapshot's cell data is inconsistent" {
		b.fail("pattern", fmt.Errorf("the group reads %q", p))
	}

	// Retry anyway, while the cause stands: the dry run warns, and the
	// action's page shows each run failed again, not "done".
	retry := func(round string) {
		b.t.Helper()
		b.do("dry run "+round,
			chromedp.Navigate(e.ts.URL+"/failures"),
			chromedp.WaitVisible(group),
			chromedp.Click(chromedp.CSS(`#failure-groups tr[data-kind="business"] a.bulk-retry`)),
			chromedp.WaitVisible(chromedp.CSS(`#bulk-confirm`)))
		if n := b.text("matched", `#bulk-matched`); n != "4" {
			b.fail("dry run count", fmt.Errorf("the dry run counts %q, want 4", n))
		}
		if w := b.text("warning", `#bulk-permanent`); !strings.Contains(w, "fail again") {
			b.fail("permanent warning", fmt.Errorf("the dry run says %q", w))
		}
		b.do("confirm "+round, chromedp.Click(chromedp.CSS(`#bulk-confirm`)), chromedp.WaitVisible(chromedp.CSS(`#bulk-then`)))
	}
	retry("while failing")
	b.waitJS("the runs failed again", `document.querySelectorAll('#bulk-jobs tr[data-then="failed-again"]').length === 4`, 40*time.Second)
	b.waitJS("the summary says so", `(document.querySelector('#bulk-then [data-then="failed-again"] b')||{}).textContent === '4'`, 10*time.Second)
	b.do("failed again", b.shot("console-bulk-failed-again"))
	if s := b.text("status", `#bulk-status`); s == "done" {
		b.fail("status wording", fmt.Errorf("the action reads %q", s))
	}

	// The cause is fixed: the same group retried completes.
	e.fail.set(false)
	retry("fixed")
	b.waitJS("the runs completed", `document.querySelectorAll('#bulk-jobs tr[data-then="completed"]').length === 4`, 40*time.Second)
	b.do("completed", b.shot("console-bulk"))
	for _, id := range jobs {
		if j := e.job(id); j.Status != tasks.StatusCompleted {
			t.Errorf("job %s is %s", id, j.Status)
		}
	}

	// The audit trail links both bulk retries to their pages.
	b.do("audit", chromedp.Navigate(e.ts.URL+"/audit"), chromedp.WaitVisible(chromedp.CSS(`#audit`)), b.shot("console-audit"))
	if n := b.evalInt("links", `document.querySelectorAll('#audit tr[data-op="bulk-retry"] a.audit-link[href^="/bulk/"]').length`); n != 2 {
		b.fail("audit links", fmt.Errorf("%d bulk retries linked, want 2", n))
	}
}

// TestBrowserHomeFiltersSurviveLiveUpdate types in the home page's filters
// while the list updates itself: the new job appears, the page is not
// reloaded, and what was typed stays.
func TestBrowserHomeFiltersSurviveLiveUpdate(t *testing.T) {
	e := newEnv(t, envOptions{})
	b := newBrowser(t, 90*time.Second)
	e.send("home-1")

	input := chromedp.CSS(`#job-filters input[name="systemId"]`)
	b.do("home",
		chromedp.Navigate(e.ts.URL+"/"),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-job="home-1"]`)))
	if _, err := chromedp.Run(b.ctx, chromedp.Evaluate[bool](`window.notReloaded = true`)); err != nil {
		b.fail("mark the page", err)
	}
	b.do("type", chromedp.SendKeys(input, "sys-half"))
	if n := b.evalInt("no meta refresh", `document.querySelectorAll('meta[http-equiv="refresh"]').length`); n != 0 {
		b.fail("meta refresh", fmt.Errorf("the home page reloads itself (%d meta refresh)", n))
	}

	// A job arrives while the operator types.
	e.send("home-2")
	b.waitJS("the list updates", `document.querySelector('tr[data-job="home-2"]') !== null`, 25*time.Second)
	b.do("keep typing", chromedp.SendKeys(input, "-typed"), b.shot("console-home"))
	if v := b.evalInt("not reloaded", `window.notReloaded === true ? 1 : 0`); v != 1 {
		b.fail("not reloaded", fmt.Errorf("the page was reloaded"))
	}
	v, err := chromedp.Run(b.ctx, chromedp.Value(input))
	if err != nil || v != "sys-half-typed" {
		b.fail("typed input", fmt.Errorf("the filter holds %q, want %q (%v)", v, "sys-half-typed", err))
	}
	if c := b.text("counts", `li[data-status="queued"] b`); c != "2" {
		b.fail("counts", fmt.Errorf("queued count %q, want 2", c))
	}
}

// TestBrowserJobPageOpensWithTheResult opens a completed job: the first
// screen shows the insights and how long the run took.
func TestBrowserJobPageOpensWithTheResult(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	b := newBrowser(t, 60*time.Second)
	e.send("first-screen")
	e.waitDone("first-screen")

	b.do("job page", chromedp.Navigate(e.ts.URL+"/jobs/first-screen"), chromedp.WaitVisible(chromedp.CSS(`#result`)), b.shot("console-job"))
	b.waitJS("result on the first screen",
		`(() => { const r = document.querySelector('#result .markdown h2').getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; })()`,
		5*time.Second)
	if h := b.text("heading", `#result .markdown h2`); h != "KEY FINDINGS" {
		b.fail("result heading", fmt.Errorf("the result's first heading is %q", h))
	}
	if took := b.text("duration", `#took`); !strings.HasPrefix(took, "took ") {
		b.fail("duration", fmt.Errorf("the run's duration reads %q", took))
	}
	if n := b.evalInt("no due", `document.querySelectorAll('#due').length`); n != 0 {
		b.fail("due", fmt.Errorf("a completed job shows when it is due"))
	}
	// Times are relative, the absolute time on hover.
	title := b.evalInt("time title", `document.querySelector('#updated-at time').title.endsWith(' UTC') ? 1 : 0`)
	if upd := b.text("updated", `#updated-at`); title != 1 || !(upd == "just now" || strings.HasSuffix(upd, " ago")) {
		b.fail("relative time", fmt.Errorf("updated reads %q", b.text("updated", `#updated-at`)))
	}
}
