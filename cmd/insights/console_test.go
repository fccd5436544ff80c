package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/testenv"
)

// TestServeLocksDataDirAndSeedsTheDemoOnce runs serve --demo on the
// embedded stores: a second serve on the same DATA_DIR stops at once with a
// message naming the holder, and a restart with --demo sends no demo event
// again (every demo job keeps its run).
func TestServeLocksDataDirAndSeedsTheDemoOnce(t *testing.T) {
	dataDir := t.TempDir()
	e := &env{vars: map[string]string{"REDIS_URL": "", "REDIS_CLUSTER_ADDRS": "", "MONGODB_URI": "", "DATA_DIR": dataDir,
		"API_TOKEN": "test-token", "ADMIN_PASSWORD": "test-password", "INSIGHTS_PROVIDER": "rules"}}
	addr := testenv.FreeAddr(t)
	first := e.start(t, "serve --demo", "HTTP_ADDR="+addr)
	waitHTTP(t, "http://"+addr+"/healthz")
	testenv.WaitFor(t, 60*time.Second, "the demo sent", func() (bool, error) {
		return strings.Contains(first.log(), "demo finished"), nil
	})
	runs := demoRuns(t, addr)
	if len(runs) != 5 {
		t.Fatalf("the demo made %d jobs, want 5: %v", len(runs), runs)
	}

	second := e.start(t, "serve", "HTTP_ADDR="+testenv.FreeAddr(t))
	select {
	case <-second.done:
	case <-time.After(30 * time.Second):
		t.Fatal("a second serve on the same DATA_DIR is still running after 30 s")
	}
	testenv.WaitFor(t, 5*time.Second, "the refusal on stderr", func() (bool, error) {
		return strings.Contains(second.log(), "is in use by another process"), nil
	})
	if second.code == 0 || strings.Contains(second.log(), "worker started") {
		t.Errorf("second serve: exit %d, log:\n%s", second.code, second.log())
	}

	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-first.done
	third := e.start(t, "serve --demo", "HTTP_ADDR="+addr)
	waitHTTP(t, "http://"+addr+"/healthz")
	testenv.WaitFor(t, 60*time.Second, "the demo checked", func() (bool, error) {
		return strings.Contains(third.log(), "demo finished"), nil
	})
	again := demoRuns(t, addr)
	for id, ev := range runs {
		if again[id] != ev {
			t.Errorf("demo job %s: run %s became %s after a restart with --demo", id, ev, again[id])
		}
	}
}

// demoRuns is every job's current eventId, from the API.
func demoRuns(t *testing.T, addr string) map[string]string {
	t.Helper()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", "http://"+addr+"/api/jobs?limit=50", nil)
	req.Header.Set("Authorization", "Bearer test-token")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var list struct {
		Jobs []struct {
			JobID   string `json:"jobId"`
			EventID string `json:"eventId"`
		} `json:"jobs"`
	}
	if err := json.NewDecoder(res.Body).Decode(&list); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, j := range list.Jobs {
		out[j.JobID] = j.EventID
	}
	return out
}
