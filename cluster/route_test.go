package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

var echoModel = actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
	return emit(actors.LastUserMessage(req.History))
})

// testCluster is a Cluster with a real local layout of the given capacity
// and members whose loads the test sets; nothing listens.
func testCluster(t *testing.T, capacity, queue int) (*Cluster, *actors.Layout) {
	t.Helper()
	return testClusterOf(t, echoModel, capacity, queue)
}

// testClusterOf is testCluster with a layout of the given model.
func testClusterOf(t *testing.T, model actors.Model, capacity, queue int) (*Cluster, *actors.Layout) {
	t.Helper()
	system := actor.NewActorSystemWithConfig(actor.Configure(actor.WithLoggerFactory(
		func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.DiscardHandler) })))
	t.Cleanup(system.Shutdown)
	l, err := actors.StartPipeline(system, actors.PipelineSpec{
		Name:  "llm",
		Model: actors.ModelSpec{Path: "model/echo", New: func() (actors.Model, error) { return model, nil }, Capacity: capacity, Queue: queue},
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
	// Exactly these bounds, whatever a layout makes of a queue of 0.
	l.Admission = actors.NewAdmission(capacity, queue)
	c := &Cluster{
		cfg:     Config{NodeName: "self"},
		system:  system,
		logger:  slog.New(slog.DiscardHandler),
		layouts: actors.NewLayoutSet(map[string]*actors.Layout{"llm": l}),
		members: map[string]*Member{},
		dead:    map[string]deadMember{},
		queue:   &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 1 }, RetransmitMult: 1},
	}
	c.metrics = newMetrics(nil, c)
	c.host = startHost(system, c.layouts, c.logger, c.metrics, c.applyDirect)
	t.Cleanup(c.host.stop)
	return c, l
}

// addMember adds a member serving "llm" with the load it broadcast: its
// counts hold everybody's chats, this node's too.
func (c *Cluster) addMember(name string, running, queued, capacity, queueLimit uint32, healthy bool) *Member {
	m := newMember(name, &actors.NodeMeta{RemoteAddress: name + ":1", Layouts: []string{"llm"}})
	c.members[name] = m
	c.applyLoad(&actors.NodeLoad{Node: name, Seq: 1, Layouts: []*actors.LayoutLoad{{
		Layout: "llm", Capacity: capacity, Running: running, Queued: queued, QueueLimit: queueLimit, Healthy: healthy,
	}}})
	return m
}

