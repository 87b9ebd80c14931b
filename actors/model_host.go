package actors

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
)

// modelHost is the actor that hosts one Model instance. Each chat's
// generation runs on a goroutine the host owns, so the mailbox stays free for
// Cancel and for other chats; the goroutine reports back with a message.
//
// The host runs at most capacity chats at once and keeps up to queueLimit
// more waiting, in order; past that it fails a chat as overloaded, which a
// fallback takes as its cue for the next child. A chat's place is free only
// when its generation has returned, so the model never runs more than its
// capacity, even while a cancelled generation winds down.
type modelHost struct {
	model  Model
	next   *actor.PID // where output goes unless a request says: the first egress filter, or nil for the reply
	logger *slog.Logger
	am     *actorMetrics
	// cancelled observes how long a generation takes to return after its
	// chat was cancelled: how fast an upstream request is closed.
	cancelled prometheus.Observer
	// capacity 0 runs every chat at once.
	capacity, queueLimit int
	inFlight             prometheus.Gauge // nil in tests that build a host by hand

	inflight map[string]*generation
	pending  []*ChatRequest
	running  sync.WaitGroup // this instance's generations, for Close
}

// generationDone tells the host a generation goroutine has finished.
type generationDone struct{ chatID string }

// modelCrashed is sent by a generation goroutine whose Model panicked: the
// host then panics in its own Receive, so that its supervisor restarts it with
// a fresh Model, as it would for any other failure of the actor.
type modelCrashed struct {
	reason any
	stack  []byte
}

// Why a generation was stopped before its end, first reason first.
const (
	stopCancelled int32 = iota + 1
	stopRestarted
)

func (h *modelHost) Receive(c actor.Context) {
	if h.inFlight != nil {
		defer func() { h.inFlight.Set(float64(len(h.inflight) + len(h.pending))) }()
	}
	switch msg := c.Message().(type) {
	case *ChatRequest:
		h.start(c, msg)
	case *Cancel:
		if g, ok := h.inflight[msg.ChatId]; ok {
			g.stop(stopCancelled)
			return
		}
		for i, req := range h.pending {
			if req.ChatId == msg.ChatId {
				h.pending = append(h.pending[:i], h.pending[i+1:]...)
				h.fail(c, req, Code_CODE_CANCELED, "the chat was cancelled")
				return
			}
		}
	case *generationDone:
		if g, ok := h.inflight[msg.chatID]; ok {
			g.cancel()
			delete(h.inflight, msg.chatID)
		}
		if len(h.pending) > 0 && h.room() {
			req := h.pending[0]
			h.pending = h.pending[1:]
			h.run(c, req)
		}
	case *modelCrashed:
		panic(fmt.Sprintf("model panicked: %v", msg.reason))
	case *actor.Restarting, *actor.Stopping:
		// The running generations belong to this instance; each ends with a
		// Failure sent by its own goroutine, so its chat is still answered.
		for id, g := range h.inflight {
			g.stop(stopRestarted)
			delete(h.inflight, id)
		}
		for _, req := range h.pending {
			h.fail(c, req, Code_CODE_UNAVAILABLE, "the model was restarted")
		}
		h.pending = nil
		h.release()
	}
}

func (h *modelHost) room() bool { return h.capacity <= 0 || len(h.inflight) < h.capacity }

func (h *modelHost) fail(c actor.Context, req *ChatRequest, code Code, reason string) {
	c.Send(outputOf(req, h.next), &Failure{ChatId: req.ChatId, Code: code, Reason: reason, ReplyTo: req.ReplyTo})
}

// release closes the instance once its cancelled generations have returned,
// so that a kind holding connections never has them closed under a request
// still winding down. The goroutine ends with the last generation, which a
// cancelled context ends promptly.
func (h *modelHost) release() {
	if _, ok := h.model.(io.Closer); !ok {
		return
	}
	model := h.model
	go func() {
		h.running.Wait()
		CloseInstance(model)
	}()
}

