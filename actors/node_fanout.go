package actors

import (
	"fmt"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
)

// Merge modes of a fan-out.
const (
	// MergeFirst streams the first child to produce a chunk and cancels
	// the others: hedging against slow replicas.
	MergeFirst = "first"
	// MergeAll streams every child's answer, one after another, each
	// under its child's label.
	MergeAll = "all"
)

// FanoutNode sends each chat to all its children at once. If every child
// fails, the chat gets one error.
type FanoutNode struct {
	Path     string
	Merge    string
	Children []Node
	// Labels name the children's answers with MergeAll.
	Labels []string
}

func (n *FanoutNode) NodePath() string { return n.Path }

// capacity is the smallest child's: every chat runs on all of them.
func (n *FanoutNode) capacity() int { return minCapacity(n.Children) }

func (n *FanoutNode) actors() int { return 1 + actorsOf(n.Children) }

func (n *FanoutNode) check(premade map[string]any) error { return checkAll(n.Children, premade) }

func (n *FanoutNode) spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID {
	f := &fanoutActor{node: n, t: t, next: next}
	props, am := t.props(n.Path, func(*actorMetrics) actor.Actor { return f }, &f.kids)
	f.am = am
	f.inFlight = t.metrics.inFlightOf(am)
	return c.Spawn(props)
}

type fanoutActor struct {
	inFlight prometheus.Gauge
	node     *FanoutNode
	t        *incarnation
	next     *actor.PID
	am       *actorMetrics
	kids     children
	entries  []*actor.PID

	chats map[string]*fanoutChat // by chat id
	subs  map[string]fanoutSub   // by each child's chat id
}

type fanoutSub struct {
	chat  *fanoutChat
	child int
}

// fanoutChat is one chat's runs on the children.
type fanoutChat struct {
	req      *ChatRequest
	out      *actor.PID
	arrived  int64
	runs     []fanoutRun
	winner   int // MergeFirst: the child streaming, -1 before
	current  int // MergeAll: the child whose answer is being written
	begun    bool
	failed   int
	last     *Failure
	usage    End
	sections int          // MergeAll: labels written
	errors   []failedPart // MergeAll: failures not written yet
}

// fanoutRun is one child's run: with MergeAll, what it said while an
// earlier child's answer was still being written waits here.
type fanoutRun struct {
	held     []any
	done     bool
	labelled bool
}

func (f *fanoutActor) Receive(c actor.Context) {
	if _, streaming := c.Message().(*Chunk); !streaming {
		// Only a chat's start and end change the count: not per chunk.
		defer func() { f.inFlight.Set(float64(len(f.chats))) }()
	}
	switch msg := c.Message().(type) {
	case *ChatRequest:
		f.start(c, msg)
	case *Cancel:
		if st := f.chats[msg.ChatId]; st != nil {
			f.cancelRuns(c, st, -1, msg.Reason)
			f.finish(c, st, &Failure{ChatId: st.req.ChatId, Code: Code_CODE_CANCELED, Reason: "the chat was cancelled", ReplyTo: st.req.ReplyTo})
		}
	case *Begin, *Chunk, *End, *Failure:
		m := msg.(ChatMessage)
		sub, ok := f.subs[m.GetChatId()]
		if !ok {
			return
		}
		if f.node.Merge == MergeAll {
			f.all(c, sub, msg)
		} else {
			f.first(c, sub, msg)
		}
	case *actor.Started:
		f.chats, f.subs = map[string]*fanoutChat{}, map[string]fanoutSub{}
		f.kids.reset(f.t, f.node.Path)
		f.entries = f.kids.spawnAll(c, f.node.Children, c.Self(), f.entries)
	case *actor.Terminated:
		f.kids.terminated(msg.Who)
	case *actor.Restarting, *actor.Stopping:
		for _, st := range f.chats {
			c.Send(st.out, &Failure{ChatId: st.req.ChatId, Code: Code_CODE_UNAVAILABLE,
				Reason: "the layout was restarted", ReplyTo: st.req.ReplyTo})
		}
		f.chats, f.subs = map[string]*fanoutChat{}, map[string]fanoutSub{}
		f.kids.forget()
	}
}

func (f *fanoutActor) start(c actor.Context, req *ChatRequest) {
	st := &fanoutChat{req: req, out: outputOf(req, f.next), arrived: req.PassedUnixNano, winner: -1,
		runs: make([]fanoutRun, len(f.entries))}
	f.chats[req.ChatId] = st
	pass(nil, req)
	for i, e := range f.entries {
		sub := proto.Clone(req).(*ChatRequest)
		sub.ChatId = subChat(req.ChatId, i)
		f.subs[sub.ChatId] = fanoutSub{chat: st, child: i}
		c.Send(e, sub)
	}
}

// first merges by taking the first child that produces a chunk.
func (f *fanoutActor) first(c actor.Context, sub fanoutSub, msg any) {
	st, i := sub.chat, sub.child
	switch msg := msg.(type) {
	case *Chunk, *End:
		if st.winner < 0 {
			st.winner = i
			f.observe(st)
			f.cancelRuns(c, st, i, "another branch answered first")
			f.begin(c, st)
		}
		if st.winner != i {
			return
		}
		if end, ok := msg.(*End); ok {
			f.finish(c, st, f.rename(st, end))
			return
		}
		c.Send(st.out, f.rename(st, msg))
	case *Failure:
		st.runs[i].done = true
		delete(f.subs, subChat(st.req.ChatId, i))
		if st.winner == i {
			f.finish(c, st, f.rename(st, msg))
			return
		}
		f.childFailed(c, st, msg)
	}
}

