package cluster

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

// capture is a process that keeps what it is sent.
type capture chan any

func (c capture) SendUserMessage(_ *actor.PID, m any) {
	_, msg, _ := actor.UnwrapEnvelope(m)
	c <- msg
}
func (c capture) SendSystemMessage(*actor.PID, any) {}
func (c capture) Stop(*actor.PID)                   {}

// captureMember makes a member's host address a process of the test's.
func captureMember(t *testing.T, c *Cluster, m *Member) capture {
	t.Helper()
	got := make(capture, 16)
	pid, ok := c.system.ProcessRegistry.Add(got, "capture-"+m.Name)
	if !ok {
		t.Fatal("capture name taken")
	}
	t.Cleanup(func() { c.system.ProcessRegistry.Remove(pid) })
	m.chats = pid
	return got
}

func next(t *testing.T, got capture) any {
	t.Helper()
	select {
	case msg := <-got:
		return msg
	case <-time.After(5 * time.Second):
		t.Fatal("nothing came")
		return nil
	}
}

func running(load *actors.NodeLoad) uint32 { return load.GetLayouts()[0].GetRunning() }

// Each member is told this node's load without the chats its own gateway
// sent here; the broadcast tells everybody the whole load.
func TestDirectReportsLeaveOutEachMembersChats(t *testing.T) {
	c, l := testCluster(t, 8, 0)
	toB := captureMember(t, c, c.addMember("b", 0, 0, 8, 0, true))
	toC := captureMember(t, c, c.addMember("c", 0, 0, 8, 0, true))
	ctx := context.Background()
	for _, origin := range []string{"b:1", "c:1", "c:1", ""} {
		if err := l.Admission.AcquireFor(ctx, origin); err != nil {
			t.Fatal(err)
		}
	}
	c.tellLoad(true)
	c.broadcastLoad(true)
	fromB, fromC := next(t, toB).(*actors.NodeLoad), next(t, toC).(*actors.NodeLoad)
	if running(fromB) != 3 || running(fromC) != 2 {
		t.Fatalf("b was told %d running (want 3: c's and this node's), c %d (want 2)", running(fromB), running(fromC))
	}
	var all actors.NodeLoad
	if err := proto.Unmarshal(c.lastLoad, &all); err != nil || running(&all) != 4 {
		t.Fatalf("broadcast %v running (%v), want 4", running(&all), err)
	}
	if fromB.Seq != fromC.Seq || fromB.Seq >= c.seq {
		t.Fatalf("direct reports carry seq %d and %d, want one seq, before the broadcast's %d", fromB.Seq, fromC.Seq, c.seq)
	}

	c.tellLoad(false)
	select {
	case msg := <-toB:
		t.Fatalf("b was told again with nothing changed: %v", msg)
	default:
	}
	// c's chat ends: b's view changes, c's does not; only b is told.
	l.Admission.ReleaseFor("c:1")
	c.tellLoad(false)
	if fromB := next(t, toB).(*actors.NodeLoad); running(fromB) != 2 {
		t.Fatalf("after c's chat ended b was told %d running, want 2", running(fromB))
	}
	select {
	case msg := <-toC:
		t.Fatalf("c was told again with nothing changed for it: %v", msg)
	default:
	}
	l.Admission.ReleaseFor("c:1")
	l.Admission.ReleaseFor("b:1")
	l.Admission.Release()
}

// A direct report reaches routing through the host actor.
func TestHostTakesDirectReports(t *testing.T) {
	c, _ := testCluster(t, 1, 0)
	m := c.addMember("b", 2, 0, 2, 0, true)
	c.system.Root.Send(c.host.pid, &actors.NodeLoad{Node: "b", Seq: 7, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 2, Running: 1, Healthy: true}}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		m.mu.Lock()
		others, seq := m.others["llm"], m.direct
		m.mu.Unlock()
		if seq == 7 && others == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("member's others %d at seq %d, want 1 at 7", others, seq)
		}
		time.Sleep(time.Millisecond)
	}
}

// A chat another gateway sent here holds its place until its answer is
// complete, and gives it back before the gateway hears so; a chat that
// finds no room is refused with the time this node expects to stay full.
func TestHostChats(t *testing.T) {
	c, l := testCluster(t, 1, 0)
	ask := func(id string) *actors.Reply {
		reply := actors.NewReply(c.system, id)
		t.Cleanup(reply.Close)
		c.system.Root.Send(c.host.pid, &actors.ChatRequest{ChatId: id, Layout: "llm", ReplyTo: reply.PID(),
			History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: "hi"}}})
		return reply
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reply := ask("one")
	var text string
	for done := false; !done; {
		batch, err := reply.Receive(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, msg := range batch {
			switch msg := msg.(type) {
			case *actors.Chunk:
				text += msg.Text
			case *actors.End:
				if r, q := l.Admission.Load(); r != 0 || q != 0 {
					t.Fatalf("at the answer's end the chat still holds a place (%d running, %d queued)", r, q)
				}
				done = true
			case *actors.Failure:
				t.Fatalf("failed: %s", msg.Reason)
			}
		}
	}
	if text != "hi" {
		t.Fatalf("answer %q", text)
	}

	fill(t, l, 1)
	batch, err := ask("two").Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := batch[0].(*actors.Failure)
	if !ok || f.Code != actors.Code_CODE_OVERLOADED || f.RetryAfterMs != uint32(l.Admission.RetryAfter().Milliseconds()) || f.RetryAfterMs == 0 {
		t.Fatalf("got %v, want an overload with the admission's Retry-After", batch[0])
	}
}