// tell applies a direct report from a member: its counts leave out the
// chats this node sent there.
func (c *Cluster) tell(name string, seq uint64, running, queued, capacity, queueLimit uint32) {
	c.applyDirect(&actors.NodeLoad{Node: name, Seq: seq, Layouts: []*actors.LayoutLoad{{
		Layout: "llm", Capacity: capacity, Running: running, Queued: queued, QueueLimit: queueLimit, Healthy: true,
	}}})
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

// route routes a chat and ends it at once, and returns where it went.
func route(t *testing.T, c *Cluster, key string, tried ...string) string {
	t.Helper()
	target, err := c.Route("llm", key, tried)
	if err != nil {
		t.Fatalf("route: %v", err)
	}
	if target.Done != nil {
		target.Done()
	}
	return target.Node
}

// routeTo routes a chat, which must go to want, and returns its target,
// whose Done is the test's to call.
func routeTo(t *testing.T, c *Cluster, key, want string, tried ...string) Target {
	t.Helper()
	target, err := c.Route("llm", key, tried)
	if err != nil {
		t.Fatalf("route: %v", err)
	}
	if target.Node != want {
		t.Fatalf("routed to %s, want %s", target.Node, want)
	}
	return target
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
	c.addMember("b", 7, 0, 10, 10, true)
	c.addMember("c", 2, 0, 8, 8, true)
	c.tell("b", 2, 7, 0, 10, 10) // 13 of 20 free
	c.tell("c", 2, 2, 0, 8, 8)   // 14 of 16 free
	// Chats this node sent count against c until they end: with 6 of 16
	// taken, c has less room than b.
	var toC []Target
	for i := 0; i < 4; i++ {
		target := routeTo(t, c, "", "c")
		toC = append(toC, target)
	}
	routeTo(t, c, "", "b").Done()
	// A report from c counts only the others' chats there: this node's
	// four are still running, and still count.
	c.tell("c", 3, 2, 0, 8, 8)
	routeTo(t, c, "", "b").Done()
	for _, target := range toC {
		target.Done()
	}
	routeTo(t, c, "", "c").Done()
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

// Every chat this node sends a member counts against it from Route until
// its Done, however it ends; the member's reports count only the others'
// chats there. So no chat goes to a full member while another has room.
func TestRouteCountsOwnChatsFromDispatchToEnd(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	for _, n := range []string{"b", "c"} {
		c.addMember(n, 0, 0, 2, 0, true)
		c.tell(n, 2, 0, 0, 2, 0)
	}
	// Four places, four chats: two on each, whatever the order.
	on := map[string][]Target{}
	for range 4 {
		target, err := c.Route("llm", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		on[target.Node] = append(on[target.Node], target)
	}
	if len(on["b"]) != 2 || len(on["c"]) != 2 {
		t.Fatalf("4 chats over two members of 2 places: %d on b, %d on c", len(on["b"]), len(on["c"]))
	}
	// Reports built after the chats started leave them out: they do not
	// free their places.
	c.tell("b", 3, 0, 0, 2, 0)
	c.tell("c", 3, 0, 0, 2, 0)
	// A chat that ends frees its place at once, before any report.
	on["b"][0].Done()
	held := routeTo(t, c, "", "b")
	// So does one that failed.
	on["c"][0].Done()
	moved := routeTo(t, c, "", "c")
	// A chat b refuses ends its attempt there and is routed again without
	// b (to c, full: a last try); the place it had on b is free at once.
	held.Done()
	refused := routeTo(t, c, "", "b")
	refused.Done()
	routeTo(t, c, "", "c", "b").Done()
	routeTo(t, c, "", "b").Done()
	moved.Done()
	// Others' chats take places too: c is full with one of this node's
	// and one of another gateway's, b has room.
	c.tell("c", 4, 1, 0, 2, 0)
	routeTo(t, c, "", "b").Done()
	on["b"][1].Done()
	on["c"][1].Done()
}

// Before a member's first direct report, its broadcast counts this node's
// chats as well as the others'; counting them twice errs on the side of
// room elsewhere.
func TestRouteBeforeTheFirstDirectReport(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	c.addMember("b", 0, 0, 2, 0, true)
	c.addMember("c", 0, 0, 4, 0, true)
	c.tell("c", 2, 3, 0, 4, 0) // three others', one free
	first := routeTo(t, c, "", "b")
	// b's broadcast counts that chat too: b looks full.
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 2, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 2, Running: 1, Healthy: true}}})
	routeTo(t, c, "", "c").Done()
	c.tell("b", 3, 0, 0, 2, 0)
	routeTo(t, c, "", "b").Done()
	first.Done()
}

// Places another gateway's chats left a moment ago are probably about to
// be taken again by that gateway's next chats: while a place surely free
// is elsewhere, this node takes that one; it never queues a chat while a
// place is free by the latest report.
func TestRouteWaryOfPlacesJustLeft(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	b := c.addMember("b", 0, 0, 4, 0, true)
	c.addMember("c", 0, 0, 4, 0, true)
	c.tell("b", 2, 4, 0, 4, 0) // full of another gateway's chats
	c.tell("b", 3, 1, 0, 4, 0) // three of them just ended
	c.tell("c", 2, 3, 0, 4, 0) // one place, free all along
	onC := routeTo(t, c, "", "c")
	routeTo(t, c, "", "b").Done() // c is full now: b's room is the only room
	onC.Done()
	// b's places stay free through the window: they are room like any.
	b.mu.Lock()
	for i := range b.recent {
		b.recent[i].at = b.recent[i].at.Add(-cautionWindow - time.Millisecond)
	}
	b.mu.Unlock()
	c.tell("b", 4, 1, 0, 4, 0)
	routeTo(t, c, "", "b").Done()
}

