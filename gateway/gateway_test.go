package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

// gate is a model whose chats wait for the test: each chat emits its input,
// then blocks until released (or cancelled), then emits "!".
type gate struct {
	started chan string
	release chan struct{}
	ended   chan error
}

func newGate() *gate {
	return &gate{started: make(chan string, 64), release: make(chan struct{}), ended: make(chan error, 64)}
}

func (g *gate) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	in := actors.LastUserMessage(req.History)
	if err := emit(in); err != nil {
		return err
	}
	g.started <- in
	select {
	case <-g.release:
	case <-ctx.Done():
		g.ended <- ctx.Err()
		return ctx.Err()
	}
	g.ended <- nil
	return emit("!")
}

type node struct {
	t      *testing.T
	server *gateway.Server
	http   *httptest.Server
	reg    *prometheus.Registry
	layout *actors.Layout
	// hijacked receives the connections the gateway took over from the
	// HTTP server.
	hijacked chan net.Conn
}

func startNode(t *testing.T, spec actors.PipelineSpec) *node {
	t.Helper()
	return startNodeWith(t, spec, nil)
}

// startNodeWith starts a node whose gateway configuration configure may
// change first.
func startNodeWith(t *testing.T, spec actors.PipelineSpec, configure func(*gateway.Config)) *node {
	t.Helper()
	system := actor.NewActorSystem()
	t.Cleanup(system.Shutdown)
	if spec.Name == "" {
		spec.Name = "llm"
	}
	if spec.Model.Path == "" {
		spec.Model.Path = "model/test"
	}
	reg := prometheus.NewRegistry()
	l, err := actors.StartPipeline(system, spec, actors.NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopLayout(t, l) })
	cfg := gateway.Config{
		Layouts:    map[string]*actors.Layout{spec.Name: l},
		Gatherer:   reg,
		Registerer: reg,
	}
	if configure != nil {
		configure(&cfg)
	}
	s, err := gateway.New(cfg, system)
	if err != nil {
		t.Fatal(err)
	}
	// The node's own server and listener, with its limits, as app runs it.
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = s.HTTPServer()
	srv.Listener = s.Listen(srv.Listener)
	hijacked := make(chan net.Conn, 64)
	connState := srv.Config.ConnState
	srv.Config.ConnState = func(c net.Conn, state http.ConnState) {
		connState(c, state)
		if state == http.StateHijacked {
			select {
			case hijacked <- c:
			default:
			}
		}
	}
	srv.Start()
	t.Cleanup(func() {
		gateway.WaitHandedBack(t)
		srv.Close()
	})
	return &node{t: t, server: s, http: srv, reg: reg, layout: l, hijacked: hijacked}
}

func modelOf(m actors.Model, capacity, queue int) actors.ModelSpec {
	return actors.ModelSpec{New: func() (actors.Model, error) { return m, nil }, Capacity: capacity, Queue: queue}
}

func form(input string) url.Values {
	return url.Values{"input": {input}, "name": {"llm"}, "history_id": {"1"}, "user_id": {"2"}}
}

func userInput(text string) string {
	return `[{"msg":` + quote(text) + `,"isbot":false}]`
}

func quote(s string) string {
	return `"` + strings.NewReplacer(`"`, `\"`, `\`, `\\`).Replace(s) + `"`
}

// post starts a chat and returns the response; the body is the caller's.
func (n *node) post(ctx context.Context, path string, v url.Values) *http.Response {
	n.t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.http.URL+path, strings.NewReader(v.Encode()))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// The first chunk reaches the client while the model is still generating.
func TestChatStreamsChunksAsTheyCome(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)})
	resp := n.post(ctxFor(t), "/v1/completion", form(userInput("hello")))
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	r := bufio.NewReader(resp.Body)
	first := make([]byte, 5)
	if _, err := io.ReadFull(r, first); err != nil || string(first) != "hello" {
		t.Fatalf("first chunk %q, %v", first, err)
	}
	close(g.release) // only now may the model finish
	rest, _ := io.ReadAll(r)
	resp.Body.Close()
	if string(rest) != "!" {
		t.Fatalf("rest %q", rest)
	}
	if got := testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "completed")); got != 1 {
		t.Fatalf("completed chats %v", got)
	}
}

