package actors_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/troupe-llm/troupe/actors"
)

// startTree starts a layout tree on a fresh system and registry.
func startTree(t *testing.T, root actors.Node) *harness {
	t.Helper()
	system := actors.NewActorSystem(actor.Configure())
	t.Cleanup(system.Shutdown)
	reg := prometheus.NewRegistry()
	l, err := actors.StartLayout(system, actors.LayoutSpec{Name: "tree", Root: root}, actors.NewMetrics(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = l.Stop(ctx)
	})
	return &harness{t: t, system: system, layout: l, reg: reg}
}

// say is a model that answers a fixed text, in pieces of one rune.
func say(path, text string) *actors.ModelNode {
	return model(path, actors.ModelFunc(func(_ context.Context, _ *actors.ChatRequest, emit func(string) error) error {
		for _, r := range text {
			if err := emit(string(r)); err != nil {
				return err
			}
		}
		return nil
	}))
}

func model(path string, m actors.Model) *actors.ModelNode {
	return &actors.ModelNode{Path: path, New: func() (actors.Model, error) { return m, nil }, Capacity: 8, Queue: 8}
}

// failing answers prefix, then fails with err.
func failing(path, prefix string, err error) *actors.ModelNode {
	return model(path, actors.ModelFunc(func(_ context.Context, _ *actors.ChatRequest, emit func(string) error) error {
		if prefix != "" {
			if e := emit(prefix); e != nil {
				return e
			}
		}
		return err
	}))
}

var errUpstream = &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: "upstream down"}

func (h *harness) chatWith(ctx context.Context, req *actors.ChatRequest) answer {
	h.t.Helper()
	req.ChatId = fmt.Sprintf("c%d", h.counter.Add(1))
	reply := actors.NewReply(h.system, req.ChatId)
	defer reply.Close()
	req.ReplyTo = reply.PID()
	h.system.Root.Send(h.layout.Epoch().Entry(h.layout), req)
	return collect(ctx, h.t, reply)
}

func userChat(text string) *actors.ChatRequest {
	return &actors.ChatRequest{History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: text}}}
}

func TestRouteBranches(t *testing.T) {
	h := startTree(t, &actors.RouteNode{Path: "r/route", Branches: []actors.RouteBranch{
		{When: actors.Condition{LastMessage: regexp.MustCompile(`^/echo `)}, Then: say("r/route/0", "echo")},
		{When: actors.Condition{Messages: actors.Bound{Min: 3}}, Then: say("r/route/1", "long chat")},
		{When: actors.Condition{Params: map[string]*regexp.Regexp{"mode": regexp.MustCompile(`^fast$`)}}, Then: say("r/route/2", "fast")},
		{When: actors.Condition{Chars: actors.Bound{Max: 3}}, Then: say("r/route/3", "short")},
	}})
	ctx := withTimeout(t, 5*time.Second)
	three := userChat("a")
	three.History = append(three.History, &actors.Message{Role: actors.Role_ROLE_ASSISTANT, Content: "b"}, &actors.Message{Content: "c"})
	fast := userChat("hello there")
	fast.Params = map[string]string{"mode": "fast"}
	for _, tt := range []struct {
		name string
		req  *actors.ChatRequest
		want string
	}{
		{"regex", userChat("/echo hi"), "echo"},
		{"messages", three, "long chat"},
		{"param", fast, "fast"},
		{"chars", userChat("hey"), "short"},
	} {
		if got := h.chatWith(ctx, tt.req); got.failure != nil || got.text != tt.want {
			t.Errorf("%s: got %q (%v), want %q", tt.name, got.text, got.failure, tt.want)
		}
	}
	// No branch and no default: a clear invalid-argument failure (a 4xx).
	got := h.chatWith(ctx, userChat("nothing matches this long text"))
	if got.failure == nil || got.failure.Code != actors.Code_CODE_INVALID_ARGUMENT || !strings.Contains(got.failure.Reason, "no route") {
		t.Fatalf("unmatched chat: %+v", got)
	}
}

func TestFallbackBeforeFirstChunk(t *testing.T) {
	h := startTree(t, &actors.FallbackNode{Path: "f", Children: []actors.Node{
		failing("f/0", "", errUpstream),
		failing("f/1", "", &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "busy"}),
		say("f/2", "from the third"),
	}})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	if got.failure != nil || got.text != "from the third" {
		t.Fatalf("got %q (%v)", got.text, got.failure)
	}
}

