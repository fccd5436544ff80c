package web

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"go.mongodb.org/mongo-driver/v2/event"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
)

// The job page reads its job once (ops.Job), and shows from that read the
// event's state in Redis, with the budget of the operator web was given,
// and the chain.
func TestJobPageReadsTheJobOnce(t *testing.T) {
	var reads atomic.Int64 // finds of the jobs collection
	st := testenv.StoreWith(t, func(c *store.Config) {
		c.Monitor = &event.CommandMonitor{Started: func(_ context.Context, e *event.CommandStartedEvent) {
			if e.CommandName == "find" && e.Command.Lookup("find").StringValue() == store.JobsCollection {
				reads.Add(1)
			}
		}}
	})
	e := newEnv(t, envOptions{store: st, maxRetries: 4})
	e.send("job-read-once")

	reads.Store(0)
	r := e.do("GET", "/jobs/job-read-once", nil, authBasic)
	e.expect(r, http.StatusOK)
	if n := reads.Load(); n != 1 {
		t.Errorf("the job page read the jobs collection %d times, want once", n)
	}
	body := string(r.body)
	for _, want := range []string{`<span class="badge ts-pending">pending</span>`, `<dd id="event-retried">0 / ` + strconv.Itoa(4) + `</dd>`,
		`id="chain-state" data-state="unsent"`} {
		if !strings.Contains(body, want) {
			t.Errorf("job page lacks %s", want)
		}
	}
}