func TestBadRequests(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(newGate(), 2, 0)})
	ctx := ctxFor(t)
	tests := []struct {
		name   string
		path   string
		values url.Values
		status int
		body   string
	}{
		{"no input", "/v1/completion", url.Values{"name": {"llm"}}, 400, "The chat has no input"},
		{"malformed", "/v1/completion", form("[{"), 400, "not a JSON list"},
		{"empty history", "/v1/completion", form("[]"), 400, "The chat history is empty."},
		{"empty last", "/v1/completion", form(userInput(" ")), 400, "The last message of the chat is empty."},
		{"bad modelfile", "/v1/completion", url.Values{"input": {userInput("x")}, "modelfile": {"{"}}, 400, "Modelfile must be"},
		{"slot past capacity", "/v1/completion/2", form(userInput("x")), 404, ""},
		{"slot not a number", "/v1/completion/x", form(userInput("x")), 404, ""},
		{"too large", "/v1/completion", form(strings.Repeat("x", 9<<20)), 413, "too large: at most 8 MiB"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := n.post(ctx, tt.path, tt.values)
			body := readAll(t, resp)
			if resp.StatusCode != tt.status || !strings.Contains(body, tt.body) {
				t.Fatalf("got %d %q, want %d containing %q", resp.StatusCode, body, tt.status, tt.body)
			}
			if len(body) > 200 {
				t.Fatalf("error body is not short: %d bytes", len(body))
			}
		})
	}
}

func TestMultipartForm(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
		return emit(actors.LastUserMessage(req.History))
	}), 2, 0)})
	pr, pw := io.Pipe()
	mw := newMultipart(pw, map[string]string{"input": userInput("multi"), "name": "llm"})
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodPost, n.http.URL+"/v1/completion", pr)
	req.Header.Set("Content-Type", mw)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, resp); resp.StatusCode != 200 || body != "multi" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
}

// Past capacity and queue, chats are refused at once with 429.
func TestOverloadIsRejected(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 1, 1)})
	ctx := ctxFor(t)
	var wg sync.WaitGroup
	bodies := make(chan string, 2)
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bodies <- readAll(t, n.post(ctx, "/v1/completion", form(userInput("a"))))
		}()
		if i == 0 {
			<-g.started
		}
	}
	waitFor(t, func() bool { _, q := n.layout.Admission.Load(); return q == 1 }, "second chat queued")
	resp := n.post(ctx, "/v1/completion", form(userInput("b")))
	if body := readAll(t, resp); resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(body, "Too many chats") {
		t.Fatalf("got %d %q, want 429", resp.StatusCode, body)
	}
	// No chat has ended since the node filled: how fast it drains is not
	// known yet, and the client is told the longest wait.
	if got := resp.Header.Get("Retry-After"); got != "60" {
		t.Fatalf("Retry-After %q, want 60", got)
	}
	close(g.release)
	wg.Wait()
	close(bodies)
	for b := range bodies {
		if b != "a!" {
			t.Fatalf("queued chat answered %q", b)
		}
	}
}

// GET {endpoint}/abort stops the chat of that endpoint slot and no other.
func TestAbortStopsTheSlotsChat(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 0)})
	ctx := ctxFor(t)
	base := n.post(ctx, "/v1/completion", form(userInput("base")))
	<-g.started
	slot := n.post(ctx, "/v1/completion/3", form(userInput("slot")))
	<-g.started

	get := func(path string) string {
		resp, err := http.Get(n.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		return readAll(t, resp)
	}
	if got := get("/v1/completion/3/abort"); !strings.Contains(got, `"msg":"Aborted."`) {
		t.Fatalf("abort answered %q", got)
	}
	if err := <-g.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("aborted model ended with %v", err)
	}
	if body := readAll(t, slot); body != "slot" {
		t.Fatalf("aborted chat body %q", body)
	}
	if got := get("/v1/completion/abort"); !strings.Contains(got, "Aborted.") {
		t.Fatalf("abort answered %q", got)
	}
	if body := readAll(t, base); body != "base" {
		t.Fatalf("aborted chat body %q", body)
	}
	if got := get("/v1/completion/abort"); !strings.Contains(got, "No chat to abort.") {
		t.Fatalf("abort with nothing running answered %q", got)
	}
}