// Without resume, a child that fails after its first chunk ends the chat
// with its error: the next child would repeat or contradict what was said.
func TestFallbackAfterFirstChunkWithoutResume(t *testing.T) {
	h := startTree(t, &actors.FallbackNode{Path: "f", Children: []actors.Node{
		failing("f/0", "Hel", errUpstream),
		say("f/1", "never"),
	}})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	if got.text != "Hel" || got.failure == nil || got.failure.Reason != "upstream down" {
		t.Fatalf("got %q (%+v)", got.text, got.failure)
	}
}

// With resume, the next child continues the answer: it sees the partial
// answer as the last assistant message, and the client gets one answer,
// nothing repeated. The splice is counted.
func TestFallbackResumeSplicesAnswer(t *testing.T) {
	var seen atomic.Pointer[actors.ChatRequest]
	cont := model("f/1", actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
		seen.Store(req)
		last := req.History[len(req.History)-1]
		if last.Role != actors.Role_ROLE_ASSISTANT {
			return errors.New("no partial answer to continue")
		}
		return emit(strings.TrimPrefix("Hello, world", last.Content))
	}))
	h := startTree(t, &actors.FallbackNode{Path: "f", Resume: true, Children: []actors.Node{
		failing("f/0", "Hello", errUpstream), cont,
	}})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	if got.failure != nil || got.text != "Hello, world" {
		t.Fatalf("got %q (%v), want one uninterrupted answer", got.text, got.failure)
	}
	req := seen.Load()
	if n := len(req.History); n != 2 || req.History[0].Content != "x" || req.History[1].Content != "Hello" {
		t.Fatalf("the next child saw %v", req.History)
	}
	if n := testutil.ToFloat64(metricFor(h, "troupe_fallback_splices_total", "f")); n != 1 {
		t.Fatalf("splices counted %v, want 1", n)
	}
}

// A model past its capacity and queue refuses a chat as overloaded, which a
// fallback takes as its cue.
func TestFallbackTakesOverload(t *testing.T) {
	g := newGateModel()
	busy := &actors.ModelNode{Path: "f/0", Capacity: 1, Queue: 0, New: func() (actors.Model, error) { return g, nil }}
	h := startTree(t, &actors.FallbackNode{Path: "f", Children: []actors.Node{busy, say("f/1", "spare")}})
	ctx := withTimeout(t, 5*time.Second)
	first := actors.NewReply(h.system, "first")
	defer first.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "first", History: userChat("hold").History, ReplyTo: first.PID()})
	<-g.started
	if got := h.chat(ctx, "second"); got.failure != nil || got.text != "spare" {
		t.Fatalf("second chat: %q (%v), want the spare's answer", got.text, got.failure)
	}
	close(g.release)
	if got := collect(ctx, t, first); got.failure != nil || got.text != "hold" {
		t.Fatalf("first chat: %q (%v)", got.text, got.failure)
	}
}

// gateModel emits its input and waits for release or cancel; it reports
// each chat's end.
type gateModel struct {
	started chan string
	release chan struct{}
	ended   chan error
}

func newGateModel() *gateModel {
	return &gateModel{started: make(chan string, 16), release: make(chan struct{}), ended: make(chan error, 16)}
}

func (g *gateModel) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	if err := emit(actors.LastUserMessage(req.History)); err != nil {
		return err
	}
	g.started <- req.ChatId
	select {
	case <-g.release:
		g.ended <- nil
		return nil
	case <-ctx.Done():
		g.ended <- ctx.Err()
		return ctx.Err()
	}
}

// The first child to answer wins; the others are cancelled.
func TestFanoutFirstWins(t *testing.T) {
	slow := newGateModel()
	h := startTree(t, &actors.FanoutNode{Path: "h", Merge: actors.MergeFirst, Children: []actors.Node{
		model("h/0", actors.ModelFunc(func(ctx context.Context, _ *actors.ChatRequest, _ func(string) error) error {
			<-ctx.Done() // never answers
			slow.ended <- ctx.Err()
			return ctx.Err()
		})),
		say("h/1", "quick"),
	}})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	if got.failure != nil || got.text != "quick" {
		t.Fatalf("got %q (%v)", got.text, got.failure)
	}
	select {
	case err := <-slow.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("the slow child ended with %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the slow child was not cancelled")
	}
}

