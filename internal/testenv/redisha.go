package testenv

// Real Redis topologies for tests: a master watched by Redis Sentinel, and a
// three-node Redis Cluster. They run Debian's redis-server, redis-sentinel
// and redis-cli on free loopback ports with temp dirs, and are killed when
// the test ends. Without the binaries the test is skipped (CI installs the
// redis-server, redis-tools and redis-sentinel packages).

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the master name that StartSentinel's sentinel monitors.
const SentinelMaster = "insights-master"

// redisStartTimeout bounds how long a topology may take to come up.
const redisStartTimeout = 30 * time.Second

// redisBins are the paths of the binaries the topologies need.
type redisBins struct {
	server   string
	cli      string
	sentinel []string // the command that runs a sentinel, before its config file
}

// lookBin finds a binary in PATH or in the usual system directories (CI's
// PATH may lack /usr/sbin).
func lookBin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

func findRedisBins(t testing.TB, needCLI bool) redisBins {
	t.Helper()
	b := redisBins{server: lookBin("redis-server"), cli: lookBin("redis-cli")}
	if b.server == "" {
		t.Skip("redis-server is not installed (Debian: apt-get install redis-server redis-tools redis-sentinel); .ci/run installs it")
	}
	if needCLI && b.cli == "" {
		t.Skip("redis-cli is not installed (Debian: apt-get install redis-tools); .ci/run installs it")
	}
	if s := lookBin("redis-sentinel"); s != "" {
		b.sentinel = []string{s}
	} else {
		// redis-sentinel is redis-server started in sentinel mode.
		b.sentinel = []string{b.server, "--sentinel"}
	}
	return b
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// redisProc is one redis-server or sentinel process.
type redisProc struct {
	addr string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // the process's exit, once done is closed
}

func (p *redisProc) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// startRedisProc writes conf to dir/name.conf, starts argv (the config file
// appended, then extra), and waits until it answers PING. It is killed when
// the test ends.
func startRedisProc(t testing.TB, dir, name string, port int, conf string, argv []string) *redisProc {
	t.Helper()
	confPath := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &redisProc{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{}, argv[1:]...)
	// redis-server takes the config file as its first argument, options after.
	args = append([]string{confPath}, args...)
	p.cmd = exec.Command(argv[0], args...)
	p.cmd.Dir = dir
	p.cmd.Stdout = logf
	p.cmd.Stderr = logf
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", argv[0], err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})

	c := redis.NewClient(&redis.Options{Addr: p.addr, DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(redisStartTimeout)
	for {
		select {
		case <-p.done:
			t.Fatalf("%s on %s exited: %v\n%s", name, p.addr, p.err, p.logTail())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s on %s did not answer PING within %v: %v\n%s", name, p.addr, redisStartTimeout, err, p.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// baseConf is what every node shares: loopback only, no persistence, files
// in its own dir.
func baseConf(dir string, port int) string {
	return fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
daemonize no
dir %s
save ""
appendonly no
loglevel notice
`, port, dir)
}

// waitRedis polls cond with a deadline; on time-out it fails with the last
// error and what the processes logged.
func waitRedis(t testing.TB, what string, procs []*redisProc, cond func(ctx context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(redisStartTimeout)
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err = cond(ctx)
		cancel()
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	var logs strings.Builder
	for _, p := range procs {
		fmt.Fprintf(&logs, "--- %s (%s)\n%s\n", p.addr, p.log, p.logTail())
	}
	t.Fatalf("timed out after %v waiting for %s: %v\n%s", redisStartTimeout, what, err, logs.String())
}

// StartSentinel starts a Redis master and one Redis Sentinel that monitors
// it (quorum 1), on free loopback ports, and returns once the sentinel
// reports that master. It returns the master name and the sentinel's
// address, as asynq.RedisFailoverClientOpt and
// redis-sentinel://host:port?master=name take them. Both processes stop when
// the test ends; without redis-server the test is skipped.
func StartSentinel(t testing.TB) (masterName string, sentinelAddrs []string) {
	t.Helper()
	bins := findRedisBins(t, false)
	dir := t.TempDir()

	mdir := filepath.Join(dir, "master")
	sdir := filepath.Join(dir, "sentinel")
	for _, d := range []string{mdir, sdir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	mport := freePort(t)
	master := startRedisProc(t, mdir, "master", mport, baseConf(mdir, mport), []string{bins.server})

	sport := freePort(t)
	// The sentinel rewrites its config file, so it lives in its own dir.
	sconf := fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
daemonize no
dir %s
sentinel monitor %s 127.0.0.1 %d 1
sentinel down-after-milliseconds %s 5000
sentinel failover-timeout %s 15000
sentinel parallel-syncs %s 1
`, sport, sdir, SentinelMaster, mport, SentinelMaster, SentinelMaster, SentinelMaster)
	sentinel := startRedisProc(t, sdir, "sentinel", sport, sconf, bins.sentinel)

	sc := redis.NewSentinelClient(&redis.Options{Addr: sentinel.addr, DialTimeout: time.Second})
	defer sc.Close()
	waitRedis(t, "the sentinel to report master "+SentinelMaster, []*redisProc{master, sentinel}, func(ctx context.Context) error {
		addr, err := sc.GetMasterAddrByName(ctx, SentinelMaster).Result()
		if err != nil {
			return err
		}
		if len(addr) != 2 || net.JoinHostPort(addr[0], addr[1]) != master.addr {
			return fmt.Errorf("sentinel reports master at %v, want %s", addr, master.addr)
		}
		info, err := sc.Master(ctx, SentinelMaster).Result()
		if err != nil {
			return err
		}
		if info["flags"] != "master" {
			return fmt.Errorf("sentinel flags for the master: %q", info["flags"])
		}
		return nil
	})
	return SentinelMaster, []string{sentinel.addr}
}

// StartCluster starts a three-node Redis Cluster (three masters, no
// replicas) on free loopback ports, creates it with
// `redis-cli --cluster create`, and returns the nodes' addresses once every
// node says cluster_state:ok and knows the others. The nodes stop when the
// test ends; without redis-server or redis-cli the test is skipped.
func StartCluster(t testing.TB) []string {
	t.Helper()
	bins := findRedisBins(t, true)
	dir := t.TempDir()

	const nodes = 3
	procs := make([]*redisProc, 0, nodes)
	addrs := make([]string, 0, nodes)
	for i := range nodes {
		ndir := filepath.Join(dir, fmt.Sprintf("node%d", i))
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			t.Fatal(err)
		}
		port, bus := freePort(t), freePort(t)
		for bus == port {
			bus = freePort(t)
		}
		conf := baseConf(ndir, port) + fmt.Sprintf(`cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
cluster-port %d
cluster-require-full-coverage yes
`, bus)
		p := startRedisProc(t, ndir, fmt.Sprintf("node%d", i), port, conf, []string{bins.server})
		procs = append(procs, p)
		addrs = append(addrs, p.addr)
	}

	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	ctx, cancel := context.WithTimeout(context.Background(), redisStartTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}

	clients := make([]*redis.Client, len(addrs))
	for i, a := range addrs {
		clients[i] = redis.NewClient(&redis.Options{Addr: a, DialTimeout: time.Second})
		defer clients[i].Close()
	}
	waitRedis(t, "cluster_state:ok on every node", procs, func(ctx context.Context) error {
		for i, c := range clients {
			info, err := c.ClusterInfo(ctx).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", addrs[i], err)
			}
			fields := parseInfo(info)
			if fields["cluster_state"] != "ok" {
				return fmt.Errorf("%s: cluster_state:%s", addrs[i], fields["cluster_state"])
			}
			if fields["cluster_known_nodes"] != strconv.Itoa(nodes) {
				return fmt.Errorf("%s: cluster_known_nodes:%s", addrs[i], fields["cluster_known_nodes"])
			}
			if fields["cluster_slots_ok"] != "16384" {
				return fmt.Errorf("%s: cluster_slots_ok:%s", addrs[i], fields["cluster_slots_ok"])
			}
		}
		return nil
	})

	// Every node must also agree on who serves every slot, or a client's
	// first command may be bounced between nodes.
	waitRedis(t, "the nodes to agree on the slot map", procs, func(ctx context.Context) error {
		var first string
		for i, c := range clients {
			slots, err := c.ClusterSlots(ctx).Result()
			if err != nil {
				return fmt.Errorf("%s: %w", addrs[i], err)
			}
			sort.Slice(slots, func(a, b int) bool { return slots[a].Start < slots[b].Start })
			var b strings.Builder
			covered := 0
			for _, s := range slots {
				if len(s.Nodes) == 0 {
					return fmt.Errorf("%s: slots %d-%d have no node", addrs[i], s.Start, s.End)
				}
				covered += int(s.End - s.Start + 1)
				fmt.Fprintf(&b, "%d-%d=%s;", s.Start, s.End, s.Nodes[0].ID)
			}
			if covered != 16384 {
				return fmt.Errorf("%s: %d of 16384 slots covered", addrs[i], covered)
			}
			if i == 0 {
				first = b.String()
			} else if b.String() != first {
				return fmt.Errorf("%s disagrees with %s on the slot map", addrs[i], addrs[0])
			}
		}
		return nil
	})
	return addrs
}

// parseInfo reads "key:value" lines (CLUSTER INFO, INFO).
func parseInfo(s string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			out[k] = v
		}
	}
	return out
}
