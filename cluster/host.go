package cluster

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// hostName is the name of the actor on every node that takes chats from
// other nodes' gateways.
const hostName = "troupe/chats"

// host runs chats that other nodes' gateways send to this node. For each it
// takes a place in the local layout's admission (so local and remote chats
// share one bound), for the gateway's node (so that node can be told the
// load of everybody else), relays the answer back, and releases the place
// when the chat ends; it cancels the chats of a gateway node that goes
// away. It also takes the load reports members send this node directly.
type host struct {
	system  *actor.ActorSystem
	layouts *actors.LayoutSet
	logger  *slog.Logger
	metrics *metrics
	pid     *actor.PID
	onLoad  func(*actors.NodeLoad)

	mu       sync.Mutex
	chats    map[string]*hostedChat // by chat id
	draining bool
	idle     chan struct{} // closed when draining and no chat is left
}

type hostedChat struct {
	req    *actors.ChatRequest
	layout *actors.Layout
	cancel context.CancelCauseFunc
	// gateway is the remote address of the gateway's node: req.ReplyTo
	// names the chat's relay once the chat runs.
	gateway string
}

var errGatewayGone = errors.New("the gateway node went away")

// errShuttingDown cancels the chats a drain could not wait for.
var errShuttingDown = errors.New("this node is shutting down")

func startHost(system *actor.ActorSystem, layouts *actors.LayoutSet, logger *slog.Logger, m *metrics, onLoad func(*actors.NodeLoad)) *host {
	h := &host{system: system, layouts: layouts, logger: logger, metrics: m, onLoad: onLoad, chats: map[string]*hostedChat{}, idle: make(chan struct{})}
	pid, err := system.Root.SpawnNamed(actor.PropsFromFunc(h.receive), hostName)
	if err != nil {
		panic("cluster: spawning the chat host: " + err.Error())
	}
	h.pid = pid
	return h
}

// receive is the host actor. It only books chats in and out; waiting for
// admission happens on each chat's goroutine, so a full layout never blocks
// the host's mailbox.
func (h *host) receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *actors.ChatRequest:
		h.start(msg)
	case *actors.Cancel:
		h.mu.Lock()
		hc := h.chats[msg.ChatId]
		h.mu.Unlock()
		if hc != nil {
			hc.cancel(errors.New(msg.Reason))
		}
	case *actors.NodeLoad:
		h.onLoad(msg)
	}
}

func (h *host) start(req *actors.ChatRequest) {
	h.metrics.received.Inc()
	l, _ := h.layouts.Get(req.Layout)
	if l == nil {
		h.system.Root.Send(req.ReplyTo, &actors.Failure{ChatId: req.ChatId, Code: actors.Code_CODE_UNAVAILABLE,
			Reason: "this node does not serve " + req.Layout, ReplyTo: req.ReplyTo})
		return
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	hc := &hostedChat{req: req, layout: l, cancel: cancel, gateway: req.ReplyTo.GetAddress()}
	h.mu.Lock()
	if h.draining {
		h.mu.Unlock()
		cancel(nil)
		h.system.Root.Send(req.ReplyTo, &actors.Failure{ChatId: req.ChatId, Code: actors.Code_CODE_OVERLOADED,
			Reason: "this node is shutting down", ReplyTo: req.ReplyTo})
		return
	}
	if _, dup := h.chats[req.ChatId]; dup {
		h.mu.Unlock()
		cancel(nil)
		return
	}
	h.chats[req.ChatId] = hc
	h.mu.Unlock()
	go h.run(ctx, hc)
}

// run is one hosted chat's owner on this node.
func (h *host) run(ctx context.Context, hc *hostedChat) {
	defer func() {
		h.mu.Lock()
		delete(h.chats, hc.req.ChatId)
		if h.draining && len(h.chats) == 0 {
			close(h.idle)
		}
		h.mu.Unlock()
		hc.cancel(nil)
	}()
	req, gateway := hc.req, hc.req.ReplyTo
	ticket, wait, ok := hc.layout.Breaker.Admit()
	if !ok {
		h.system.Root.Send(gateway, &actors.Failure{ChatId: req.ChatId, Code: actors.Code_CODE_CIRCUIT_OPEN,
			Reason: req.Layout + " keeps failing on this node and is out of rotation for now", ReplyTo: gateway,
			RetryAfterMs: uint32(min(wait.Milliseconds(), 1<<31))})
		return
	}
	verdict := actors.VerdictNone
	defer func() { ticket.Done(verdict) }()
	admission, origin := hc.layout.Admission, gateway.GetAddress()
	if err := admission.AcquireFor(ctx, origin); err != nil {
		f := &actors.Failure{ChatId: req.ChatId, Code: actors.Code_CODE_CANCELED, Reason: "the chat was cancelled", ReplyTo: gateway}
		if errors.Is(err, actors.ErrOverloaded) {
			f.Code, f.Reason = actors.Code_CODE_OVERLOADED, "this node is full"
			f.RetryAfterMs = uint32(admission.RetryAfter().Milliseconds())
		}
		h.system.Root.Send(gateway, f)
		return
	}
	// The place is free again as soon as the answer is complete, before
	// the gateway hears of it: the gateway counts the chat until then, so
	// a chat it sends next never finds this place still taken.
	var once sync.Once
	release := func() { once.Do(func() { admission.ReleaseFor(origin) }) }
	defer release()

	// The relay is the chat's reply address on this node: it forwards the
	// answer to the gateway and tells us when it ended.
	relay := newRelay(h.system, req.ChatId, gateway, release)
	defer relay.close()
	req.ReplyTo = relay.pid
	stopWatch := context.AfterFunc(hc.layout.Epoch().Context(), func() {
		relay.fail(actors.Code_CODE_UNAVAILABLE, "the layout failed")
	})
	defer stopWatch()
	h.system.Root.Send(hc.layout.Root, req)
	select {
	case <-relay.done:
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), errShuttingDown) {
			// Its user is told why, not that it was cancelled.
			relay.cancelled.Store("the node running this chat is shutting down")
		}
		h.system.Root.Send(hc.layout.Root, &actors.Cancel{ChatId: req.ChatId, Reason: context.Cause(ctx).Error()})
		// The layout answers a cancelled chat promptly; the relay passes
		// that on unless the gateway is gone.
		select {
		case <-relay.done:
		case <-hc.layout.Epoch().Context().Done():
		}
	}
	verdict = relay.verdict()
	if verdict == actors.VerdictNone && req.DeadlineUnixNano > 0 && !time.Now().Before(time.Unix(0, req.DeadlineUnixNano)) {
		// Cancelled by its gateway at its time limit: the layout was
		// still at it, which the breaker counts as a failure.
		verdict = actors.VerdictFailure
	}
}

