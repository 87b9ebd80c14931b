package actors

import (
	"context"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// Reply is the receiving end of one chat's answer: a lightweight process in
// the actor system (like a future, no mailbox or goroutine of its own) that
// queues the chat's Begin, Chunk, End and Failure messages for the goroutine that
// serves the client. It accepts exactly one terminal message and drops
// everything after it, which is what makes every chat answered exactly once
// even when several actors race to fail it.
//
// The queue is unbounded by count but bounded by the chat's own output: a
// slow client must never block the actor that sends, which serves other
// chats too.
type Reply struct {
	system *actor.ActorSystem
	pid    *actor.PID

	mu       sync.Mutex
	queue    []any
	spare    []any
	terminal bool
	signal   chan struct{}
	// bufs back queue and spare until a batch outgrows them: most chats
	// arrive as a Begin, a Chunk and an End.
	bufs [2][4]any
}

// NewReply registers a reply process for a chat. The caller must Close it.
func NewReply(system *actor.ActorSystem, chatID string) *Reply {
	r := &Reply{system: system, signal: make(chan struct{}, 1)}
	r.queue, r.spare = r.bufs[0][:0], r.bufs[1][:0]
	pid, ok := system.ProcessRegistry.Add(r, "reply$"+chatID)
	if !ok {
		// A chat id is unique per node; a clash means a caller reused one.
		// Fall back to a fresh id rather than stealing another chat's answer.
		pid, _ = system.ProcessRegistry.Add(r, "reply$"+chatID+"$"+system.ProcessRegistry.NextId())
	}
	r.pid = pid
	return r
}

// PID is the address to put in ChatRequest.ReplyTo.
func (r *Reply) PID() *actor.PID { return r.pid }

// SendUserMessage implements actor.Process.
func (r *Reply) SendUserMessage(_ *actor.PID, message any) {
	_, msg, _ := actor.UnwrapEnvelope(message)
	terminal := false
	switch msg.(type) {
	case *Begin, *Chunk:
	case *End, *Failure:
		terminal = true
	default:
		return
	}
	r.mu.Lock()
	if r.terminal {
		r.mu.Unlock()
		return
	}
	r.terminal = terminal
	r.queue = append(r.queue, msg)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// SendSystemMessage implements actor.Process; a reply watches nothing.
func (r *Reply) SendSystemMessage(*actor.PID, any) {}

// Stop implements actor.Process.
func (r *Reply) Stop(*actor.PID) { r.Close() }

// Receive waits until messages are queued and returns them in order. The
// returned slice is only valid until the next call. It returns ctx's error
// when ctx ends first.
func (r *Reply) Receive(ctx context.Context) ([]any, error) {
	for {
		r.mu.Lock()
		if len(r.queue) > 0 {
			batch := r.queue
			r.queue, r.spare = r.spare[:0], batch
			r.mu.Unlock()
			return batch, nil
		}
		r.mu.Unlock()
		select {
		case <-r.signal:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Fail delivers a Failure from the receiving side, e.g. on a deadline, unless
// the chat already has its terminal message. It reports whether it did.
func (r *Reply) Fail(code Code, reason string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.terminal {
		return false
	}
	r.terminal = true
	r.queue = append(r.queue, &Failure{Code: code, Reason: reason})
	select {
	case r.signal <- struct{}{}:
	default:
	}
	return true
}

// Close unregisters the reply; messages sent to it afterwards go to dead
// letters.
func (r *Reply) Close() { r.system.ProcessRegistry.Remove(r.pid) }
