package gateway

import (
	"context"
	"sync"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// reply is the receiving end of one chat's answer: a process in the actor
// system, without a mailbox or goroutine of its own (as actors.Reply), that
// queues the chat's Begin, Chunk, End and Failure messages and takes exactly
// one terminal message, dropping what comes after it. Its reader waits for
// messages (Receive) while the chat is served by its HTTP handler; once the
// chat streams on a connection taken over from net/http, the reply calls
// the reader back instead (pushTo), so that no goroutine waits per stream.
//
// The queue is unbounded by count but bounded by the answer's size limit:
// a slow client must never block the actor that sends, which serves other
// chats too, and chunks past the limit would be cut anyway, so the reply
// keeps the one that crosses it (which cuts the answer) and drops the rest.
type reply struct {
	system *actor.ActorSystem
	pid    *actor.PID

	mu       sync.Mutex
	queue    []any
	spare    []any
	terminal bool
	room     int64 // bytes of chunks still kept; below zero, the limit was crossed
	signal   chan struct{}
	push     func()
	// bufs back queue and spare until a batch outgrows them: most chats
	// arrive as a Begin, a Chunk and an End.
	bufs [2][4]any
}

var _ actor.Process = (*reply)(nil)

// newReply registers a reply process for a chat whose answer may take
// maxBytes. The caller must Close it.
func newReply(system *actor.ActorSystem, chatID string, maxBytes int64) *reply {
	r := &reply{system: system, signal: make(chan struct{}, 1), room: maxBytes}
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

// SendUserMessage implements actor.Process.
func (r *reply) SendUserMessage(_ *actor.PID, message any) {
	_, msg, _ := actor.UnwrapEnvelope(message)
	terminal := false
	var size int64
	switch m := msg.(type) {
	case *actors.Begin:
	case *actors.Chunk:
		size = int64(len(m.Text) + len(m.ToolCalls))
	case *actors.End, *actors.Failure:
		terminal = true
	default:
		return
	}
	r.mu.Lock()
	if r.terminal || r.room < 0 && size > 0 {
		r.mu.Unlock()
		return
	}
	r.room -= size
	r.terminal = terminal
	r.queue = append(r.queue, msg)
	push := r.push
	r.mu.Unlock()
	if push != nil {
		push()
		return
	}
	select {
	case r.signal <- struct{}{}:
	default:
	}
}

// SendSystemMessage implements actor.Process; a reply watches nothing.
func (r *reply) SendSystemMessage(*actor.PID, any) {}

// Stop implements actor.Process.
func (r *reply) Stop(*actor.PID) { r.Close() }

// Receive waits until messages are queued and returns them in order. The
// returned slice is valid until the next Receive or take. It returns ctx's
// error when ctx ends first.
func (r *reply) Receive(ctx context.Context) ([]any, error) {
	for {
		if batch := r.take(); len(batch) > 0 {
			return batch, nil
		}
		select {
		case <-r.signal:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// take returns the messages queued now, maybe none, without waiting; the
// slice is valid until the next Receive or take.
func (r *reply) take() []any {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.queue) == 0 {
		return nil
	}
	batch := r.queue
	r.queue, r.spare = r.spare[:0], batch
	return batch
}

// pushTo makes the reply call f, on the sender's goroutine, after each
// message it queues, and reports whether messages are queued already.
func (r *reply) pushTo(f func()) (queued bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.push = f
	return len(r.queue) > 0
}

// Close unregisters the reply; messages sent to it afterwards go to dead
// letters.
func (r *reply) Close() { r.system.ProcessRegistry.Remove(r.pid) }