// The host asks the layout's breaker before it runs a chat another gateway
// sent, refuses it while the breaker is open with the time left, and tells
// the breaker how each chat ended: a model's errors open it, a probe that
// succeeds closes it.
func TestHostChatsAndTheBreaker(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	model := actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
		if failing.Load() {
			return &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: "the model server is unavailable"}
		}
		return emit("ok")
	})
	c, l := testClusterOf(t, model, 4, 0)
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	l.Breaker = actors.NewBreaker(actors.BreakerConfig{Failures: 2, Cooldown: 10 * time.Second}, clock, nil, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ask := func(id string) *actors.Failure {
		t.Helper()
		reply := actors.NewReply(c.system, id)
		defer reply.Close()
		c.system.Root.Send(c.host.pid, &actors.ChatRequest{ChatId: id, Layout: "llm", ReplyTo: reply.PID(),
			History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: "hi"}}})
		for {
			batch, err := reply.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, msg := range batch {
				switch msg := msg.(type) {
				case *actors.End:
					return nil
				case *actors.Failure:
					return msg
				}
			}
		}
	}
	waitState := func(want actors.BreakerState) {
		t.Helper()
		for l.Breaker.Status().State != want {
			if ctx.Err() != nil {
				t.Fatalf("breaker %s, want %s", l.Breaker.Status().State.Word(), want.Word())
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, id := range []string{"f1", "f2"} {
		if f := ask(id); f == nil || f.Code != actors.Code_CODE_UNAVAILABLE {
			t.Fatalf("%s: %v, want the model's error", id, f)
		}
	}
	waitState(actors.BreakerState_BREAKER_OPEN)
	mu.Lock()
	now = now.Add(4 * time.Second)
	mu.Unlock()
	if f := ask("refused"); f == nil || f.Code != actors.Code_CODE_CIRCUIT_OPEN || f.RetryAfterMs != 6000 {
		t.Fatalf("got %v, want CODE_CIRCUIT_OPEN with 6 s left", f)
	}

	failing.Store(false)
	mu.Lock()
	now = now.Add(6 * time.Second)
	mu.Unlock()
	if f := ask("probe"); f != nil {
		t.Fatalf("the probe failed: %v", f)
	}
	waitState(actors.BreakerState_BREAKER_CLOSED)
}

// A chat that runs past its time limit in the layout counts against it,
// as does any failure of the layout; a chat its gateway cancels before
// does not.
func TestHostTimeoutsCountForTheBreaker(t *testing.T) {
	hang := actors.ModelFunc(func(ctx context.Context, _ *actors.ChatRequest, _ func(string) error) error {
		<-ctx.Done()
		return ctx.Err()
	})
	c, l := testClusterOf(t, hang, 4, 0)
	l.Breaker = actors.NewBreaker(actors.BreakerConfig{Failures: 1}, nil, nil, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ask := func(id string, deadline time.Time, cancelFirst bool) {
		t.Helper()
		reply := actors.NewReply(c.system, id)
		defer reply.Close()
		req := &actors.ChatRequest{ChatId: id, Layout: "llm", ReplyTo: reply.PID(),
			History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: "hi"}}}
		if !deadline.IsZero() {
			req.DeadlineUnixNano = deadline.UnixNano()
		}
		c.system.Root.Send(c.host.pid, req)
		if cancelFirst {
			c.system.Root.Send(c.host.pid, &actors.Cancel{ChatId: id, Reason: "the client went away"})
		}
		for {
			batch, err := reply.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := batch[len(batch)-1].(*actors.Failure); ok {
				return
			}
		}
	}
	ask("cancelled", time.Time{}, true)
	ask("cancelled too", time.Time{}, true)
	// A hosted chat tells the breaker before it leaves the host's books.
	for {
		c.host.mu.Lock()
		n := len(c.host.chats)
		c.host.mu.Unlock()
		if n == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("the cancelled chats did not end on the host")
		}
		time.Sleep(time.Millisecond)
	}
	if s := l.Breaker.Status(); s.State != actors.BreakerState_BREAKER_CLOSED {
		t.Fatalf("breaker %s after cancelled chats, want closed", s.State.Word())
	}
	ask("timed out", time.Now().Add(50*time.Millisecond), false)
	for l.Breaker.Status().State != actors.BreakerState_BREAKER_OPEN {
		if ctx.Err() != nil {
			t.Fatal("a chat past its deadline did not open the breaker")
		}
		time.Sleep(time.Millisecond)
	}
}