// A client that goes away cancels its chat down to the model.
func TestClientDisconnectCancelsModel(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 0)})
	ctx, cancel := context.WithCancel(ctxFor(t))
	resp := n.post(ctx, "/v1/completion", form(userInput("x")))
	<-g.started
	cancel()
	resp.Body.Close()
	select {
	case err := <-g.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("model ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("model was not cancelled")
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "cancelled")) == 1
	}, "cancelled chat counted")
}

// Draining lets chats in flight finish and refuses new ones with 503.
func TestDrainFinishesChatsInFlight(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 0)})
	ctx := ctxFor(t)
	inflight := n.post(ctx, "/v1/completion", form(userInput("x")))
	<-g.started
	drained := make(chan error, 1)
	go func() { drained <- n.server.Drain(ctx) }()
	waitFor(t, func() bool {
		resp := n.post(ctx, "/v1/completion", form(userInput("y")))
		body := readAll(t, resp)
		return resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(body, "shutting down")
	}, "new chats refused while draining")
	select {
	case err := <-drained:
		t.Fatalf("drain returned %v with a chat in flight", err)
	default:
	}
	close(g.release)
	if body := readAll(t, inflight); body != "x!" {
		t.Fatalf("in-flight chat answered %q", body)
	}
	if err := <-drained; err != nil {
		t.Fatalf("drain: %v", err)
	}
}

// When the drain deadline passes, chats still running are cancelled and
// their clients get a short error rather than a hang.
func TestDrainDeadlineCancelsChats(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 0)})
	resp := n.post(ctxFor(t), "/v1/completion", form(userInput("x")))
	<-g.started
	dctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := n.server.Drain(dctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("drain: %v", err)
	}
	if body := readAll(t, resp); !strings.Contains(body, "shutting down") {
		t.Fatalf("cancelled chat answered %q", body)
	}
}

// A chat whose layout dies under it (an egress filter past its restart
// budget) ends with an error, even though the actors that held it are gone.
func TestChatFailsWhenLayoutDies(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{
		Model: modelOf(actors.ModelFunc(func(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
			if actors.LastUserMessage(req.History) == "boom" {
				return emit("boom")
			}
			return g.Generate(ctx, req, emit)
		}), 8, 0),
		Egress: []actors.FilterSpec{{Path: "egress/0/bomb", New: func() (actors.Filter, error) { return bomb{}, nil }}},
		Supervision: actors.Supervision{InitialBackoff: time.Millisecond, MaxBackoff: time.Millisecond,
			MaxRestarts: 1, Cooldown: time.Hour},
	})
	ctx := ctxFor(t)
	victim := n.post(ctx, "/v1/completion", form(userInput("x")))
	<-g.started
	for i := 0; i < 2; i++ {
		readAll(t, n.post(ctx, "/v1/completion", form(userInput("boom"))))
	}
	body := readAll(t, victim)
	if !strings.Contains(body, "the layout failed") {
		t.Fatalf("victim chat answered %q", body)
	}
	resp := n.post(ctx, "/v1/completion", form(userInput("x")))
	if body := readAll(t, resp); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "unavailable") {
		t.Fatalf("chat on the dead layout: %d %q", resp.StatusCode, body)
	}
}

type bomb struct{}

func (bomb) MapHistory(h []*actors.Message) ([]*actors.Message, error) { return h, nil }
func (bomb) NewStream() actors.Stream                                  { return bombStream{} }

type bombStream struct{}

func (bombStream) Write(s string) string {
	if s == "boom" {
		panic("bomb filter")
	}
	return s
}
func (bombStream) Flush() string { return "" }

