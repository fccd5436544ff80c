package tasks

import (
	"errors"
	"strconv"
	"testing"
	"time"
)

func TestNetlifyPriority(t *testing.T) {
	for _, c := range []struct{ in, want int }{
		{-50, 1}, {-10, 1}, {-9, DefaultPriority}, {-1, DefaultPriority}, {0, DefaultPriority}, {5, DefaultPriority}, {6, DefaultPriority}, {7, 7}, {8, 8}, {9, 9}, {10, 10}, {50, 10},
	} {
		got := NetlifyPriority(c.in)
		if got != c.want {
			t.Errorf("NetlifyPriority(%d) = %d, want %d", c.in, got, c.want)
		}
	}
	for p, q := range map[int]string{-10: QueueLow, -5: QueueDefault, 0: QueueDefault, 5: QueueDefault, 7: QueueHigh, 10: QueueCritical} {
		if got := QueueFor(NetlifyPriority(p)); got != q {
			t.Errorf("Netlify priority %d in %s, want %s", p, got, q)
		}
	}
}

func TestNetlifyState(t *testing.T) {
	now := time.Now()
	for _, c := range []struct {
		status string
		at     time.Time
		want   string
	}{
		{StatusQueued, now, NetlifyPending},
		{StatusScheduled, now.Add(time.Hour), NetlifyDelayed},
		{StatusScheduled, now.Add(25 * time.Hour), NetlifyHibernating},
		{StatusRetrying, now.Add(time.Minute), NetlifyDelayed},
		{StatusProcessing, now, NetlifyProcessing},
		{StatusFailed, now, NetlifyDeadLettered},
		{StatusCompleted, now, NetlifyDone},
		{StatusCancelled, now, NetlifyDone},
	} {
		if got := NetlifyState(c.status, c.at, now); got != c.want {
			t.Errorf("%s due in %v: %s, want %s", c.status, c.at.Sub(now), got, c.want)
		}
	}
}

func TestRouterEventSend(t *testing.T) {
	now := time.Now()
	evs, err := ParseRouterBody([]byte(`{"eventName":"generate-insights","eventId":"e-1","data":{"jobId":"j-1","contextWindowDays":400,"customPrompt":null},
		"priority":10,"delayUntil":` + itoa(now.Add(time.Hour).UnixMilli()) + `,"eventChain":["generate-insights"]}`))
	if err != nil || len(evs) != 1 {
		t.Fatalf("one object as an array of one: %v %v", evs, err)
	}
	s, err := evs[0].Send(0, now)
	if err != nil {
		t.Fatal(err)
	}
	if s.EventID != "e-1" || s.Priority != UrgentPriority || !s.CheckAtRun || s.At.Sub(now) < 59*time.Minute {
		t.Fatalf("send %+v", s)
	}
	// Out of range passes the door on this path (the validate step fails
	// the job); the event filter does not.
	if err := s.Validate(); err != nil {
		t.Fatalf("out of range refused at the door: %v", err)
	}
	s.CheckAtRun = false
	if err := s.Validate(); FieldOf(err) != "[0].data.contextWindowDays" {
		t.Fatalf("the range check names %q (%v)", FieldOf(err), err)
	}
	if err := evs[0].CheckChain(0); err != nil {
		t.Fatal(err)
	}
	evs[0].EventChain = make([]string, EventChainLimit)
	if err := evs[0].CheckChain(0); !errors.Is(err, ErrLoop) {
		t.Fatalf("a chain of %d: %v", EventChainLimit, err)
	}
}

func TestNothingMeasured(t *testing.T) {
	r := Request{AnalysisData: &AnalysisData{Summary: "unreadable screenshot", Extra: map[string]any{"stateOfChrage": 50}}}
	if err := r.Validate("sys-1"); FieldOf(err) != "analysisData" || !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("a snapshot with nothing measured: %v", err)
	}
	cur := -3.0
	r.AnalysisData.Current = &cur
	if err := r.Validate("sys-1"); err != nil {
		t.Fatalf("one reading is enough: %v", err)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