func (h *modelHost) start(c actor.Context, req *ChatRequest) {
	if _, dup := h.inflight[req.ChatId]; dup {
		return
	}
	if req.PassedUnixNano == 0 {
		// The model is the chat's first actor: its share starts here.
		req.PassedUnixNano = time.Now().UnixNano()
	}
	if !h.room() {
		if len(h.pending) >= h.queueLimit {
			h.fail(c, req, Code_CODE_OVERLOADED, "the model is busy")
			return
		}
		h.pending = append(h.pending, req)
		return
	}
	h.run(c, req)
}

func (h *modelHost) run(c actor.Context, req *ChatRequest) {
	g := &generation{
		system:    c.ActorSystem(),
		self:      c.Self(),
		next:      outputOf(req, h.next),
		req:       req,
		logger:    h.logger,
		done:      &h.running,
		cancelled: h.cancelled,
	}
	if h.am != nil {
		g.firstChunk = h.am.firstChunk
	}
	if h.inflight == nil {
		h.inflight = map[string]*generation{}
	}
	// One context per generation, its cause kept aside: a cancel-cause
	// context with a deadline context under it costs twice the memory for
	// as long as the chat streams.
	var ctx context.Context
	if req.DeadlineUnixNano > 0 {
		ctx, g.cancel = context.WithDeadline(context.Background(), time.Unix(0, req.DeadlineUnixNano))
	} else {
		ctx, g.cancel = context.WithCancel(context.Background())
	}
	h.inflight[req.ChatId] = g
	h.running.Add(1)
	go g.run(ctx, h.model)
}

// generation is one chat's run of a model, on its own goroutine. It sends the
// chat's Begin, Chunks and exactly one End or Failure.
type generation struct {
	system *actor.ActorSystem
	self   *actor.PID
	next   *actor.PID
	req    *ChatRequest
	logger *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	why    atomic.Int32 // stopCancelled or stopRestarted, once stopped
	// stoppedAt is when the first stop came, in Unix nanoseconds.
	stoppedAt atomic.Int64
	carry     []byte // an incomplete UTF-8 sequence at the end of the last emit
	// end collects what Output reports, sent with the chat's End.
	end       End
	out       Output
	done      *sync.WaitGroup
	cancelled prometheus.Observer
	// firstChunk observes the time from the request's arrival (its
	// stamp) to the first chunk: the model's share of the time to first
	// chunk, a queue here included.
	firstChunk prometheus.Observer
	emitted    bool
}

// stop cancels a generation for the first reason given.
func (g *generation) stop(why int32) {
	if g.why.CompareAndSwap(0, why) {
		g.stoppedAt.Store(time.Now().UnixNano())
	}
	g.cancel()
}

func (g *generation) run(ctx context.Context, model Model) {
	root := g.system.Root
	id, replyTo := g.req.ChatId, g.req.ReplyTo
	defer g.done.Done()
	root.Send(g.next, &Begin{ChatId: id, ReplyTo: replyTo})

	g.out.g = g
	g.ctx = ctx
	err := g.generate(context.WithValue(ctx, outputKey{}, &g.out), model)
	if g.why.Load() == stopCancelled && g.cancelled != nil {
		g.cancelled.Observe(time.Since(time.Unix(0, g.stoppedAt.Load())).Seconds())
	}
	var crash *panicError
	switch {
	case errors.As(err, &crash):
		g.logger.Error("model panicked", "chat", id, "panic", crash.reason)
		root.Send(g.next, &Failure{ChatId: id, Code: Code_CODE_INTERNAL, Reason: "the model failed", ReplyTo: replyTo})
		root.Send(g.self, &modelCrashed{reason: crash.reason, stack: crash.stack})
	case ctx.Err() != nil:
		root.Send(g.next, g.stopped(ctx))
	case err != nil:
		// The raw error may carry an upstream's internals: it goes to the
		// log, and the user gets the short reason of an *Error.
		g.logger.Warn("model failed", "chat", id, "err", err)
		f := failureFor(id, err)
		f.ReplyTo = replyTo
		root.Send(g.next, f)
	default:
		if len(g.carry) > 0 {
			root.Send(g.next, &Chunk{ChatId: id, Text: string(utf8.RuneError), ReplyTo: replyTo})
		}
		end := &g.end
		end.ChatId, end.ReplyTo = id, replyTo
		root.Send(g.next, end)
	}
	root.Send(g.self, &generationDone{chatID: id})
}

