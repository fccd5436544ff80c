package ops_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bmsview/insights/internal/ops"
	"github.com/bmsview/insights/internal/store"
	"github.com/bmsview/insights/internal/testenv"
	"github.com/bmsview/insights/tasks"
)

// bulkBenchJobs is how many failed jobs BenchmarkBulkRetry retries
// (BULK_BENCH_JOBS; the figure by default).
func bulkBenchJobs(b *testing.B) int {
	if v := os.Getenv("BULK_BENCH_JOBS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("BULK_BENCH_JOBS=%q", v)
		}
		return n
	}
	return 10000
}

// failedJobs writes n failed jobs as the worker leaves them: half with
// their task archived in Redis, half whose task asynq has trimmed. It
// returns the archived tasks' queue.
func failedJobs(b *testing.B, st *store.Store, redis asynq.RedisClientOpt, n int) {
	ctx := context.Background()
	client := asynq.NewClient(redis)
	defer client.Close()
	insp := asynq.NewInspector(redis)
	defer insp.Close()
	now := time.Now().UTC()
	docs := make([]any, 0, 1000)
	flush := func() {
		if len(docs) == 0 {
			return
		}
		if _, err := st.Database().Collection(store.JobsCollection).InsertMany(ctx, docs); err != nil {
			b.Fatal(err)
		}
		docs = docs[:0]
	}
	for i := range n {
		id, ev := fmt.Sprintf("bulk-%05d", i), fmt.Sprintf("ev-bulk-%05d", i)
		msg := "provider unavailable"
		docs = append(docs, bson.M{"_id": id, "id": id, "eventId": ev, "eventName": tasks.EventGenerateInsights, "status": "failed",
			"systemId": "sys-1", "analysisData": testenv.Snapshot(), "priority": 5, "queue": tasks.QueueDefault, "attempts": 4, "failures": 4,
			"steps": bson.M{}, "progress": bson.A{}, "createdAt": now, "updatedAt": now, "error": msg,
			"failure": bson.M{"kind": store.KindTransient, "step": tasks.StepProcessInsights, "message": msg, "at": now}})
		if len(docs) == cap(docs) {
			flush()
		}
		if i%2 == 0 {
			payload := fmt.Appendf(nil, `{"eventId":%q,"jobId":%q,"priority":5,"queue":"default"}`, ev, id)
			if _, err := client.Enqueue(asynq.NewTask(tasks.EventGenerateInsights, payload), asynq.TaskID(ev), asynq.Queue(tasks.QueueDefault)); err != nil {
				b.Fatal(err)
			}
		}
	}
	flush()
	if _, err := insp.ArchiveAllPendingTasks(tasks.QueueDefault); err != nil {
		b.Fatal(err)
	}
}

// heapPeak samples the heap in use until stop is called and returns its
// peak above the level at the start.
func heapPeak() (stop func() uint64) {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				var m runtime.MemStats
				runtime.ReadMemStats(&m)
				if m.HeapInuse > peak.Load() {
					peak.Store(m.HeapInuse)
				}
			}
		}
	}()
	return func() uint64 {
		close(done)
		if p := peak.Load(); p > base {
			return p - base
		}
		return 0
	}
}

// BenchmarkBulkRetry is an operator's bulk retry of 10,000 failed jobs on
// the embedded store (half still in asynq's archive, half trimmed from it),
// beside raw asynq's "run all archived" of the archived half, which resets
// no budget and knows no jobs: the cost of acting on jobs rather than
// tasks. Run it with -benchtime=1x; it reports jobs/s and the peak heap.
//
//	REDIS_URL=redis://127.0.0.1:6379/0 go test ./internal/ops -run '^$' -bench BulkRetry -benchtime=1x
func BenchmarkBulkRetry(b *testing.B) {
	n := bulkBenchJobs(b)
	b.Run("ours", func(b *testing.B) {
		benchBulk(b, n, func(st *store.Store, redis asynq.RedisClientOpt, insp *asynq.Inspector) (int, error) {
			client := tasks.NewClient(redis, tasks.ClientConfig{Jobs: st})
			defer client.Close()
			o := ops.New(ops.Config{Store: st, Inspector: insp, Client: client, MaxRetries: 3, Logger: testenv.Logger()})
			defer o.Close()
			op, done, err := o.StartBulk(context.Background(), ops.BulkRequest{Action: ops.BulkRetry,
				Filter: store.JobFilter{Status: tasks.StatusFailed, FailureKind: store.KindTransient}})
			if err != nil {
				return 0, err
			}
			<-done
			if op, _, err = o.GetBulk(context.Background(), op.ID, 0); err != nil || op.Done != n {
				return 0, fmt.Errorf("bulk retry: %+v %v, want %d done", op, err, n)
			}
			return op.Done, nil
		})
	})
	b.Run("asynq-run-all-archived", func(b *testing.B) {
		benchBulk(b, n, func(_ *store.Store, _ asynq.RedisClientOpt, insp *asynq.Inspector) (int, error) {
			moved, err := insp.RunAllArchivedTasks(tasks.QueueDefault)
			if err == nil && moved != (n+1)/2 {
				err = fmt.Errorf("run all archived moved %d, want %d", moved, (n+1)/2)
			}
			return moved, err
		})
	})
}

// benchBulk writes n failed jobs for each round, then times act on them
// and reports the jobs it acted on per second and the peak heap.
func benchBulk(b *testing.B, n int, act func(*store.Store, asynq.RedisClientOpt, *asynq.Inspector) (int, error)) {
	for range b.N {
		b.StopTimer()
		st := testenv.Store(b)
		redis := testenv.RedisFor(b, "bench-bulk")
		failedJobs(b, st, redis, n)
		insp := asynq.NewInspector(redis)
		peak := heapPeak()
		b.StartTimer()
		start := time.Now()
		acted, err := act(st, redis, insp)
		elapsed := time.Since(start)
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(peak())/(1<<20), "peak-heap-MiB")
		b.ReportMetric(float64(acted)/elapsed.Seconds(), "jobs/s")
		insp.Close()
	}
}
