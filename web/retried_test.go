package web

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/tasks"
)

// retriedOf reads an event's retried/maxRetry from the API and checks the
// job page shows the same.
func (e *env) retriedOf(jobID, eventID string) (retried, maxRetry int) {
	e.t.Helper()
	r := e.do("GET", "/api/events/"+eventID, nil, authBearer)
	e.expect(r, http.StatusOK)
	m := r.json(e.t)
	retried, maxRetry = int(m["retried"].(float64)), int(m["maxRetry"].(float64))
	page := e.do("GET", "/jobs/"+jobID, nil, authBasic)
	e.expect(page, http.StatusOK)
	if want := fmt.Sprintf(`<dd id="event-retried">%d / %d</dd>`, retried, maxRetry); !strings.Contains(string(page.body), want) {
		e.t.Errorf("job page lacks %s", want)
	}
	return retried, maxRetry
}

// `retried` counts retries that were scheduled: the failure that ended the
// run was not followed by one.
func TestEventRetriedCountsScheduledRetries(t *testing.T) {
	t.Run("no-retry failure", func(t *testing.T) {
		e := newEnv(t, envOptions{worker: true})
		id := e.archivedRun("job-once")
		if j := e.job("job-once"); j.Failures != 1 || j.Status != tasks.StatusFailed {
			t.Fatalf("job failures=%d status=%s, want 1 failed", j.Failures, j.Status)
		}
		if retried, _ := e.retriedOf("job-once", id); retried != 0 {
			t.Errorf("retried = %d, want 0: the run was never retried", retried)
		}
	})
	t.Run("failed twice with MaxRetries 1", func(t *testing.T) {
		e := newEnv(t, envOptions{worker: true, maxRetries: 1})
		e.fail.retryable.Store(true)
		e.fail.set(true)
		id := e.send("job-twice")["eventId"].(string)
		e.waitStatus("job-twice", tasks.StatusFailed, 20*time.Second)
		e.waitTask("default", id, 10*time.Second, asynq.TaskStateArchived)
		if j := e.job("job-twice"); j.Failures != 2 {
			t.Fatalf("job failures=%d, want 2", j.Failures)
		}
		if retried, maxRetry := e.retriedOf("job-twice", id); retried != 1 || maxRetry != 1 {
			t.Errorf("retried/maxRetry = %d/%d, want 1/1", retried, maxRetry)
		}
	})
}
