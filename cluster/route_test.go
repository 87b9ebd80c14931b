package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

var echoModel = actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
	return emit(actors.LastUserMessage(req.History))
})

// testCluster is a Cluster with a real local layout of the given capacity
// and members whose loads the test sets; nothing listens.
func testCluster(t *testing.T, capacity, queue int) (*Cluster, *actors.Layout) {
	t.Helper()
	system := actor.NewActorSystemWithConfig(actor.Configure(actor.WithLoggerFactory(
		func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.DiscardHandler) })))
	t.Cleanup(system.Shutdown)
	l, err := actors.StartPipeline(system, actors.PipelineSpec{
		Name:  "llm",
		Model: actors.ModelSpec{Path: "model/echo", New: func() (actors.Model, error) { return echoModel, nil }, Capacity: capacity, Queue: queue},
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Stop(ctx); err != nil {
			t.Errorf("stopping the layout: %v", err)
		}
	})
	c := &Cluster{
		cfg:     Config{NodeName: "self"},
		logger:  slog.New(slog.DiscardHandler),
		layouts: map[string]*actors.Layout{"llm": l},
		members: map[string]*Member{},
	}
	return c, l
}

func (c *Cluster) addMember(name string, running, queued, capacity, queueLimit uint32, healthy bool) *Member {
	m := newMember(name, &actors.NodeMeta{RemoteAddress: name + ":1", Layouts: []string{"llm"}})
	c.members[name] = m
	c.applyLoad(&actors.NodeLoad{Node: name, Seq: 1, Layouts: []*actors.LayoutLoad{{
		Layout: "llm", Capacity: capacity, Running: running, Queued: queued, QueueLimit: queueLimit, Healthy: healthy,
	}}})
	return m
}

func fill(t *testing.T, l *actors.Layout, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := l.Admission.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := 0; i < n; i++ {
			l.Admission.Release()
		}
	})
}

func route(t *testing.T, c *Cluster, key string, tried ...string) string {
	t.Helper()
	target, err := c.Route("llm", key, tried)
	if err != nil {
		t.Fatalf("route: %v", err)
	}
	return target.Node
}

func TestRoutePrefersThisNodeWithRoom(t *testing.T) {
	c, _ := testCluster(t, 2, 2)
	c.addMember("b", 0, 0, 8, 8, true)
	if got := route(t, c, ""); got != "self" {
		t.Fatalf("routed to %s, want self", got)
	}
}

func TestRouteGoesToMemberWithMostRoomWhenFull(t *testing.T) {
	c, l := testCluster(t, 2, 2)
	fill(t, l, 2)
	c.addMember("b", 7, 0, 10, 10, true) // 13/20 free
	c.addMember("c", 2, 0, 8, 8, true)   // 14/16 free
	// Chats sent since c's last report count against it until the next:
	// with 6 of 16 taken, c has less room than b.
	for i := 0; i < 4; i++ {
		if got := route(t, c, ""); got != "c" {
			t.Fatalf("chat %d routed to %s, want c", i, got)
		}
	}
	if got := route(t, c, ""); got != "b" {
		t.Fatalf("after sending c four chats, routed to %s, want b", got)
	}
	c.applyLoad(&actors.NodeLoad{Node: "c", Seq: 2, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 8, QueueLimit: 8, Healthy: true}}})
	if got := route(t, c, ""); got != "c" {
		t.Fatalf("after c's fresh report, routed to %s, want c", got)
	}
}

func TestRouteSkipsUnhealthySuspectAndUnreachable(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	c.addMember("sick", 0, 0, 8, 8, false)
	c.addMember("suspect", 0, 0, 8, 8, true).suspect = true
	c.addMember("cut", 0, 0, 8, 8, true).unreachable = time.Now().Add(time.Minute)
	c.addMember("ok", 7, 8, 8, 8, true)
	if got := route(t, c, ""); got != "ok" {
		t.Fatalf("routed to %s, want the only healthy reachable member", got)
	}
}

// A conversation sticks to one node while it has room, whoever asks; many
// conversations spread over all nodes.
func TestRouteSticksConversations(t *testing.T) {
	c, _ := testCluster(t, 100, 0)
	for _, n := range []string{"b", "c", "d"} {
		c.addMember(n, 0, 0, 100, 0, true)
	}
	seen := map[string]int{}
	for i := 0; i < 200; i++ {
		key := fmt.Sprintf("history-%d\x00user", i)
		first := route(t, c, key)
		if again := route(t, c, key); again != first {
			t.Fatalf("conversation %d moved from %s to %s", i, first, again)
		}
		seen[first]++
	}
	for _, n := range []string{"self", "b", "c", "d"} {
		if seen[n] < 20 {
			t.Errorf("node %s got %d of 200 conversations: %v", n, seen[n], seen)
		}
	}
}

