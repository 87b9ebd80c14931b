package gateway

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// A reply takes one terminal message: what any actor sends after it is
// dropped, which is what answers every chat exactly once. Waiting for
// messages and being called back for them give the same messages in order.
func TestReply(t *testing.T) {
	system := actor.NewActorSystem()
	defer system.Shutdown()
	r := newReply(system, "x", 1<<20)
	defer r.Close()
	send := func(msg any) { system.Root.Send(r.pid, msg) }
	send(&actors.Chunk{Text: "a"})
	batch, err := r.Receive(context.Background())
	if err != nil || len(batch) != 1 || batch[0].(*actors.Chunk).Text != "a" {
		t.Fatalf("got %v, %v", batch, err)
	}
	if got := r.take(); got != nil {
		t.Fatalf("take with nothing queued: %v", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := r.Receive(ctx); err == nil {
		t.Fatal("Receive with nothing queued and its context ended returned no error")
	}

	send(&actors.Chunk{Text: "b"})
	var calls atomic.Int32
	if !r.pushTo(func() { calls.Add(1) }) {
		t.Fatal("pushTo did not say a message was queued")
	}
	send(&actors.Chunk{Text: "c"})
	send(&actors.Failure{Reason: "first"})
	send(&actors.End{})
	send(&actors.Chunk{Text: "late"})
	if n := calls.Load(); n != 2 {
		t.Fatalf("called back %d times, want 2 (a chunk, a failure; nothing after it)", n)
	}
	batch = r.take()
	if len(batch) != 3 || batch[0].(*actors.Chunk).Text != "b" || batch[1].(*actors.Chunk).Text != "c" || batch[2].(*actors.Failure).Reason != "first" {
		t.Fatalf("got %v", batch)
	}
}