// Choosing a node and booking the chat there are one step: chats routed at
// once fill every place exactly, here and on members.
func TestRouteBooksConcurrentChatsExactly(t *testing.T) {
	c, l := testCluster(t, 10, 0)
	c.addMember("b", 0, 0, 40, 0, true)
	c.addMember("c", 0, 0, 50, 0, true)
	c.tell("b", 2, 0, 0, 40, 0)
	c.tell("c", 2, 0, 0, 50, 0)
	targets := make(chan Target, 100)
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			target, err := c.Route("llm", "", nil)
			if err != nil {
				t.Error(err)
				return
			}
			targets <- target
		}()
	}
	wg.Wait()
	close(targets)
	count := map[string]int{}
	for target := range targets {
		count[target.Node]++
		if target.Local != nil && !target.Admitted {
			t.Error("a chat routed here with room has no place yet")
		}
		defer target.Done()
	}
	if count["self"] != 10 || count["b"] != 40 || count["c"] != 50 {
		t.Fatalf("100 chats on 100 places: %v", count)
	}
	if running, _ := l.Admission.Load(); running != 10 {
		t.Fatalf("%d places taken here, want 10", running)
	}
}

// A member that dies takes its chats with it: whatever it was counted for
// goes with it, and when it comes back it starts empty; the chats' late
// Done changes nothing.
func TestRouteMemberThatDies(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	c.addMember("b", 0, 0, 2, 0, true)
	c.tell("b", 2, 0, 0, 2, 0)
	c.addMember("c", 0, 0, 8, 0, true)
	c.tell("c", 2, 6, 0, 8, 0)
	old := []Target{routeTo(t, c, "", "b"), routeTo(t, c, "", "b")}
	routeTo(t, c, "", "c").Done() // b full

	// Its connection drops: no chats for it for a while, and its chats'
	// attempts end.
	c.peerDisconnected("b:1")
	for _, target := range old {
		select {
		case <-target.Gone.Done():
		default:
			t.Fatal("a chat on the member that died was not told")
		}
	}
	routeTo(t, c, "", "c").Done()
	// It comes back (memberlist sees it join again) and reports.
	c.mu.Lock()
	c.members["b"] = newMember("b", c.members["b"].Meta)
	c.mu.Unlock()
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 9, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 2, Healthy: true}}})
	c.tell("b", 10, 0, 0, 2, 0)
	for _, target := range old {
		target.Done()
	}
	again := []Target{routeTo(t, c, "", "b"), routeTo(t, c, "", "b")}
	routeTo(t, c, "", "c").Done()
	for _, target := range again {
		target.Done()
	}
}

// A member killed and restarted under its name before memberlist declared
// it dead comes back as an update with its new remote address: the chats
// on the old process end, and new ones go to the new address. An update
// that keeps the address (a reload) keeps the member.
func TestRouteMemberRestartedUnderItsName(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	c.addMember("b", 0, 0, 2, 0, true)
	c.tell("b", 2, 0, 0, 2, 0)
	old := routeTo(t, c, "", "b")
	defer old.Done()
	update := func(addr string, layouts ...string) {
		meta, err := proto.Marshal(&actors.NodeMeta{RemoteAddress: addr, Layouts: layouts})
		if err != nil {
			t.Fatal(err)
		}
		(*delegate)(c).NotifyUpdate(&memberlist.Node{Name: "b", Meta: meta})
	}

	update("b:1", "llm", "other")
	select {
	case <-old.Gone.Done():
		t.Fatal("a reload ended the member's chats")
	default:
	}

	update("b:2", "llm")
	select {
	case <-old.Gone.Done():
	default:
		t.Fatal("the chat on the old process was not told it went")
	}
	c.applyLoad(&actors.NodeLoad{Node: "b", Seq: 1, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 2, Healthy: true}}})
	c.tell("b", 2, 0, 0, 2, 0)
	again := routeTo(t, c, "", "b")
	defer again.Done()
	if got := again.Remote.GetAddress(); got != "b:2" {
		t.Fatalf("a chat went to %s, want the new process at b:2", got)
	}
}

