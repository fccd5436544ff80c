package main

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/config"
	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
	"github.com/bmsview/insights/web"
)

// TestStatusDirectEqualsAPI: `insights status` read straight from Redis and
// MongoDB prints, byte for byte, what it prints from the API (both are the
// same ops operation), for a job's event and for a task only Redis knows;
// an unknown event exits 1 naming it.
func TestStatusDirectEqualsAPI(t *testing.T) {
	e := newEnv(t)
	e.setenv(t)
	cfg, err := config.Load(nil)
	if err != nil {
		t.Fatal(err)
	}
	client := tasks.NewClient(e.redis, tasks.ClientConfig{Jobs: e.store})
	insp := asynq.NewInspector(e.redis)
	operator := ops.New(ops.Config{Store: e.store, Inspector: insp, Client: client, MaxRetries: cfg.MaxRetries, Logger: testenv.Logger()})
	ws := web.New(web.Config{Store: e.store, Client: client, Inspector: insp, APIToken: cfg.APIToken,
		Operator: operator, Logger: testenv.Logger()})
	ts := httptest.NewServer(ws.Handler())
	t.Cleanup(func() { ts.Close(); ws.Close(); operator.Close(); client.Close(); insp.Close() })

	res, err := client.TriggerInsights(context.Background(), tasks.EventData{JobID: "st-1", SystemID: "sys-1", AnalysisData: testenv.Snapshot()})
	if err != nil {
		t.Fatal(err)
	}
	hand := asynq.NewClient(e.redis)
	defer hand.Close()
	if _, err := hand.Enqueue(asynq.NewTask(tasks.EventInsightsCompleted, []byte(`{"jobId":"st-1"}`)), asynq.Queue("low"), asynq.TaskID("st-fu"), asynq.MaxRetry(4)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{res.EventID, "st-fu"} {
		code, direct, errs := runCLI("status", id)
		if code != 0 || !strings.Contains(direct, `"eventId": "`+id+`"`) {
			t.Fatalf("status %s direct: exit %d %s %s", id, code, direct, errs)
		}
		code, api, errs := runCLI("status", id, "--server", ts.URL)
		if code != 0 || api != direct {
			t.Errorf("status %s: from the API (exit %d %s)\n%s\ndirect\n%s", id, code, errs, api, direct)
		}
	}
	if code, out, errs := runCLI("status", "nope"); code != 1 || out != "" || !strings.Contains(errs, "event nope not found") {
		t.Errorf("unknown event: exit %d %q %q, want 1 and the message", code, out, errs)
	}
}