// sendToolCalls sends a tool_calls delta in order with the text. A sequence
// of text cut at the end of the last emit stays held: it belongs to the text
// that follows.
func (g *generation) sendToolCalls(delta string) error {
	if err := g.ctx.Err(); err != nil {
		return err
	}
	g.first()
	g.system.Root.Send(g.next, &Chunk{ChatId: g.req.ChatId, ToolCalls: delta, ReplyTo: g.req.ReplyTo})
	return nil
}

type panicError struct {
	reason any
	stack  []byte
}

func (p *panicError) Error() string { return fmt.Sprintf("panic: %v", p.reason) }

func (g *generation) generate(ctx context.Context, model Model) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{reason: r, stack: debug.Stack()}
		}
	}()
	return model.Generate(ctx, g.req, func(text string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if text = g.valid(text); text != "" {
			first := !g.emitted
			g.first()
			g.system.Root.Send(g.next, &Chunk{ChatId: g.req.ChatId, Text: text, ReplyTo: g.req.ReplyTo})
			if first {
				// Let the actors and the gateway pass the first chunk on
				// now: a model reading a fast upstream never blocks, and on
				// a busy core would otherwise decode its whole answer
				// before anyone else runs (measured: the first token then
				// reached the client only with the last).
				runtime.Gosched()
			}
		}
		return nil
	})
}

// valid makes a model's output valid UTF-8, as protobuf strings must be: a
// sequence cut between two emits is joined, and invalid bytes become U+FFFD.
func (g *generation) valid(text string) string {
	if len(g.carry) == 0 && utf8.ValidString(text) {
		return text
	}
	b := append(g.carry, text...)
	g.carry = nil
	// Keep back a trailing sequence that may still be completed.
	for i := len(b) - 1; i >= 0 && i >= len(b)-utf8.UTFMax; i-- {
		if utf8.RuneStart(b[i]) {
			if !utf8.FullRune(b[i:]) {
				g.carry = append([]byte(nil), b[i:]...)
				b = b[:i]
			}
			break
		}
	}
	return string(bytesToValidUTF8(b))
}

func bytesToValidUTF8(b []byte) []byte {
	if utf8.Valid(b) {
		return b
	}
	out := make([]byte, 0, len(b)+8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size == 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
		} else {
			out = append(out, b[:size]...)
		}
		b = b[size:]
	}
	return out
}

// first records the model's share of the time to first chunk, once.
func (g *generation) first() {
	if g.emitted {
		return
	}
	g.emitted = true
	if g.firstChunk != nil && g.req.PassedUnixNano > 0 {
		g.firstChunk.Observe(float64(time.Now().UnixNano()-g.req.PassedUnixNano) / 1e9)
	}
}

// stopped is the Failure of a generation whose context ended.
func (g *generation) stopped(ctx context.Context) *Failure {
	id, replyTo := g.req.ChatId, g.req.ReplyTo
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return &Failure{ChatId: id, Code: Code_CODE_DEADLINE_EXCEEDED, Reason: "the chat ran past its deadline", ReplyTo: replyTo}
	}
	if g.why.Load() == stopRestarted {
		return &Failure{ChatId: id, Code: Code_CODE_UNAVAILABLE, Reason: "the model was restarted", ReplyTo: replyTo}
	}
	return &Failure{ChatId: id, Code: Code_CODE_CANCELED, Reason: "the chat was cancelled", ReplyTo: replyTo}
}
