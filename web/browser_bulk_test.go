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

// browser is a headless Chromium signed in as admin, with the test's
// helpers: each failure saves a screenshot and the page to the artifacts.
type browser struct {
	t     *testing.T
	ctx   context.Context
	root  context.Context
	shots string
}

// newBrowser starts Chromium (startBrowser) signed in as admin: Basic
// credentials on every request.
func newBrowser(t *testing.T, within time.Duration) *browser {
	t.Helper()
	root, ctx := startBrowser(t, within)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(AdminUser+":"+testPassword))
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": basic}}); err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, ctx: ctx, root: root, shots: artifactsDir(t)}
}

func (b *browser) shot(name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		buf, err := chromedp.FullScreenshot(100)(ctx, t) // 100: PNG
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(b.shots, name+".png"), buf, 0o644)
	})
}

func (b *browser) fail(what string, err error) {
	b.t.Helper()
	fctx, cancel := context.WithTimeout(b.root, 10*time.Second)
	defer cancel()
	_ = chromedp.Do(fctx, b.shot("failure-"+strings.ReplaceAll(what, " ", "-")))
	html, _ := chromedp.Run(fctx, chromedp.OuterHTML(chromedp.CSS("body")))
	b.t.Fatalf("%s: %v\npage:\n%.3000s", what, err, html)
}

func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, steps...); err != nil {
		b.fail(what, err)
	}
}

func (b *browser) text(what string, sel chromedp.CSS) string {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Text(sel))
	if err != nil {
		b.fail(what, err)
	}
	return strings.TrimSpace(v)
}

// TestBrowserBulkRetryOfAFailureGroup is the operator's way through a
// failure: the failures page filtered to one kind, its group's retry, the
// dry run's count, the confirm, and the bulk action's page showing the jobs
// complete, in headless Chromium.
func TestBrowserBulkRetryOfAFailureGroup(t *testing.T) {
	e := newEnv(t, envOptions{worker: true})
	b := newBrowser(t, 90*time.Second)

	// Three jobs refused at process-insights (one group), and an older
	// failure of another kind that the retry must leave alone.
	jobs := []string{"br-1", "br-2", "br-3"}
	e.fail.set(true, jobs...)
	for _, id := range jobs {
		e.send(id)
	}
	for _, id := range jobs {
		e.waitStatus(id, tasks.StatusFailed, 20*time.Second)
	}
	old := time.Now().Add(-48 * time.Hour).UTC()
	if _, err := e.store.Database().Collection(store.JobsCollection).InsertOne(context.Background(), bson.M{
		"_id": "br-old", "id": "br-old", "status": "failed", "systemId": "sys-1", "eventId": "ev-br-old", "queue": "default",
		"createdAt": old, "updatedAt": old, "error": "provider timeout",
		"failure": bson.M{"kind": store.KindTransient, "step": tasks.StepProcessInsights, "message": "provider timeout", "at": old},
	}); err != nil {
		t.Fatal(err)
	}

	group := chromedp.CSS(`#failure-groups tr[data-kind="business"]`)
	b.do("failures page",
		chromedp.Navigate(e.ts.URL+"/"),
		chromedp.Click(chromedp.Search(`//header//a[text()="Failures"]`)),
		chromedp.WaitVisible(group),
		b.shot("bulk-1-failures"))
	if n, _ := chromedp.Run(b.ctx, chromedp.Evaluate[int](`document.querySelectorAll('#failure-groups tr[data-kind]').length`)); n != 2 {
		b.fail("two groups", fmt.Errorf("%d groups on the failures page", n))
	}

	// Filter to the kind, then the group's retry link: a dry run.
	b.do("filter by kind",
		chromedp.SetValue(chromedp.CSS(`select[name="failureKind"]`), "business"),
		chromedp.Click(chromedp.CSS(`#filter-failures`)),
		chromedp.WaitNotPresent(chromedp.CSS(`#failure-groups tr[data-kind="transient"]`)),
		chromedp.WaitVisible(group))
	if c := b.text("group count", `#failure-groups tr[data-kind="business"] td b`); c != "3" {
		b.fail("group count", fmt.Errorf("the group counts %q, want 3", c))
	}
	b.do("dry run",
		chromedp.Click(chromedp.CSS(`#failure-groups tr[data-kind="business"] a.bulk-retry`)),
		chromedp.WaitVisible(chromedp.CSS(`#bulk-confirm`)),
		b.shot("bulk-2-dry-run"))
	if n := b.text("matched", `#bulk-matched`); n != "3" {
		b.fail("dry run count", fmt.Errorf("the dry run counts %q, want 3", n))
	}
	if label := b.text("confirm", `#bulk-confirm`); label != "retry 3 jobs" {
		b.fail("confirm label", fmt.Errorf("the confirm button reads %q", label))
	}
	for _, id := range jobs {
		if j := e.job(id); j.Status != tasks.StatusFailed {
			t.Fatalf("the dry run changed %s: %s", id, j.Status)
		}
	}

	// The cause is fixed; confirm, and watch the jobs complete on the
	// action's page (it refreshes itself).
	e.fail.set(false)
	b.do("confirm",
		chromedp.Click(chromedp.CSS(`#bulk-confirm`)),
		chromedp.WaitVisible(chromedp.CSS(`#bulk-jobs`)))
	loc, err := chromedp.Run(b.ctx, chromedp.Location())
	if err != nil || !strings.Contains(loc, "/bulk/") {
		b.fail("bulk page", fmt.Errorf("at %s (%v)", loc, err))
	}
	completed := `document.querySelectorAll('#bulk-jobs tr[data-status="completed"]').length`
	for deadline := time.Now().Add(30 * time.Second); ; {
		n, err := chromedp.Run(b.ctx, chromedp.Evaluate[int](completed))
		if err == nil && n == 3 {
			break
		}
		if time.Now().After(deadline) {
			b.fail("jobs complete on the page", fmt.Errorf("%d of 3 completed (%v)", n, err))
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.do("done", chromedp.WaitVisible(chromedp.CSS(`#bulk-status[data-status="done"]`)), b.shot("bulk-3-completed"))
	if c := b.text("counts", `#bulk-counts`); c != "3 · 0 · 0" {
		b.fail("counts", fmt.Errorf("done · failed · skipped reads %q", c))
	}
	for _, id := range jobs {
		if j := e.job(id); j.Status != tasks.StatusCompleted || j.Failures != 0 {
			t.Errorf("job %s: %s with failures %d", id, j.Status, j.Failures)
		}
	}
	if j := e.job("br-old"); j.Status != tasks.StatusFailed {
		t.Errorf("the other group's job was touched: %s", j.Status)
	}
	t.Logf("screenshots in %s", b.shots)
}
