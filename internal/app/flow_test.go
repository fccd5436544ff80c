package app_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/app"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/internal/testenv/fakegemini"
	"github.com/bmsview/insights/tasks"
)

func sendFor(t *testing.T, a *app.App, jobID, systemID string) {
	t.Helper()
	if _, err := a.Client.TriggerInsights(context.Background(), tasks.EventData{JobID: jobID, SystemID: systemID, AnalysisData: e2eSnapshot()}); err != nil {
		t.Fatalf("send %s: %v", jobID, err)
	}
}

// 60 jobs under GEMINI_RPM=30: the model is never called more than 30 times
// in any minute, and every job completes with no failure recorded: the
// runs over the limit waited, rescheduled, without using their budget
// (MAX_RETRIES=0 would have failed them at once).
func TestE2EGeminiRateLimit(t *testing.T) {
	f := fakegemini.Start(t, geminiKey, func(_ fakegemini.Call, w http.ResponseWriter) {
		_, _ = io.WriteString(w, fakegemini.Text("## KEY FINDINGS\n- fine\n"))
	})
	vars := geminiVars(f.URL)
	vars["GEMINI_RPM"], vars["SYSTEM_CONCURRENCY"], vars["MAX_RETRIES"] = "30", "0", "0"
	a := e2eOpen(t, vars, app.WorkerOptions{}, nil)
	const jobs = 60
	for i := range jobs {
		sendFor(t, a, fmt.Sprintf("rpm-%02d", i), "sys-e2e")
	}
	testenv.WaitFor(t, 150*time.Second, "60 jobs completed", func() (bool, error) {
		n := 0
		for i := range jobs {
			j, err := a.Store.GetJob(context.Background(), fmt.Sprintf("rpm-%02d", i))
			if err != nil {
				return false, err
			}
			if j.Status == tasks.StatusFailed {
				t.Fatalf("job %s failed: %v", j.ID, j.Error)
			}
			if j.Status == tasks.StatusCompleted {
				n++
			}
		}
		return n == jobs, nil
	})
	if got := f.MostWithin(time.Minute); got > 30 {
		t.Errorf("%d model calls within one minute, the limit is 30", got)
	}
	for i := range jobs {
		j := testenv.Job(t, a.Store, fmt.Sprintf("rpm-%02d", i))
		// A store's outage (a checkpoint timed out on a loaded machine) is
		// recorded, but is no failure of the run.
		if j.Failures != 0 || j.OwnFailure() || j.Waiting != nil {
			t.Fatalf("job %s: failures %d failure %+v waiting %+v; want none", j.ID, j.Failures, j.Failure, j.Waiting)
		}
	}
	if f.Calls() != jobs {
		t.Errorf("%d model calls for %d jobs, want one each", f.Calls(), jobs)
	}
}

// Two jobs of one system never overlap in process-insights
// (SYSTEM_CONCURRENCY=1, the gemini default), while a job of another system
// runs beside the first.
func TestE2ESystemConcurrency(t *testing.T) {
	f := fakegemini.Start(t, geminiKey, func(_ fakegemini.Call, w http.ResponseWriter) {
		time.Sleep(500 * time.Millisecond) // a model that takes its time
		_, _ = io.WriteString(w, fakegemini.Text("## KEY FINDINGS\n- fine\n"))
	})
	vars := geminiVars(f.URL)
	vars["MAX_RETRIES"] = "0"
	a := e2eOpen(t, vars, app.WorkerOptions{}, nil)
	sendFor(t, a, "same-1", "sys-one")
	sendFor(t, a, "same-2", "sys-one")
	sendFor(t, a, "other", "sys-two")
	steps := map[string]store.StepState{}
	testenv.WaitFor(t, 60*time.Second, "the three jobs completed", func() (bool, error) {
		for _, id := range []string{"same-1", "same-2", "other"} {
			j, err := a.Store.GetJob(context.Background(), id)
			if err != nil || j.Status != tasks.StatusCompleted {
				return false, err
			}
			steps[id] = j.Steps[tasks.StepProcessInsights]
		}
		return true, nil
	})
	one, two := steps["same-1"], steps["same-2"]
	if one.StartedAt.Before(two.FinishedAt) && two.StartedAt.Before(one.FinishedAt) {
		t.Errorf("process-insights of one system overlapped: %v–%v and %v–%v", one.StartedAt, one.FinishedAt, two.StartedAt, two.FinishedAt)
	}
	first := one.FinishedAt
	if two.FinishedAt.Before(first) {
		first = two.FinishedAt
	}
	if other := steps["other"]; !other.StartedAt.Before(first) {
		t.Errorf("the other system's job started %v, after sys-one's first finished (%v): it waited", other.StartedAt, first)
	}
	for _, id := range []string{"same-1", "same-2", "other"} {
		if j := testenv.Job(t, a.Store, id); j.Failures != 0 || j.Steps[tasks.StepProcessInsights].Runs != 1 {
			t.Errorf("job %s: failures %d, process-insights ran %d times; want 0 and 1", id, j.Failures, j.Steps[tasks.StepProcessInsights].Runs)
		}
	}
}
