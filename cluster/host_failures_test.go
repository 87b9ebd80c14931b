package cluster

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/hashicorp/memberlist"

	"github.com/troupe-llm/troupe/actors"
)

// A chat for a layout this node does not serve (a gateway with an older
// view of the cluster, during a reload) is refused at once, as unavailable
// so that the gateway tries another node, and takes no place.
func TestHostRefusesALayoutItDoesNotServe(t *testing.T) {
	c, l := testCluster(t, 2, 0)
	reply := actors.NewReply(c.system, "elsewhere")
	defer reply.Close()
	c.system.Root.Send(c.host.pid, &actors.ChatRequest{ChatId: "elsewhere", Layout: "other", ReplyTo: reply.PID(),
		History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: "hi"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	batch, err := reply.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := batch[0].(*actors.Failure)
	if !ok || f.Code != actors.Code_CODE_UNAVAILABLE || !strings.Contains(f.Reason, "does not serve other") {
		t.Fatalf("got %v, want CODE_UNAVAILABLE naming the layout", batch[0])
	}
	c.host.mu.Lock()
	booked := len(c.host.chats)
	c.host.mu.Unlock()
	if r, q := l.Admission.Load(); booked != 0 || r != 0 || q != 0 {
		t.Fatalf("the refused chat is booked (%d) or holds a place (%d running, %d queued)", booked, r, q)
	}
}

// When a gateway's node goes away (it died, left, or restarted), the chats
// it sent here stop: nobody is left to read their answers, and they would
// hold the layout's places until their models ended on their own. The
// chats of other gateways go on.
func TestHostStopsTheChatsOfAGatewayThatWentAway(t *testing.T) {
	started := make(chan string, 4)
	stopped := make(chan string, 4)
	var cGone atomic.Bool
	hang := actors.ModelFunc(func(ctx context.Context, req *actors.ChatRequest, _ func(string) error) error {
		started <- req.ChatId
		<-ctx.Done()
		if req.ChatId == "from-c" && !cGone.Load() {
			t.Errorf("the chat of gateway c stopped while c was still there")
		}
		stopped <- req.ChatId
		return ctx.Err()
	})
	c, l := testClusterOf(t, hang, 4, 0)
	c.addMember("b", 0, 0, 4, 0, true)
	c.addMember("c", 0, 0, 4, 0, true)
	for _, id := range []string{"from-b", "from-c"} {
		// The gateway's reply address is on its own node, as the remote
		// link gives it; nothing listens there in this test.
		gateway := actor.NewPID(strings.TrimPrefix(id, "from-")+":1", "gateway")
		c.system.Root.Send(c.host.pid, &actors.ChatRequest{ChatId: id, Layout: "llm", ReplyTo: gateway,
			History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: "hi"}}})
	}
	for range 2 {
		receive(t, started, "the chats to start")
	}

	(*delegate)(c).NotifyLeave(&memberlist.Node{Name: "b"})
	if id := receive(t, stopped, "b's chat to stop"); id != "from-b" {
		t.Fatalf("%s stopped when b went away", id)
	}
	waitRunning(t, l, 1)

	cGone.Store(true)
	c.peerDisconnected("c:1")
	if id := receive(t, stopped, "c's chat to stop"); id != "from-c" {
		t.Fatalf("%s stopped when c went away", id)
	}
	waitRunning(t, l, 0)
}

func receive(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case s := <-ch:
		return s
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		return ""
	}
}

// waitRunning waits until the layout runs n chats, none queued.
func waitRunning(t *testing.T, l *actors.Layout, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r, q := l.Admission.Load()
		if int(r) == n && q == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the layout runs %d chats (%d queued), want %d", r, q, n)
		}
		time.Sleep(time.Millisecond)
	}
}
