package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/actors/chaos"
	"github.com/troupe-llm/troupe/gateway"
)

// A layout whose model keeps failing is taken out of rotation: its breaker
// opens after five failed chats, chats are then refused at once with a 503
// and the cool-down left as Retry-After (on the Agent API and the OpenAI
// API, in its error form), the first chat after the cool-down is let
// through as a probe, and the model having recovered, the probe closes the
// breaker. Every chat is answered once, and /metrics and the status say
// what happened.
func TestBreakerTakesAFailingLayoutOutOfRotation(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Errors and panics: the panics restart the model (five within the
	// supervisor's budget), the errors are an upstream's.
	model, err := chaos.New(chaos.Args{Content: "fine", Delay: "0s", SlowDelay: "0s", Error: 0.6, Panic: 0.4, Seed: 3, WhileFile: broken})
	if err != nil {
		t.Fatal(err)
	}
	const cooldown = 2 * time.Second
	n := startNode(t, actors.PipelineSpec{Model: modelOf(model, 4, 4), Breaker: actors.BreakerConfig{Cooldown: cooldown}})
	ctx := ctxFor(t)
	status := func(t *testing.T, resp *http.Response) (int, string) {
		t.Helper()
		body := readAll(t, resp)
		return resp.StatusCode, body
	}

	for i := 0; i < 5; i++ {
		code, body := status(t, n.post(ctx, "/v1/completion", form(userInput("hi"))))
		if code < 500 || !strings.HasPrefix(body, "Error: ") {
			t.Fatalf("chat %d of the broken model: %d %q, want a 5xx with a short error", i, code, body)
		}
	}
	waitFor(t, func() bool { return n.layout.Breaker.Status().State == actors.BreakerState_BREAKER_OPEN }, "the breaker to open")
	opened := time.Now()

	resp := n.post(ctx, "/v1/completion", form(userInput("hi")))
	code, body := status(t, resp)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "llm keeps failing and is out of rotation") {
		t.Fatalf("a chat while open: %d %q, want 503 saying why", code, body)
	}
	retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	if left := cooldown - time.Since(opened); err != nil || retry < 1 || time.Duration(retry)*time.Second > cooldown || time.Duration(retry)*time.Second < left {
		t.Fatalf("Retry-After %q, want the cool-down left rounded up (at least %v)", resp.Header.Get("Retry-After"), left)
	}

	resp = n.postJSON(ctx, "/v1/chat/completions", `{"model":"llm","messages":[{"role":"user","content":"hi"}]}`, "")
	code, body = status(t, resp)
	var oe struct {
		Error struct{ Message, Type string } `json:"error"`
	}
	if code != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		json.Unmarshal([]byte(body), &oe) != nil || !strings.Contains(oe.Error.Message, "out of rotation") {
		t.Fatalf("an OpenAI chat while open: %d %q (Retry-After %q), want 503 with an OpenAI error", code, body, resp.Header.Get("Retry-After"))
	}

	metrics := scrape(t, n)
	for _, want := range []string{
		`troupe_layout_breaker_state{layout="llm"} 2`,
		`troupe_layout_breaker_opens_total{layout="llm"} 1`,
		`troupe_layout_breaker_refused_total{layout="llm"} 2`,
		`troupe_chats_total{layout="llm",outcome="rejected"} 2`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	st := n.server.Status(context.Background()).Layouts[0].Breaker
	if st.State != "open" || st.Reason != "5 chats in a row failed" || st.Opens != 1 || st.Refused != 2 || st.Until.IsZero() {
		t.Fatalf("status %+v, want open for 5 failures in a row", st)
	}

	// The model recovers; after the cool-down the next chat probes it.
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return n.layout.Breaker.Status().State == actors.BreakerState_BREAKER_HALF_OPEN }, "the cool-down to end")
	if waited := time.Since(opened); waited < cooldown-100*time.Millisecond {
		t.Fatalf("half-open after %v, before the cool-down of %v", waited, cooldown)
	}
	code, body = status(t, n.post(ctx, "/v1/completion", form(userInput("hi"))))
	if code != http.StatusOK || body != "fine" {
		t.Fatalf("the probe: %d %q", code, body)
	}
	waitFor(t, func() bool { return n.layout.Breaker.Status().State == actors.BreakerState_BREAKER_CLOSED }, "the probe to close the breaker")
	for i := 0; i < 3; i++ {
		if code, body := status(t, n.post(ctx, "/v1/completion", form(userInput("hi")))); code != http.StatusOK || body != "fine" {
			t.Fatalf("back in rotation, chat %d: %d %q", i, code, body)
		}
	}
	if m := scrape(t, n); !strings.Contains(m, `troupe_layout_breaker_state{layout="llm"} 0`) {
		t.Error("the breaker's gauge is not back to 0")
	}
	if st := n.server.Status(context.Background()).Layouts[0].Breaker; st.State != "closed" {
		t.Fatalf("status %+v, want closed", st)
	}
}

