package gateway_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

// An Agent that answers with an HTTP error (an AGENT_ENDPOINT with a wrong
// path, a kernel that fails) has not registered the node: after RetryCount
// rounds the node reports it failed, keeps trying, and registers once the
// Agent answers. Unregistering from a failing Agent is an error that names
// its status, and leaves the state as it was.
func TestRegistrarAgentAnsweringErrors(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(newGate(), 1, 0)})
	var failing atomic.Bool
	failing.Store(true)
	var mu sync.Mutex
	var registered []string
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			http.Error(w, "internal error", http.StatusInternalServerError)
			return
		}
		if strings.HasSuffix(r.URL.Path, "/worker/register") {
			mu.Lock()
			registered = append(registered, r.FormValue("name")+" "+r.FormValue("endpoint"))
			mu.Unlock()
		}
		_, _ = w.Write([]byte("Success"))
	}))
	defer agent.Close()
	r, err := n.server.NewRegistrar(gateway.AgentConfig{
		URL:            agent.URL + "/v1.0/",
		Endpoints:      map[string][]string{"llm": {"http://node:8123/v1/completion"}},
		RetryCount:     2,
		InitialBackoff: time.Millisecond,
		MaxBackoff:     5 * time.Millisecond,
		Refresh:        time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	waitState := func(want string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for r.State() != want {
			if time.Now().After(deadline) {
				t.Fatalf("registrar %s, want %s", r.State(), want)
			}
			time.Sleep(time.Millisecond)
		}
	}
	waitState("failed")
	if v := metric(t, n.reg, "troupe_agent_registration_state", "state", "failed"); v != 1 {
		t.Errorf("troupe_agent_registration_state{state=failed} %v, want 1", v)
	}
	if v := metric(t, n.reg, "troupe_agent_register_attempts_total", "result", "error"); v < 2 {
		t.Errorf("%v failed rounds counted, want at least 2", v)
	}

	uctx, ucancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ucancel()
	if err := r.Unregister(uctx); err == nil || !strings.Contains(err.Error(), "HTTP 500") {
		t.Errorf("unregistering from a failing Agent: %v, want an error naming HTTP 500", err)
	}
	if s := r.State(); s != "failed" {
		t.Errorf("after a failed unregister the state is %s, want failed still", s)
	}

	failing.Store(false)
	waitState("registered")
	mu.Lock()
	defer mu.Unlock()
	if len(registered) != 1 || registered[0] != "llm http://node:8123/v1/completion" {
		t.Fatalf("registered %q, want the node's one endpoint under llm", registered)
	}
}
