package actors

import (
	"strings"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
)

// FallbackNode tries its children in order: a child that fails before its
// first chunk hands the chat to the next. With Resume, a child that fails
// after its answer started hands it on too, with the partial answer as the
// last assistant message, and the next child's output continues the same
// answer: the client sees one uninterrupted answer, nothing repeated.
// Without Resume such a failure ends the chat with its error.
type FallbackNode struct {
	Path     string
	Resume   bool
	Children []Node
}

func (n *FallbackNode) NodePath() string { return n.Path }

// capacity is the first child's: the others take what it cannot.
func (n *FallbackNode) capacity() int { return n.Children[0].capacity() }

func (n *FallbackNode) actors() int { return 1 + actorsOf(n.Children) }

func (n *FallbackNode) check(premade map[string]any) error { return checkAll(n.Children, premade) }

func (n *FallbackNode) spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID {
	f := &fallbackActor{node: n, t: t, next: next}
	props, am := t.props(n.Path, func(*actorMetrics) actor.Actor { return f }, &f.kids)
	f.am = am
	f.inFlight = t.metrics.inFlightOf(am)
	f.splices = t.metrics.splices.WithLabelValues(t.layout.Name, n.Path)
	return c.Spawn(props)
}

type fallbackActor struct {
	inFlight prometheus.Gauge
	node     *FallbackNode
	t        *incarnation
	next     *actor.PID
	am       *actorMetrics
	splices  prometheus.Counter
	kids     children
	entries  []*actor.PID

	chats map[string]*fallbackChat // by chat id
	subs  map[string]*fallbackChat // by the id of the current attempt
}

// fallbackChat is one chat's way through the children.
type fallbackChat struct {
	req     *ChatRequest // as it arrived, kept for the next attempt
	out     *actor.PID
	attempt int
	sub     string
	arrived int64
	// attemptStart is when the current attempt began.
	attemptStart int64
	begun        bool // Begin went out
	started      bool // output went out
	text         strings.Builder
	cancelled    bool
}

func (f *fallbackActor) Receive(c actor.Context) {
	if _, streaming := c.Message().(*Chunk); !streaming {
		// Only a chat's start and end change the count: not per chunk.
		defer func() { f.inFlight.Set(float64(len(f.chats))) }()
	}
	switch msg := c.Message().(type) {
	case *ChatRequest:
		st := &fallbackChat{req: msg, out: outputOf(msg, f.next), arrived: msg.PassedUnixNano}
		if st.arrived == 0 {
			st.arrived = time.Now().UnixNano()
		}
		f.chats[msg.ChatId] = st
		f.try(c, st)
	case *Cancel:
		if st := f.chats[msg.ChatId]; st != nil {
			st.cancelled = true
			c.Send(f.entries[st.attempt], &Cancel{ChatId: st.sub, Reason: msg.Reason})
		}
	case *Begin:
		if st := f.subs[msg.ChatId]; st != nil && !st.begun {
			st.begun = true
			c.Send(st.out, &Begin{ChatId: st.req.ChatId, ReplyTo: st.req.ReplyTo})
		}
	case *Chunk:
		st := f.subs[msg.ChatId]
		if st == nil {
			return
		}
		if !st.started {
			st.started = true
			// What the fallback added: the failed attempts before this one.
			f.am.firstChunk.Observe(float64(st.attemptStart-st.arrived) / 1e9)
		}
		if f.node.Resume {
			st.text.WriteString(msg.Text)
		}
		msg.ChatId = st.req.ChatId
		c.Send(st.out, msg)
	case *End:
		if st := f.subs[msg.ChatId]; st != nil {
			f.done(st)
			msg.ChatId = st.req.ChatId
			c.Send(st.out, msg)
		}
	case *Failure:
		if st := f.subs[msg.ChatId]; st != nil {
			f.failed(c, st, msg)
		}
	case *actor.Started:
		f.chats, f.subs = map[string]*fallbackChat{}, map[string]*fallbackChat{}
		f.kids.reset(f.t, f.node.Path)
		f.entries = f.kids.spawnAll(c, f.node.Children, c.Self(), f.entries)
	case *actor.Terminated:
		f.kids.terminated(msg.Who)
	case *actor.Restarting, *actor.Stopping:
		// The chats' state dies with this instance: each gets its answer.
		for _, st := range f.chats {
			c.Send(st.out, &Failure{ChatId: st.req.ChatId, Code: Code_CODE_UNAVAILABLE,
				Reason: "the layout was restarted", ReplyTo: st.req.ReplyTo})
		}
		f.chats, f.subs = map[string]*fallbackChat{}, map[string]*fallbackChat{}
		f.kids.forget()
	}
}

// try sends the chat to its current child, as a chat of its own.
func (f *fallbackActor) try(c actor.Context, st *fallbackChat) {
	req := proto.Clone(st.req).(*ChatRequest)
	req.ChatId = subChat(st.req.ChatId, st.attempt)
	if st.started {
		// The answer so far becomes the last assistant message, for the
		// next child to continue.
		req.History = append(req.History, &Message{Role: Role_ROLE_ASSISTANT, Content: st.text.String()})
	}
	st.sub = req.ChatId
	f.subs[st.sub] = st
	pass(nil, req)
	st.attemptStart = req.PassedUnixNano
	c.Send(f.entries[st.attempt], req)
}

func (f *fallbackActor) failed(c actor.Context, st *fallbackChat, msg *Failure) {
	delete(f.subs, st.sub)
	giveUp := st.cancelled || msg.Code == Code_CODE_CANCELED || msg.Code == Code_CODE_DEADLINE_EXCEEDED ||
		st.attempt+1 >= len(f.entries) || (st.started && !f.node.Resume)
	if giveUp {
		f.done(st)
		msg.ChatId = st.req.ChatId
		c.Send(st.out, msg)
		return
	}
	f.t.logger.Warn("fallback: trying the next child", "chat", st.req.ChatId, "actor", f.node.Path,
		"failed", f.node.Children[st.attempt].NodePath(), "reason", msg.Reason, "started", st.started)
	if st.started {
		f.splices.Inc()
	}
	st.attempt++
	f.try(c, st)
}

func (f *fallbackActor) done(st *fallbackChat) {
	delete(f.subs, st.sub)
	delete(f.chats, st.req.ChatId)
}
