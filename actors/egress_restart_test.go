package actors_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// recorder is a chat's reply that keeps every message it is sent, terminal
// or not: Reply drops what follows a terminal, and this test must see
// whether anything does.
type recorder struct {
	mu      sync.Mutex
	changed chan struct{}
	msgs    []any
}

func newRecorder(system *actor.ActorSystem, id string) (*recorder, *actor.PID) {
	r := &recorder{changed: make(chan struct{}, 1)}
	pid, ok := system.ProcessRegistry.Add(r, id)
	if !ok {
		panic("recorder " + id + " registered twice")
	}
	return r, pid
}

func (r *recorder) SendUserMessage(_ *actor.PID, m any) {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}
func (r *recorder) SendSystemMessage(*actor.PID, any) {}
func (r *recorder) Stop(*actor.PID)                   {}

// seen returns the text and the terminal messages recorded so far.
func (r *recorder) seen() (text string, terminals []any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		switch m := m.(type) {
		case *actors.Chunk:
			text += m.Text
		case *actors.End, *actors.Failure:
			terminals = append(terminals, m)
		}
	}
	return text, terminals
}

func (r *recorder) waitUntil(ctx context.Context, t *testing.T, what string, cond func(text string, terminals []any) bool) {
	t.Helper()
	for {
		if cond(r.seen()) {
			return
		}
		select {
		case <-r.changed:
		case <-ctx.Done():
			text, terminals := r.seen()
			t.Fatalf("waiting until %s: %v (text %q, terminals %v)", what, ctx.Err(), text, terminals)
		}
	}
}

// An egress filter restarted while chats stream through it: the chat that
// crashed it fails, every other chat in flight ends exactly once with a
// short error (its stream state died with the old instance, and going on
// from a fresh one would corrupt its text), and the restarted filter
// serves new chats.
func TestEgressFilterRestartedWithChatsInFlight(t *testing.T) {
	gate := make(chan struct{})
	var generations sync.WaitGroup
	// The model sends two runes, waits at the gate, then sends the rest;
	// "!" goes straight through, for the filter to panic on.
	model := actors.ModelFunc(func(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
		in := actors.LastUserMessage(req.History)
		if in == "!" || len(in) < 3 {
			return emit(in)
		}
		generations.Add(1)
		defer generations.Done()
		if err := emit(in[:2]); err != nil {
			return err
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		return emit(in[2:])
	})
	h := startLayout(t, actors.PipelineSpec{
		Model: actors.ModelSpec{New: func() (actors.Model, error) { return model, nil }},
		Egress: []actors.FilterSpec{filterSpec("egress/0/pair", func() (actors.Filter, error) {
			return &pairFilter{panicOn: "!"}, nil
		})},
		Supervision: actors.Supervision{InitialBackoff: time.Millisecond},
	})
	ctx := withTimeout(t, 10*time.Second)

	const inFlight = 3
	var recorders []*recorder
	for i := range inFlight {
		id := "streaming-" + string(rune('a'+i))
		rec, pid := newRecorder(h.system, id)
		t.Cleanup(func() { h.system.ProcessRegistry.Remove(pid) })
		recorders = append(recorders, rec)
		h.system.Root.Send(h.layout.Root, &actors.ChatRequest{
			ChatId:  id,
			History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: "abcdef"}},
			ReplyTo: pid,
		})
	}
	for _, rec := range recorders {
		rec.waitUntil(ctx, t, "the first pair is through the filter", func(text string, _ []any) bool { return text == "ba" })
	}

	if got := h.chat(ctx, "!"); got.failure == nil {
		t.Fatalf("the chat that crashed the filter: got %+v, want a failure", got)
	}
	close(gate)
	generations.Wait()
	// The restarted filter serves a new chat; its answer comes after every
	// message of the earlier chats, which went through the same mailbox.
	if got := h.chat(ctx, "wxyz"); got.failure != nil || got.text != "xwzy" {
		t.Fatalf("a chat after the restart: got %+v", got)
	}
	for i, rec := range recorders {
		text, terminals := rec.seen()
		if len(terminals) != 1 {
			t.Fatalf("chat %d in flight ended %d times: %v", i, len(terminals), terminals)
		}
		f, ok := terminals[0].(*actors.Failure)
		if !ok || !strings.Contains(f.Reason, "restarted mid-answer") {
			t.Fatalf("chat %d in flight ended with %v, want a failure saying the filter restarted", i, terminals[0])
		}
		if text != "ba" {
			t.Fatalf("chat %d in flight: text %q, want only what passed before the restart (\"ba\")", i, text)
		}
	}
}