// A chat its client gives up on says nothing about the model: a breaker
// whose layout only sees cancelled chats stays closed.
func TestBreakerIgnoresClientsThatLeave(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 4), Breaker: actors.BreakerConfig{Failures: 2}})
	for i := 0; i < 4; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		resp := n.post(ctx, "/v1/completion", form(userInput("x")))
		<-g.started
		cancel()
		resp.Body.Close()
		if err := <-g.ended; err == nil {
			t.Fatal("the model was not cancelled")
		}
	}
	waitFor(t, func() bool {
		return strings.Contains(scrape(t, n), `troupe_chats_total{layout="llm",outcome="cancelled"} 4`)
	}, "four cancelled chats")
	if s := n.layout.Breaker.Status(); s.State != actors.BreakerState_BREAKER_CLOSED || s.FailuresInRow != 0 {
		t.Fatalf("breaker %+v after four cancelled chats, want closed with no failure", s)
	}
}

func scrape(t *testing.T, n *node) string {
	t.Helper()
	resp, err := http.Get(n.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	return readAll(t, resp)
}

// A chat its layout's fallback rescues is a success of the layout: a
// first child that fails every chat does not open the breaker of a
// layout whose next child answers.
func TestBreakerCountsRescuedChatsAsSuccesses(t *testing.T) {
	failing, err := chaos.New(chaos.Args{Content: "never", Delay: "0s", SlowDelay: "0s", Error: 1})
	if err != nil {
		t.Fatal(err)
	}
	g := newGate()
	close(g.release) // every chat answers at once
	spec := actors.LayoutSpec{Name: "llm", Breaker: actors.BreakerConfig{Failures: 2},
		Root: &actors.FallbackNode{Path: "fallback", Children: []actors.Node{
			&actors.ModelNode{Path: "fallback/0/chaos", New: func() (actors.Model, error) { return failing, nil }, Capacity: 4, Queue: 4},
			&actors.ModelNode{Path: "fallback/1/gate", New: func() (actors.Model, error) { return g, nil }, Capacity: 4, Queue: 4},
		}}}
	n := startTreeNode(t, spec)
	for i := 0; i < 6; i++ {
		if body := readAll(t, n.post(ctxFor(t), "/v1/completion", form(userInput("x")))); body != "x!" {
			t.Fatalf("chat %d: %q, want the fallback's answer", i, body)
		}
		<-g.started
		<-g.ended
	}
	waitFor(t, func() bool {
		return strings.Contains(scrape(t, n), `troupe_chats_total{layout="llm",outcome="completed"} 6`)
	}, "six completed chats")
	if s := n.layout.Breaker.Status(); s.State != actors.BreakerState_BREAKER_CLOSED || s.FailuresInRow != 0 {
		t.Fatalf("breaker %+v after six rescued chats, want closed with no failure", s)
	}
}

// startTreeNode starts a node serving one layout of any shape.
func startTreeNode(t *testing.T, spec actors.LayoutSpec) *node {
	t.Helper()
	system := actor.NewActorSystem()
	t.Cleanup(system.Shutdown)
	reg := prometheus.NewRegistry()
	l, err := actors.StartLayout(system, spec, actors.NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopLayout(t, l) })
	s, err := gateway.New(gateway.Config{Layouts: map[string]*actors.Layout{spec.Name: l}, Gatherer: reg, Registerer: reg}, system)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(func() {
		gateway.WaitHandedBack(t)
		srv.Close()
	})
	return &node{t: t, server: s, http: srv, reg: reg, layout: l}
}