func TestFanoutEveryChildFails(t *testing.T) {
	for _, merge := range []string{actors.MergeFirst, actors.MergeAll} {
		t.Run(merge, func(t *testing.T) {
			h := startTree(t, &actors.FanoutNode{Path: "h", Merge: merge, Children: []actors.Node{
				failing("h/0", "", errUpstream),
				failing("h/1", "", &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "busy"}),
			}})
			got := h.chat(withTimeout(t, 5*time.Second), "x")
			if got.failure == nil || !strings.Contains(got.failure.Reason, "every branch failed") || got.text != "" {
				t.Fatalf("got %q (%+v), want one error", got.text, got.failure)
			}
		})
	}
}

// MergeAll writes every answer in the children's order, each under its
// label, however the children's output interleaves; a failed child's part
// says so, and usage adds up.
func TestFanoutAllInOrder(t *testing.T) {
	first := newGateModel()
	h := startTree(t, &actors.FanoutNode{Path: "h", Merge: actors.MergeAll, Labels: []string{"slow", "fast", "broken"},
		Children: []actors.Node{
			&actors.ModelNode{Path: "h/0", Capacity: 1, New: func() (actors.Model, error) { return first, nil }},
			say("h/1", "second"),
			failing("h/2", "", errUpstream),
		}})
	ctx := withTimeout(t, 5*time.Second)
	reply := actors.NewReply(h.system, "all")
	defer reply.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "all", History: userChat("one").History, ReplyTo: reply.PID()})
	<-first.started
	// The second and third children are done; their answers wait for the
	// first's. The fan-out has had the request, the second's Begin, six
	// chunks and End, the third's Begin and Failure, the first's Begin and
	// chunk.
	waitFor(t, 5*time.Second, func() bool {
		return testutil.ToFloat64(messages(h, "h")) >= 13
	}, "the fast children's answers held by the fan-out")
	close(first.release)
	got := collect(ctx, t, reply)
	want := "[slow]\none\n\n[fast]\nsecond\n\n[broken]\n[Error: upstream down.]"
	if got.failure != nil || got.text != want {
		t.Fatalf("got %q (%v)\nwant %q", got.text, got.failure, want)
	}
}

// A cancel reaches every branch of a fan-out.
func TestCancelReachesEveryBranch(t *testing.T) {
	a, b := newGateModel(), newGateModel()
	h := startTree(t, &actors.FanoutNode{Path: "h", Merge: actors.MergeAll, Children: []actors.Node{
		&actors.ModelNode{Path: "h/0", Capacity: 1, New: func() (actors.Model, error) { return a, nil }},
		&actors.ModelNode{Path: "h/1", Capacity: 1, New: func() (actors.Model, error) { return b, nil }},
	}})
	ctx := withTimeout(t, 5*time.Second)
	reply := actors.NewReply(h.system, "c")
	defer reply.Close()
	h.system.Root.Send(h.layout.Root, &actors.ChatRequest{ChatId: "c", History: userChat("x").History, ReplyTo: reply.PID()})
	<-a.started
	<-b.started
	h.system.Root.Send(h.layout.Epoch().Entry(h.layout), &actors.Cancel{ChatId: "c"})
	for _, g := range []*gateModel{a, b} {
		select {
		case err := <-g.ended:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("branch ended with %v", err)
			}
		case <-ctx.Done():
			t.Fatal("a branch was not cancelled")
		}
	}
	if got := collect(ctx, t, reply); got.failure == nil || got.failure.Code != actors.Code_CODE_CANCELED {
		t.Fatalf("got %+v", got)
	}
}

// countingModel counts the chats each instance runs at once.
type countingModel struct {
	mu      *sync.Mutex
	running map[string]int
	peak    map[string]int
	name    string
	release chan struct{}
	started chan struct{}
}

func (m *countingModel) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	m.mu.Lock()
	m.running[m.name]++
	m.peak[m.name] = max(m.peak[m.name], m.running[m.name])
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.running[m.name]--
		m.mu.Unlock()
	}()
	m.started <- struct{}{}
	select {
	case <-m.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return emit(m.name)
}

