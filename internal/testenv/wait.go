package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/bmsview/insights/internal/store"
	"github.com/hibiken/asynq"
)

// pollEvery is how often the waits look again.
const pollEvery = 20 * time.Millisecond

// poll calls cond until it holds with no error or within passes; it
// returns whether it held and cond's last error.
func poll(within time.Duration, cond func() (bool, error)) (bool, error) {
	deadline := time.Now().Add(within)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok && err == nil {
			return true, nil
		}
		lastErr = err
		time.Sleep(pollEvery)
	}
	return false, lastErr
}

// WaitFor polls cond until it holds or the deadline passes.
func WaitFor(t testing.TB, within time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	if ok, err := poll(within, cond); !ok {
		t.Fatalf("timed out after %v waiting for %s (last error: %v)", within, what, err)
	}
}

// Job reads job jobID from st, failing the test if it cannot.
func Job(t testing.TB, st *store.Store, jobID string) *store.Job {
	t.Helper()
	j, err := st.GetJob(context.Background(), jobID)
	if err != nil {
		t.Fatalf("get job %s: %v", jobID, err)
	}
	return j
}

// WaitJob polls job jobID in st until cond holds and returns it as read
// then. A job not stored yet is waited for. On time-out the test fails
// naming what and showing the job as last read.
func WaitJob(t testing.TB, st *store.Store, jobID string, within time.Duration, what string, cond func(*store.Job) bool) *store.Job {
	t.Helper()
	var j *store.Job
	ok, err := poll(within, func() (bool, error) {
		got, err := st.GetJob(context.Background(), jobID)
		if err != nil {
			return false, err
		}
		j = got
		return cond(j), nil
	})
	if !ok {
		if j == nil {
			t.Fatalf("timed out after %v waiting for job %s %s: never read (last error: %v)", within, jobID, what, err)
		}
		t.Fatalf("timed out after %v waiting for job %s %s: last read status %s, steps %+v (last error: %v)",
			within, jobID, what, j.Status, j.Steps, err)
	}
	return j
}

// WaitTask polls task id of queue until cond holds and returns its info.
func WaitTask(t testing.TB, insp *asynq.Inspector, queue, id string, within time.Duration, cond func(*asynq.TaskInfo) bool) *asynq.TaskInfo {
	t.Helper()
	var info *asynq.TaskInfo
	WaitFor(t, within, "task "+queue+"/"+id, func() (bool, error) {
		var err error
		info, err = insp.GetTaskInfo(queue, id)
		return err == nil && cond(info), err
	})
	return info
}

// InState is a WaitTask condition: the task is in state.
func InState(state asynq.TaskState) func(*asynq.TaskInfo) bool {
	return func(info *asynq.TaskInfo) bool { return info.State == state }
}

// Runs maps each step of j to the times its body ran.
func Runs(j *store.Job) map[string]int {
	out := map[string]int{}
	for name, st := range j.Steps {
		out[name] = st.Runs
	}
	return out
}
