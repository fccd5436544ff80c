package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// RedisProxy stands between the service and a Redis and passes every
// connection through, or, while loading, answers every command as a Redis
// that is still loading its data after a restart does ("-LOADING Redis is
// loading the dataset in memory"): an outage the clients cannot tell from
// a real one.
type RedisProxy struct {
	// Addr is where the clients connect (host:port).
	Addr    string
	target  string
	ln      net.Listener
	loading atomic.Bool
	mu      sync.Mutex
	conns   map[net.Conn]bool // open client connections: true when loading
}

// NewRedisProxy starts a proxy to target (host:port); it stops when the
// test ends.
func NewRedisProxy(t testing.TB, target string) *RedisProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &RedisProxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	go p.serve()
	t.Cleanup(func() {
		_ = ln.Close()
		p.closeConns(func(bool) bool { return true })
	})
	return p
}

// SetLoading starts (true) or ends the outage. The connections open in the
// other mode are closed, so that the clients reconnect into this one.
func (p *RedisProxy) SetLoading(on bool) {
	p.loading.Store(on)
	p.closeConns(func(loading bool) bool { return loading != on })
}

func (p *RedisProxy) closeConns(which func(loading bool) bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, loading := range p.conns {
		if which(loading) {
			_ = c.Close()
			delete(p.conns, c)
		}
	}
}

func (p *RedisProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		loading := p.loading.Load()
		p.mu.Lock()
		p.conns[c] = loading
		p.mu.Unlock()
		if loading {
			go answerLoading(c)
		} else {
			go p.pass(c)
		}
	}
}

// pass copies bytes both ways until either side closes.
func (p *RedisProxy) pass(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

// answerLoading reads RESP commands (arrays of bulk strings, or inline
// lines) and answers each with Redis's LOADING error.
func answerLoading(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if strings.HasPrefix(line, "*") {
			n, err := strconv.Atoi(strings.TrimSpace(line[1:]))
			if err != nil {
				return
			}
			for range n {
				hdr, err := r.ReadString('\n')
				if err != nil || !strings.HasPrefix(hdr, "$") {
					return
				}
				size, err := strconv.Atoi(strings.TrimSpace(hdr[1:]))
				if err != nil {
					return
				}
				if _, err := io.CopyN(io.Discard, r, int64(size)+2); err != nil {
					return
				}
			}
		}
		if _, err := fmt.Fprint(c, "-LOADING Redis is loading the dataset in memory\r\n"); err != nil {
			return
		}
	}
}

// KillableRedis is a redis-server of the test's own that logs every write
// to its append-only file in a temp dir, so that the test can SIGKILL it
// and start it again, on the same port, with its data: a Redis crash.
type KillableRedis struct {
	// Addr is its host:port, the same across restarts.
	Addr string
	dir  string
	port int
	bins redisBins
	proc *redisProc
	n    int
}

// StartKillableRedis starts one; without redis-server the test is
// skipped. It is killed when the test ends.
func StartKillableRedis(t testing.TB) *KillableRedis {
	t.Helper()
	r := &KillableRedis{dir: t.TempDir(), port: freePort(t), bins: findRedisBins(t, false)}
	r.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port))
	r.Restart(t)
	return r
}

// Kill sends SIGKILL and waits for the process to end.
func (r *KillableRedis) Kill(t testing.TB) {
	t.Helper()
	if err := r.proc.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill redis-server: %v", err)
	}
	<-r.proc.done
}

// Restart starts it (again) and returns once it answers PING, its data
// loaded.
func (r *KillableRedis) Restart(t testing.TB) {
	t.Helper()
	r.n++
	conf := fmt.Sprintf(`port %d
bind 127.0.0.1
protected-mode no
daemonize no
dir %s
save ""
appendonly yes
appendfsync everysec
loglevel notice
`, r.port, r.dir)
	r.proc = startRedisProc(t, r.dir, "redis-"+strconv.Itoa(r.n), r.port, conf, []string{r.bins.server})
}