// Under load, a pool spreads chats evenly over its replicas: each chat
// goes to the replica with the fewest.
func TestPoolSpreadsLoad(t *testing.T) {
	var mu sync.Mutex
	running, peak := map[string]int{}, map[string]int{}
	release, started := make(chan struct{}), make(chan struct{}, 64)
	var replicas []actors.Node
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("p/%d", i)
		m := &countingModel{mu: &mu, running: running, peak: peak, name: name, release: release, started: started}
		replicas = append(replicas, &actors.ModelNode{Path: name, Capacity: 4, New: func() (actors.Model, error) { return m, nil }})
	}
	h := startTree(t, &actors.PoolNode{Path: "p", Replicas: replicas})
	if c := h.layout.Admission.Capacity(); c != 12 {
		t.Fatalf("pool capacity %d, want 3 × 4", c)
	}
	ctx := withTimeout(t, 10*time.Second)
	const chats = 12
	results := make(chan answer, chats)
	for i := 0; i < chats; i++ {
		go func() { results <- h.chat(ctx, "x") }()
	}
	for i := 0; i < chats; i++ {
		select {
		case <-started:
		case <-ctx.Done():
			t.Fatal("not every chat started")
		}
	}
	mu.Lock()
	for name, n := range running {
		if n != 4 {
			t.Errorf("replica %s runs %d chats, want 4 of 12", name, n)
		}
	}
	mu.Unlock()
	close(release)
	counts := map[string]int{}
	for i := 0; i < chats; i++ {
		got := <-results
		if got.failure != nil {
			t.Fatal(got.failure)
		}
		counts[got.text]++
	}
	if len(counts) != 3 {
		t.Fatalf("answers by replica %v", counts)
	}
}

// Filters of a pipeline nested in a fallback inside another pipeline act in
// order: the inner ones on the inner answer, the outer ones on what comes
// out of the fallback; every actor of the tree has its series, labelled by
// its path.
func TestNestedPipelinesAndPaths(t *testing.T) {
	upper := func(path string) *actors.FilterNode {
		return &actors.FilterNode{Path: path, New: newPair}
	}
	h := startTree(t, &actors.PipelineNode{Path: "n/pipeline", Egress: []*actors.FilterNode{upper("n/pipeline/2")},
		Core: &actors.FallbackNode{Path: "n/pipeline/1/fallback", Children: []actors.Node{
			failing("n/pipeline/1/fallback/0", "", errUpstream),
			&actors.PipelineNode{Path: "n/pipeline/1/fallback/1/pipeline", Egress: []*actors.FilterNode{upper("n/pipeline/1/fallback/1/pipeline/1")},
				Core: say("n/pipeline/1/fallback/1/pipeline/0", "abcd")},
		}}})
	got := h.chat(withTimeout(t, 5*time.Second), "x")
	// Each pair filter swaps pairs: twice is the identity.
	if got.failure != nil || got.text != "abcd" {
		t.Fatalf("got %q (%v)", got.text, got.failure)
	}
	for _, path := range []string{"root", "n/pipeline", "n/pipeline/2", "n/pipeline/1/fallback", "n/pipeline/1/fallback/0",
		"n/pipeline/1/fallback/1/pipeline", "n/pipeline/1/fallback/1/pipeline/0", "n/pipeline/1/fallback/1/pipeline/1"} {
		if n := testutil.ToFloat64(messages(h, path)); n == 0 {
			t.Errorf("actor %s handled no message, or has no series", path)
		}
	}
	if count, _ := histogram(t, h, "troupe_actor_first_chunk_seconds", "n/pipeline/1/fallback/1/pipeline/0"); count != 1 {
		t.Errorf("the answering model's share of the time to first chunk observed %d times, want 1", count)
	}
}

// A stopped tree's actors leave the mailbox gauge, so that a reloaded
// layout's old tree does not linger in /metrics.
func TestStoppedActorsLeaveMailboxGauge(t *testing.T) {
	h := startTree(t, &actors.FallbackNode{Path: "f", Children: []actors.Node{say("f/0", "a"), say("f/1", "b")}})
	if got := h.chat(withTimeout(t, 5*time.Second), "x"); got.text != "a" {
		t.Fatalf("got %+v", got)
	}
	if n, _ := testutil.GatherAndCount(h.reg, "troupe_actor_mailbox_depth"); n != 4 {
		t.Fatalf("%d mailbox series, want root, fallback and two models", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.layout.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() bool {
		n, _ := testutil.GatherAndCount(h.reg, "troupe_actor_mailbox_depth")
		return n == 0
	}, "no mailbox series left")
}