// all merges by writing each child's answer in turn, under its label.
func (f *fanoutActor) all(c actor.Context, sub fanoutSub, msg any) {
	st, i := sub.chat, sub.child
	if _, ok := msg.(*Begin); ok {
		return
	}
	if i != st.current {
		st.runs[i].held = append(st.runs[i].held, msg)
		return
	}
	f.write(c, st, i, msg)
	// Later children that finished meanwhile follow at once.
	for st.current < len(st.runs) && st.runs[st.current].done && f.chats[st.req.ChatId] == st {
		st.current++
		if st.current == len(st.runs) {
			f.complete(c, st)
			return
		}
		held := st.runs[st.current].held
		st.runs[st.current].held = nil
		for _, m := range held {
			f.write(c, st, st.current, m)
		}
	}
}

// write writes one message of child i's answer, which is being written now.
func (f *fanoutActor) write(c actor.Context, st *fanoutChat, i int, msg any) {
	switch msg := msg.(type) {
	case *Chunk:
		f.section(c, st, i)
		c.Send(st.out, f.rename(st, msg))
	case *End:
		f.section(c, st, i)
		st.usage.PromptTokens += msg.PromptTokens
		st.usage.CompletionTokens += msg.CompletionTokens
		st.runs[i].done = true
		delete(f.subs, subChat(st.req.ChatId, i))
	case *Failure:
		st.runs[i].done = true
		delete(f.subs, subChat(st.req.ChatId, i))
		st.failed++
		st.last = msg
		if st.failed == len(st.runs) {
			f.finish(c, st, f.everyFailed(st))
			return
		}
		// Its part is written only once another child answered: if
		// every child fails, the chat gets one error and nothing else.
		st.errors = append(st.errors, failedPart{child: i, reason: msg.Reason})
	}
}

// failedPart is a child's failure waiting to be written as its part.
type failedPart struct {
	child  int
	reason string
}

// flushErrors writes the parts of the children that failed before.
func (f *fanoutActor) flushErrors(c actor.Context, st *fanoutChat) {
	errs := st.errors
	st.errors = nil
	for _, e := range errs {
		f.section(c, st, e.child)
		c.Send(st.out, &Chunk{ChatId: st.req.ChatId, Text: fmt.Sprintf("[Error: %s.]", e.reason), ReplyTo: st.req.ReplyTo})
	}
}

// section starts child i's part of the answer with its label, once.
func (f *fanoutActor) section(c actor.Context, st *fanoutChat, i int) {
	if st.runs[i].labelled {
		return
	}
	st.runs[i].labelled = true
	f.flushErrors(c, st)
	f.begin(c, st)
	sep := ""
	if st.sections > 0 {
		sep = "\n\n"
	}
	st.sections++
	c.Send(st.out, &Chunk{ChatId: st.req.ChatId, Text: sep + "[" + f.label(i) + "]\n", ReplyTo: st.req.ReplyTo})
}

func (f *fanoutActor) label(i int) string {
	if i < len(f.node.Labels) && f.node.Labels[i] != "" {
		return f.node.Labels[i]
	}
	return f.node.Children[i].NodePath()
}

func (f *fanoutActor) complete(c actor.Context, st *fanoutChat) {
	if st.failed == len(st.runs) {
		f.finish(c, st, f.everyFailed(st))
		return
	}
	f.flushErrors(c, st)
	f.begin(c, st)
	end := &End{ChatId: st.req.ChatId, ReplyTo: st.req.ReplyTo,
		PromptTokens: st.usage.PromptTokens, CompletionTokens: st.usage.CompletionTokens}
	f.finish(c, st, end)
}

func (f *fanoutActor) childFailed(c actor.Context, st *fanoutChat, msg *Failure) {
	st.failed++
	st.last = msg
	if st.failed == len(st.runs) {
		f.finish(c, st, f.everyFailed(st))
	}
}

func (f *fanoutActor) everyFailed(st *fanoutChat) *Failure {
	return &Failure{ChatId: st.req.ChatId, Code: st.last.Code, RetryAfterMs: st.last.RetryAfterMs,
		Reason: "every branch failed (the last: " + st.last.Reason + ")", ReplyTo: st.req.ReplyTo}
}

func (f *fanoutActor) begin(c actor.Context, st *fanoutChat) {
	if !st.begun {
		st.begun = true
		c.Send(st.out, &Begin{ChatId: st.req.ChatId, ReplyTo: st.req.ReplyTo})
	}
}

func (f *fanoutActor) observe(st *fanoutChat) {
	if st.arrived > 0 {
		f.am.firstChunk.Observe(float64(time.Now().UnixNano()-st.arrived) / 1e9)
	}
}

// cancelRuns cancels every run of a chat still going, but keep.
func (f *fanoutActor) cancelRuns(c actor.Context, st *fanoutChat, keep int, reason string) {
	for i := range st.runs {
		if i == keep || st.runs[i].done {
			continue
		}
		id := subChat(st.req.ChatId, i)
		delete(f.subs, id)
		st.runs[i].done = true
		c.Send(f.entries[i], &Cancel{ChatId: id, Reason: reason})
	}
}

// finish sends a chat's terminal message and forgets the chat.
func (f *fanoutActor) finish(c actor.Context, st *fanoutChat, terminal any) {
	for i := range st.runs {
		delete(f.subs, subChat(st.req.ChatId, i))
	}
	delete(f.chats, st.req.ChatId)
	c.Send(st.out, terminal)
}

// rename gives a child's message the chat's own id.
func (f *fanoutActor) rename(st *fanoutChat, msg any) any {
	switch m := msg.(type) {
	case *Chunk:
		m.ChatId = st.req.ChatId
	case *End:
		m.ChatId = st.req.ChatId
	case *Failure:
		m.ChatId = st.req.ChatId
	}
	return msg
}