func TestHealthAndMetrics(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(newGate(), 2, 0)})
	resp, err := http.Get(n.http.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("health: %d", resp.StatusCode)
	}
	resp, err = http.Get(n.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp)
	for _, want := range []string{
		`troupe_layout_capacity{layout="llm"} 2`,
		`troupe_layout_healthy{layout="llm"} 1`,
		`troupe_chats_in_flight{layout="llm"} 0`,
		`troupe_actor_mailbox_depth{actor="model/test",layout="llm"} 0`,
		`troupe_agent_registration_state{state="uninitialized"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestSlotURLs(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(newGate(), 3, 0)})
	got := strings.Join(n.server.SlotURLs("http://w:1", "llm"), " ")
	want := "http://w:1/v1/completion http://w:1/v1/completion/1 http://w:1/v1/completion/2"
	if got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

// counter reads one series of a counter; a series not created yet reads 0.
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) prometheus.Collector {
	return collectorFunc(func(ch chan<- prometheus.Metric) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Error(err)
			return
		}
		found := false
		defer func() {
			if !found {
				ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil), prometheus.CounterValue, 0)
			}
		}()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == label && l.GetValue() == value {
						found = true
						ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(name, "", nil, nil),
							prometheus.CounterValue, m.GetCounter().GetValue())
					}
				}
			}
		}
	})
}

type collectorFunc func(chan<- prometheus.Metric)

func (f collectorFunc) Describe(chan<- *prometheus.Desc)    {}
func (f collectorFunc) Collect(ch chan<- prometheus.Metric) { f(ch) }

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// stopLayout stops a layout's actors and its worker goroutines, which
// cancels the generations still running in it.
func stopLayout(t *testing.T, l *actors.Layout) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Stop(ctx); err != nil {
		t.Errorf("stopping the layout: %v", err)
	}
}

// routerFunc is a Router made of a function, for one node's layout.
type routerFunc func(tried []string) (gateway.Target, error)

func (f routerFunc) Route(_, _ string, tried []string) (gateway.Target, error) { return f(tried) }
func (f routerFunc) Serves(layout string) bool                                 { return layout == "llm" }
func (f routerFunc) Layouts() []string                                         { return []string{"llm"} }

// overloadedFor is a router's refusal that says how long until it expects
// room.
type overloadedFor time.Duration

func (e overloadedFor) Error() string             { return "overloaded" }
func (e overloadedFor) Is(target error) bool      { return target == actors.ErrOverloaded }
func (e overloadedFor) RetryAfter() time.Duration { return time.Duration(e) }

// A chat refused by every node gets a Retry-After of the soonest any of
// them expects room, whether a node's admission or its model's upstream
// said so; a node that said nothing is no evidence.
func TestRetryAfterIsTheSoonestAnyNodeExpects(t *testing.T) {
	busy := &scripted{err: &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "busy", RetryAfter: 2500 * time.Millisecond}}
	for _, tt := range []struct {
		name     string
		upstream bool          // the chat runs here first, and the upstream says 2.5 s
		router   time.Duration // then the router refuses with this wait
		want     string
	}{
		{"upstream sooner", true, 10 * time.Second, "3"},
		{"router sooner", true, 1500 * time.Millisecond, "2"},
		{"router says nothing", true, 0, "3"},
		{"router alone", false, 4 * time.Second, "4"},
		{"nobody says", false, 0, "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(busy, 4, 4)}, func(cfg *gateway.Config) {
				l := cfg.Layouts["llm"]
				cfg.Router = routerFunc(func(tried []string) (gateway.Target, error) {
					if tt.upstream && len(tried) == 0 {
						return gateway.Target{Node: "self", Local: l, Gone: context.Background()}, nil
					}
					return gateway.Target{}, overloadedFor(tt.router)
				})
			})
			resp := n.post(ctxFor(t), "/v1/completion", form(userInput("x")))
			body := readAll(t, resp)
			if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != tt.want {
				t.Fatalf("status %d, Retry-After %q (want %s): %q", resp.StatusCode, resp.Header.Get("Retry-After"), tt.want, body)
			}
		})
	}
}

// refuser is a model that refuses its next chat as overloaded when told to,
// and otherwise is next.
type refuser struct {
	refuse atomic.Bool
	next   actors.Model
}

func (r *refuser) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	if r.refuse.CompareAndSwap(true, false) {
		return &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "full"}
	}
	return r.next.Generate(ctx, req, emit)
}

// The gateway calls a target's Done once when the chat's attempt there
// ends, however it ends, and takes no second place for a chat the router
// admitted.
func TestTargetDoneOncePerAttempt(t *testing.T) {
	g := newGate()
	model := &refuser{next: g}
	var mu sync.Mutex
	routed, done := 0, 0
	counts := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return routed, done
	}
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(model, 4, 4)}, func(cfg *gateway.Config) {
		l := cfg.Layouts["llm"]
		cfg.Router = routerFunc(func(tried []string) (gateway.Target, error) {
			if len(tried) > 1 || !l.Admission.TryAcquire() {
				return gateway.Target{}, actors.ErrOverloaded
			}
			mu.Lock()
			routed++
			mu.Unlock()
			return gateway.Target{Node: "self", Local: l, Admitted: true, Gone: context.Background(), Done: func() {
				l.Admission.Release()
				mu.Lock()
				done++
				mu.Unlock()
			}}, nil
		})
	})
	ctx := ctxFor(t)
	check := func(what string, wantRouted, wantDone int) {
		t.Helper()
		if r, d := counts(); r != wantRouted || d != wantDone {
			t.Fatalf("%s: routed %d, done %d; want %d, %d", what, r, d, wantRouted, wantDone)
		}
		if running, queued := n.layout.Admission.Load(); running != 0 || queued != 0 {
			t.Fatalf("%s: places left taken: %d running, %d queued", what, running, queued)
		}
	}

	go func() { <-g.started; g.release <- struct{}{} }()
	if body := readAll(t, n.post(ctx, "/v1/completion", form(userInput("a")))); body != "a!" {
		t.Fatalf("answer %q", body)
	}
	check("completed", 1, 1)

	// Refused where it went first, then run on the next try: two
	// attempts, two Dones.
	model.refuse.Store(true)
	go func() { <-g.started; g.release <- struct{}{} }()
	if body := readAll(t, n.post(ctx, "/v1/completion", form(userInput("b")))); body != "b!" {
		t.Fatalf("answer %q", body)
	}
	check("refused, then completed", 3, 3)

	// Cancelled by its client, with one place taken while it ran.
	cctx, cancel := context.WithCancel(ctx)
	resp := n.post(cctx, "/v1/completion", form(userInput("c")))
	<-g.started
	if running, _ := n.layout.Admission.Load(); running != 1 {
		t.Fatalf("%d places taken for one admitted chat", running)
	}
	cancel()
	resp.Body.Close()
	<-g.ended
	waitFor(t, func() bool { _, d := counts(); return d == 4 }, "the cancelled chat's Done")
	check("cancelled", 4, 4)
}

// A streaming answer's connection is taken over from net/http (at once in
// these tests, see export_test.go): the answer goes on to its end, the
// connection then serves the client's next request, a request the client
// sent ahead is not lost, and a client that hangs up still cancels its chat.
func TestTakenOverConnection(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)})
	raw := func(text string) string {
		body := form(userInput(text)).Encode()
		return fmt.Sprintf("POST /v1/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	// Two chats sent at once: the second waits for the first's answer.
	if _, err := io.WriteString(conn, raw("a")+raw("b")); err != nil {
		t.Fatal(err)
	}
	readAnswer := func(want string) {
		t.Helper()
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 1)
		if _, err := io.ReadFull(resp.Body, first); err != nil {
			t.Fatal(err)
		}
		select {
		case <-n.hijacked:
		case <-time.After(10 * time.Second):
			t.Fatal("the streaming answer's connection was not taken over")
		}
		<-g.started
		g.release <- struct{}{}
		if err := <-g.ended; err != nil {
			t.Fatalf("model ended with %v", err)
		}
		rest, err := io.ReadAll(resp.Body)
		if err != nil || string(first)+string(rest) != want || resp.StatusCode != http.StatusOK {
			t.Fatalf("answer %d %q (%v), want %q", resp.StatusCode, string(first)+string(rest), err, want)
		}
	}
	readAnswer("a!")
	readAnswer("b!")
	// Kept alive: the same connection takes another chat.
	if _, err := io.WriteString(conn, raw("c")); err != nil {
		t.Fatal(err)
	}
	readAnswer("c!")
	if got := testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "completed")); got != 3 {
		t.Fatalf("completed chats %v, want 3", got)
	}

	// A client that hangs up after the take-over cancels its chat.
	gone, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(gone, raw("d")); err != nil {
		t.Fatal(err)
	}
	<-g.started
	select {
	case <-n.hijacked:
	case <-time.After(10 * time.Second):
		t.Fatal("the streaming answer's connection was not taken over")
	}
	gone.Close()
	select {
	case err := <-g.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("model ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the model was not cancelled")
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "cancelled")) == 1
	}, "the cancelled chat counted")
}