func TestRouteLeavesFullStickyNode(t *testing.T) {
	c, _ := testCluster(t, 100, 0)
	c.addMember("b", 0, 0, 8, 8, true)
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprint("h", i); route(t, c, k) == "b" {
			key = k
		}
	}
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 5, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 8, Running: 8, QueueLimit: 8, Healthy: true}}})
	if got := route(t, c, key); got != "self" {
		t.Fatalf("with its node full, the conversation went to %s, want self", got)
	}
}

// Views of members are stale, so a member that looks full still gets a try
// before the cluster answers "overloaded"; one that refused is not asked
// again.
func TestRouteTriesMembersBeforeRefusing(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	c.addMember("b", 8, 8, 8, 8, true)
	c.addMember("c", 8, 8, 8, 8, true)
	var tried []string
	for i := 0; i < 2; i++ {
		node := route(t, c, "", tried...)
		if slices.Contains(tried, node) || node == "self" {
			t.Fatalf("routed to %s with tried %v", node, tried)
		}
		tried = append(tried, node)
	}
	if _, err := c.Route("llm", "", tried); !errors.Is(err, actors.ErrOverloaded) {
		t.Fatalf("every node full and tried: %v, want ErrOverloaded", err)
	}
}

func TestRouteNoNode(t *testing.T) {
	c, _ := testCluster(t, 1, 0)
	if _, err := c.Route("other", "", nil); !errors.Is(err, ErrNoNode) {
		t.Fatalf("got %v, want ErrNoNode", err)
	}
	if !c.Serves("llm") || c.Serves("other") {
		t.Fatal("Serves is wrong")
	}
	c.addMember("b", 0, 0, 1, 0, true).Meta.Layouts = []string{"llm", "other"}
	if !c.Serves("other") {
		t.Fatal("Serves does not see a member's layout")
	}
}

func TestApplyLoadKeepsNewest(t *testing.T) {
	c, _ := testCluster(t, 1, 0)
	m := c.addMember("b", 1, 0, 8, 0, true)
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 1, Layouts: []*actors.LayoutLoad{{Layout: "llm", Running: 7}}})
	if m.load["llm"].Running != 1 {
		t.Fatal("a report with an old sequence number replaced a newer one")
	}
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 9, Draining: true})
	if !m.draining || len(m.load) != 0 {
		t.Fatalf("draining report not applied: %+v", m.load)
	}
}

func TestParseKey(t *testing.T) {
	for _, tt := range []struct {
		in   string
		size int
		err  bool
	}{
		{"", 0, false},
		{"MDEyMzQ1Njc4OWFiY2RlZg==", 16, false},
		{"correct horse battery staple", 32, false},
		{"short", 0, true},
	} {
		key, err := ParseKey(tt.in)
		if (err != nil) != tt.err || len(key) != tt.size {
			t.Errorf("ParseKey(%q) = %d bytes, %v", tt.in, len(key), err)
		}
	}
}

func TestResolveSeeds(t *testing.T) {
	got := resolveSeeds([]string{"127.0.0.2:7000", "127.0.0.3", " ", "localhost:7001", "does-not-resolve.invalid"}, 7946)
	for _, want := range []string{"127.0.0.2:7000", "127.0.0.3:7946", "127.0.0.1:7001"} {
		if !slices.Contains(got, want) {
			t.Errorf("seeds %v lack %s", got, want)
		}
	}
}

// A member silent for longer than suspectAfter gets no new chats, and the
// chats routed to it before learn it through Target.Silent, so those that
// have written nothing can move; when it speaks again it takes chats again.
func TestSilentMember(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	m := c.addMember("b", 0, 0, 8, 8, true)
	target, err := c.Route("llm", "", nil)
	if err != nil || target.Node != "b" {
		t.Fatalf("routed to %s (%v), want b", target.Node, err)
	}
	m.mu.Lock()
	m.heard = time.Now().Add(-suspectAfter - time.Second)
	m.mu.Unlock()
	c.watchSuspects()
	select {
	case <-target.Silent.Done():
	default:
		t.Fatal("the chat routed to b was not told b went silent")
	}
	if _, err := c.Route("llm", "", []string{"self"}); !errors.Is(err, ErrNoNode) {
		t.Fatalf("routing with b silent: %v, want no candidate", err)
	}
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 2, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 8, QueueLimit: 8, Healthy: true}}})
	c.watchSuspects()
	again, err := c.Route("llm", "", nil)
	if err != nil || again.Node != "b" {
		t.Fatalf("after b spoke again: %s (%v)", again.Node, err)
	}
	select {
	case <-again.Silent.Done():
		t.Fatal("a member that speaks again hands out a silent context already ended")
	default:
	}
}