// Refused by every node, a gateway hears how long this node expects to
// stay full.
func TestRouteOverloadedSaysWhenToRetry(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	fill(t, l, 1)
	_, err := c.Route("llm", "", nil)
	var w interface{ RetryAfter() time.Duration }
	if !errors.Is(err, actors.ErrOverloaded) || !errors.As(err, &w) {
		t.Fatalf("got %v, want an overload with a RetryAfter", err)
	}
	if got, want := w.RetryAfter(), l.Admission.RetryAfter(); got != want || got <= 0 {
		t.Fatalf("RetryAfter %v, want the admission's %v", got, want)
	}
}

// setBreaker makes a member report its breaker in a newer broadcast.
func (c *Cluster) setBreaker(m *Member, state actors.BreakerState, until time.Time) {
	m.mu.Lock()
	l := m.load["llm"]
	seq := m.seq + 1
	m.mu.Unlock()
	fresh := &actors.LayoutLoad{Layout: "llm", Capacity: l.Capacity, Running: l.Running, Queued: l.Queued,
		QueueLimit: l.QueueLimit, Healthy: l.Healthy, Breaker: state}
	if !until.IsZero() {
		fresh.BreakerUntilUnixMilli = until.UnixMilli()
	}
	c.applyLoad(&actors.NodeLoad{Node: m.Name, Seq: seq, Layouts: []*actors.LayoutLoad{fresh}})
}

// A member whose breaker is open or probing gets no chats; one whose
// breaker is half-open gets a chat, its probe, only when no other node can
// take it; with nothing else left, Route says the circuit is open and
// when the soonest breaker expects to close.
func TestRouteAroundOpenBreakers(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	a := c.addMember("a", 0, 0, 4, 4, true)
	b := c.addMember("b", 0, 0, 4, 4, true)
	fill(t, l, 1) // this node is full: the members decide
	c.setBreaker(a, actors.BreakerState_BREAKER_OPEN, time.Now().Add(7*time.Second))
	for i := 0; i < 10; i++ {
		if got := route(t, c, fmt.Sprint("k", i)); got != "b" {
			t.Fatalf("chat %d went to %s, whose breaker is open", i, got)
		}
	}

	c.setBreaker(a, actors.BreakerState_BREAKER_HALF_OPEN, time.Time{})
	for i := 0; i < 10; i++ {
		if got := route(t, c, fmt.Sprint("k", i)); got != "b" {
			t.Fatalf("chat %d went to the half-open %s while b had room", i, got)
		}
	}
	if got := route(t, c, "", "self", "b"); got != "a" {
		t.Fatalf("with b tried, the chat went to %s, not to a as its probe", got)
	}

	c.setBreaker(a, actors.BreakerState_BREAKER_OPEN, time.Now().Add(7*time.Second))
	c.setBreaker(b, actors.BreakerState_BREAKER_PROBING, time.Time{})
	_, err := c.Route("llm", "", []string{"self"})
	var w interface{ RetryAfter() time.Duration }
	if !errors.Is(err, actors.ErrCircuitOpen) || !errors.As(err, &w) {
		t.Fatalf("err %v, want the circuit open", err)
	}
	if wait := w.RetryAfter(); wait != time.Second {
		t.Fatalf("retry after %v, want 1s (b's probe may end any moment)", wait)
	}
	c.setBreaker(b, actors.BreakerState_BREAKER_OPEN, time.Now().Add(20*time.Second))
	_, err = c.Route("llm", "", []string{"self"})
	if !errors.As(err, &w) || w.RetryAfter() < 6*time.Second || w.RetryAfter() > 7*time.Second {
		t.Fatalf("err %v, want a's cool-down left, about 7s", err)
	}
	c.setBreaker(a, actors.BreakerState_BREAKER_CLOSED, time.Time{})
	if got := route(t, c, "", "self"); got != "a" {
		t.Fatalf("a closed again, yet the chat went to %s", got)
	}
}
