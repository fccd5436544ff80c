package web

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// BenchmarkJobReadUnderLiveStreams: GET /api/jobs/{jobId} of a running
// job whose document is about 300 KB (its snapshot), while 0 or 500 job
// pages follow it live and its run adds a progress event every 500 ms.
// Before the shared watcher each stream read the whole job every second
// (issue 22: 30 streams took this read from 5 ms to 3 s). Reported: the
// read's p50 and p95, and the store reads the live streams cost a second.
//
//	REDIS_URL=redis://127.0.0.1:6379/0 go test -run '^$' -bench JobReadUnderLiveStreams -benchtime 200x ./web/
func BenchmarkJobReadUnderLiveStreams(b *testing.B) {
	for _, n := range []int{0, 500} {
		b.Run(fmt.Sprintf("streams=%d", n), func(b *testing.B) { benchJobRead(b, n) })
	}
}

func benchJobRead(b *testing.B, streams int) {
	redisOpt := testenv.Redis(b)
	st := testenv.Store(b)
	client := tasks.NewClient(redisOpt, tasks.ClientConfig{Jobs: st})
	inspector := asynq.NewInspector(redisOpt)
	b.Cleanup(func() { client.Close(); inspector.Close() })
	// No caps: the benchmark is 500 streams of one user.
	srv := New(Config{Store: st, Client: client, Inspector: inspector, APIToken: testToken, AdminPassword: testPassword,
		LiveStreamsPerUser: -1, LiveStreamsMax: -1, Logger: testenv.Logger()})
	b.Cleanup(func() { srv.Close() })
	ts := httptest.NewServer(srv.Handler())
	b.Cleanup(ts.Close)
	tr := &http.Transport{MaxIdleConnsPerHost: streams + 10}
	b.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr}

	// A snapshot of about 300 KB: 16 cells' voltages over many samples.
	const jobID = "job-bench-live"
	cells := make([]float64, 28000)
	for i := range cells {
		cells[i] = 3.3 + float64(i%97)/1000
	}
	body, _ := json.Marshal(map[string]any{"eventName": tasks.EventGenerateInsights, "eventData": map[string]any{
		"jobId": jobID, "systemId": "sys-bench", "analysisData": map[string]any{"stateOfCharge": 80, "cellVoltages": cells}}})
	if len(body) < 280<<10 {
		b.Fatalf("event of %d bytes, want about 300 KB", len(body))
	}
	req, _ := http.NewRequest("POST", ts.URL+"/api/events", strings.NewReader(string(body)))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	res, err := hc.Do(req)
	if err != nil || res.StatusCode != http.StatusAccepted {
		b.Fatalf("send: %v %v", res, err)
	}
	res.Body.Close()
	job := testenv.Job(b, st, jobID)

	// The run goes on: a progress event every 500 ms.
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			_ = st.SaveCheckpoint(ctx, store.Checkpoint{Job: job, Push: []store.ProgressEvent{{Timestamp: time.Now().UTC(), Type: "iteration",
				Data: map[string]any{"iteration": i, "maxIterations": 1000}}}})
		}
	}()

	for range streams {
		go func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", ts.URL+"/jobs/"+jobID+"/live", nil)
			req.SetBasicAuth(AdminUser, testPassword)
			res, err := hc.Do(req)
			if err != nil {
				return
			}
			defer res.Body.Close()
			_, _ = io.Copy(io.Discard, res.Body)
		}()
	}
	testenv.WaitFor(b, time.Minute, fmt.Sprintf("%d live streams open", streams), func() (bool, error) {
		return srv.liveStreams.Load() == int64(streams), nil
	})

	get := func() time.Duration {
		start := time.Now()
		req, _ := http.NewRequest("GET", ts.URL+"/api/jobs/"+jobID, nil)
		req.Header.Set("Authorization", "Bearer "+testToken)
		res, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || n < 280<<10 {
			b.Fatalf("GET job: %d, %d bytes", res.StatusCode, n)
		}
		return time.Since(start)
	}
	get() // warm
	readsBefore, start := srv.liveHub.storeReads(), time.Now()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		lat = append(lat, get())
	}
	b.StopTimer()
	elapsed := time.Since(start)
	if srv.liveStreams.Load() != int64(streams) {
		b.Fatalf("%d streams open at the end, want %d", srv.liveStreams.Load(), streams)
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(lat[len(lat)/2]), "p50-ms")
	b.ReportMetric(ms(lat[len(lat)*95/100]), "p95-ms")
	b.ReportMetric(float64(srv.liveHub.storeReads()-readsBefore)/elapsed.Seconds(), "live-reads/s")
	cancel()
}
