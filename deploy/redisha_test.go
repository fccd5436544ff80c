package deploy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/bmsview/insights/internal/testenv"
)

const (
	haTaskType = "deploy:ha-probe"
	haTasks    = 20
	haWithin   = 60 * time.Second
)

// runAsynqThrough enqueues haTasks tasks through opt and has a server
// process them: most at once, two scheduled a second ahead (asynq's
// forwarder), and one that fails its first attempt (the retry set). It
// waits, with a deadline, until each ran to success exactly once and the
// Inspector sees the queue drained. Each run has a queue of its own.
func runAsynqThrough(t *testing.T, opt asynq.RedisConnOpt, queue string) {
	t.Helper()
	var (
		mu        sync.Mutex
		succeeded = map[string]int{}
		attempts  = map[string]int{}
	)
	mux := asynq.NewServeMux()
	mux.HandleFunc(haTaskType, func(ctx context.Context, task *asynq.Task) error {
		id := string(task.Payload())
		mu.Lock()
		defer mu.Unlock()
		attempts[id]++
		if id == "task-flaky" && attempts[id] == 1 {
			return errors.New("first attempt fails on purpose")
		}
		succeeded[id]++
		return nil
	})
	srv := asynq.NewServer(opt, asynq.Config{
		Concurrency:              4,
		Queues:                   map[string]int{queue: 1},
		DelayedTaskCheckInterval: time.Second,
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return time.Second },
		LogLevel:                 asynq.ErrorLevel,
		ShutdownTimeout:          5 * time.Second,
	})
	if err := srv.Start(mux); err != nil {
		t.Fatalf("asynq server: %v", err)
	}
	t.Cleanup(srv.Shutdown)

	client := asynq.NewClient(opt)
	defer client.Close()
	var want []string
	for i := range haTasks {
		id := fmt.Sprintf("task-%02d", i)
		opts := []asynq.Option{asynq.TaskID(id), asynq.Queue(queue), asynq.MaxRetry(3)}
		switch i {
		case 0, 1:
			opts = append(opts, asynq.ProcessIn(time.Second))
		case 2:
			id = "task-flaky"
			opts[0] = asynq.TaskID(id)
		}
		if _, err := client.Enqueue(asynq.NewTask(haTaskType, []byte(id)), opts...); err != nil {
			t.Fatalf("enqueue %s: %v", id, err)
		}
		want = append(want, id)
	}

	insp := asynq.NewInspector(opt)
	defer insp.Close()
	testenv.WaitFor(t, haWithin, fmt.Sprintf("%d tasks processed", haTasks), func() (bool, error) {
		mu.Lock()
		n := len(succeeded)
		mu.Unlock()
		if n < haTasks {
			return false, fmt.Errorf("%d of %d succeeded", n, haTasks)
		}
		q, err := insp.GetQueueInfo(queue)
		if err != nil {
			return false, err
		}
		if q.Size != 0 || q.Processed < haTasks || q.Failed != 1 {
			return false, fmt.Errorf("queue not drained: size %d, processed %d, failed %d", q.Size, q.Processed, q.Failed)
		}
		return true, nil
	})

	mu.Lock()
	defer mu.Unlock()
	for _, id := range want {
		if succeeded[id] != 1 {
			t.Errorf("%s succeeded %d times, want 1", id, succeeded[id])
		}
	}
	if attempts["task-flaky"] != 2 {
		t.Errorf("the flaky task ran %d times, want 2 (fail, retry)", attempts["task-flaky"])
	}
	if len(succeeded) != haTasks {
		ids := make([]string, 0, len(succeeded))
		for id := range succeeded {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		t.Errorf("succeeded %v, want %v", ids, want)
	}
}

// TestAsynqThroughSentinel: asynq finds the master through Redis Sentinel,
// with the options an operator gets from REDIS_URL=redis-sentinel://...
func TestAsynqThroughSentinel(t *testing.T) {
	master, sentinels := testenv.StartSentinel(t)

	uri := "redis-sentinel://" + strings.Join(sentinels, ",") + "?master=" + master
	parsed, err := asynq.ParseRedisURI(uri)
	if err != nil {
		t.Fatalf("ParseRedisURI(%q): %v", uri, err)
	}
	fo, ok := parsed.(asynq.RedisFailoverClientOpt)
	if !ok {
		t.Fatalf("ParseRedisURI(%q) = %T, want asynq.RedisFailoverClientOpt", uri, parsed)
	}
	if fo.MasterName != master || !slices.Equal(fo.SentinelAddrs, sentinels) {
		t.Fatalf("ParseRedisURI(%q) = %+v, want master %q sentinels %v", uri, fo, master, sentinels)
	}

	// The connection goes through the sentinel to the master it reports.
	rc, ok := fo.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		t.Fatalf("MakeRedisClient: %T", fo.MakeRedisClient())
	}
	defer rc.Close()
	role, err := rc.Do(context.Background(), "ROLE").Slice()
	if err != nil || len(role) == 0 || role[0] != "master" {
		t.Fatalf("ROLE through the sentinel = %v, %v; want master", role, err)
	}

	runAsynqThrough(t, asynq.RedisFailoverClientOpt{MasterName: master, SentinelAddrs: sentinels}, "ha-sentinel")
	// And once more with what the URI gave, as the service uses it.
	t.Run("from REDIS_URL", func(t *testing.T) {
		runAsynqThrough(t, parsed, "ha-sentinel-uri")
	})
}

// TestAsynqThroughCluster: asynq on a three-node Redis Cluster, as the
// service runs with REDIS_CLUSTER_ADDRS.
func TestAsynqThroughCluster(t *testing.T) {
	addrs := testenv.StartCluster(t)
	if len(addrs) != 3 {
		t.Fatalf("StartCluster returned %v", addrs)
	}
	runAsynqThrough(t, asynq.RedisClusterClientOpt{Addrs: addrs}, "ha-cluster")
}