// gatewayGone cancels the chats whose gateway is at a remote address that
// went away: nobody is left to read their answers.
func (h *host) gatewayGone(address string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hc := range h.chats {
		if hc.gateway == address {
			hc.cancel(errGatewayGone)
		}
	}
}

// drain refuses new chats from now on.
func (h *host) drain() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.draining {
		h.draining = true
		if len(h.chats) == 0 {
			close(h.idle)
		}
	}
}

// wait drains and waits for the hosted chats to end; when ctx ends first it
// cancels them and waits for their goroutines.
func (h *host) wait(ctx context.Context) error {
	h.drain()
	select {
	case <-h.idle:
		return nil
	case <-ctx.Done():
	}
	h.mu.Lock()
	for _, hc := range h.chats {
		hc.cancel(errShuttingDown)
	}
	h.mu.Unlock()
	<-h.idle
	return ctx.Err()
}

// stop cancels every hosted chat, waits for their goroutines, and stops the
// host actor.
func (h *host) stop() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = h.wait(ctx)
	h.system.Root.Stop(h.pid)
}

// relay forwards one hosted chat's answer to its gateway and closes done at
// the chat's terminal message. Like actors.Reply it is a bare process, so a
// chunk costs one function call on this node.
type relay struct {
	system  *actor.ActorSystem
	chatID  string
	pid     *actor.PID
	gateway *actor.PID
	ended   func() // called before the terminal message goes on
	once    sync.Once
	done    chan struct{}
	// ending is the verdict of the chat's terminal message, set once
	// before done is closed.
	ending actors.Verdict
	// cancelled is why this node cancelled the chat, when its gateway
	// must hear that rather than the layout's "cancelled".
	cancelled atomic.Value // string
}

func newRelay(system *actor.ActorSystem, chatID string, gateway *actor.PID, ended func()) *relay {
	r := &relay{system: system, chatID: chatID, gateway: gateway, ended: ended, done: make(chan struct{})}
	r.pid, _ = system.ProcessRegistry.Add(r, "relay$"+chatID+"$"+system.ProcessRegistry.NextId())
	return r
}

func (r *relay) SendUserMessage(_ *actor.PID, message any) {
	_, msg, _ := actor.UnwrapEnvelope(message)
	select {
	case <-r.done:
		return
	default:
	}
	switch m := msg.(type) {
	case *actors.Begin:
		m.ReplyTo = r.gateway
	case *actors.Chunk:
		m.ReplyTo = r.gateway
	case *actors.End:
		m.ReplyTo = r.gateway
		r.ended()
		defer r.finish(actors.VerdictSuccess)
	case *actors.Failure:
		m.ReplyTo = r.gateway
		if why, _ := r.cancelled.Load().(string); why != "" && m.Code == actors.Code_CODE_CANCELED {
			m.Reason = why
		}
		r.ended()
		defer r.finish(actors.VerdictOf(m.Code))
	default:
		return
	}
	r.system.Root.Send(r.gateway, msg)
}

func (r *relay) fail(code actors.Code, reason string) {
	r.SendUserMessage(r.pid, &actors.Failure{ChatId: r.chatID, Code: code, Reason: reason})
}

// finish ends the relay; the first terminal message's verdict stands.
func (r *relay) finish(v actors.Verdict) {
	r.once.Do(func() {
		r.ending = v
		close(r.done)
	})
}

// verdict is the chat's verdict once done is closed, VerdictNone before.
func (r *relay) verdict() actors.Verdict {
	select {
	case <-r.done:
		return r.ending
	default:
		return actors.VerdictNone
	}
}

func (r *relay) SendSystemMessage(*actor.PID, any) {}
func (r *relay) Stop(*actor.PID)                   { r.finish(actors.VerdictNone) }
func (r *relay) close()                            { r.system.ProcessRegistry.Remove(r.pid) }
