package web

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/bmsview/insights/internal/testenv"
)

// expectNotReady checks /readyz answers 503 naming down (and not up) and
// carries none of the cause's text: no driver message, no address.
func expectNotReady(t *testing.T, s *Server, down, up string, secrets ...string) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	body := rec.Body.String()
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("status %d, want 503: %s", rec.Code, body)
	}
	r := &resp{code: rec.Code, body: rec.Body.Bytes()}
	m := r.json(t)
	msg, _ := m["error"].(string)
	if m["status"] != "unavailable" || !strings.Contains(msg, down) || strings.Contains(msg, up) {
		t.Fatalf("readyz %s, want %s named as down and %s not", body, down, up)
	}
	for _, leak := range append([]string{"dial", "refused", "tcp", "127.0.0.1", "timeout", "deadline", "server selection", "EOF"}, secrets...) {
		if strings.Contains(body, leak) {
			t.Fatalf("readyz shows internal error text %q: %s", leak, body)
		}
	}
	t.Logf("readyz: %s", strings.TrimSpace(body))
}

func TestReadyzNamesTheStoreDown(t *testing.T) {
	t.Run("redis refused", func(t *testing.T) {
		dead := testenv.FreeAddr(t) // connections are refused
		insp := asynq.NewInspector(asynq.RedisClientOpt{Addr: dead})
		t.Cleanup(func() { insp.Close() })
		s := New(Config{Store: testenv.Store(t), Inspector: insp, Logger: testenv.Logger()})
		t.Cleanup(func() { s.Close() })
		_, port, _ := net.SplitHostPort(dead)
		expectNotReady(t, s, "redis", "mongodb", dead, port)
	})
	t.Run("mongodb refused", func(t *testing.T) {
		st, p := proxiedStore(t)
		p.close() // connections drop, new ones are refused
		insp := asynq.NewInspector(testenv.Redis(t))
		t.Cleanup(func() { insp.Close() })
		s := New(Config{Store: st, Inspector: insp, Logger: testenv.Logger()})
		t.Cleanup(func() { s.Close() })
		_, port, _ := net.SplitHostPort(p.addr())
		expectNotReady(t, s, "mongodb", "redis", p.addr(), port)
	})
	// The service passes its own check (app.Ready) as Config.Ready, as
	// cmd/insights/serve.go does for both roles: its errors carry the
	// driver's text, which /readyz must not show either.
	t.Run("redis refused, the service's check", func(t *testing.T) {
		opt := testenv.Redis(t)
		p := newProxy(t, opt.Addr)
		a, _ := testenv.App(t, map[string]string{"REDIS_URL": fmt.Sprintf("redis://%s/%d", p.addr(), opt.DB)}, testenv.Logger())
		p.close()
		_, port, _ := net.SplitHostPort(p.addr())
		api := New(Config{Store: a.Store, Inspector: a.Inspector, Ready: a.Ready, Logger: testenv.Logger()})
		t.Cleanup(func() { api.Close() })
		expectNotReady(t, api, "redis", "mongodb", p.addr(), port)
		worker := New(Config{Ready: a.Ready, Logger: testenv.Logger()})
		t.Cleanup(func() { worker.Close() })
		expectNotReady(t, worker, "redis", "mongodb", p.addr(), port)
	})
}
