package actors

import (
	"errors"

	"github.com/asynkron/protoactor-go/actor"
)

// PipelineNode is a pipeline: filters that map the request's history, a
// core node (a model, or any other node) that makes the answer, and filters
// that map its output stream. Its actor supervises one actor per stage and
// passes requests to the first; the answer flows from stage to stage and out,
// never through the pipeline actor.
type PipelineNode struct {
	Path    string
	Ingress []*FilterNode
	Core    Node
	Egress  []*FilterNode
}

func (n *PipelineNode) NodePath() string { return n.Path }
func (n *PipelineNode) capacity() int    { return n.Core.capacity() }
func (n *PipelineNode) actors() int      { return 1 + len(n.Ingress) + len(n.Egress) + n.Core.actors() }

func (n *PipelineNode) check(premade map[string]any) error {
	var errs []error
	for _, f := range n.Ingress {
		errs = append(errs, f.check(premade))
	}
	errs = append(errs, n.Core.check(premade))
	for _, f := range n.Egress {
		errs = append(errs, f.check(premade))
	}
	return errors.Join(errs...)
}

func (n *PipelineNode) spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID {
	p := &pipelineActor{node: n, t: t, next: next}
	props, _ := t.props(n.Path, func(*actorMetrics) actor.Actor { return p }, &p.kids)
	return c.Spawn(props)
}

// pipelineActor is a pipeline's supervisor and its entry. Its producer
// returns the same value on a restart on purpose: it holds no per-chat
// state, only its children.
type pipelineActor struct {
	node  *PipelineNode
	t     *incarnation
	next  *actor.PID
	kids  children
	first *actor.PID // the first stage
}

// entryKnown tells a layout's root where its top pipeline's first stage
// is, so the gateway's chats skip a hop through the pipeline actor.
type entryKnown struct {
	t     *incarnation
	entry *actor.PID
}

func (p *pipelineActor) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *ChatRequest:
		pass(nil, msg)
		c.Send(p.first, msg)
	case *Cancel:
		c.Send(p.first, msg)
	case *actor.Started:
		p.spawnStages(c)
		if p.t.root != nil && c.Parent().Equal(p.t.root) {
			c.Send(p.t.root, entryKnown{t: p.t, entry: p.first})
		}
	case *actor.Terminated:
		p.kids.terminated(msg.Who)
	case *actor.Restarting, *actor.Stopping:
		// The stages stop with this actor: their Terminated is no failure.
		p.kids.forget()
	}
}

// spawnStages spawns one actor per stage, last first, so each knows its
// next: the egress filters end at the pipeline's own next, the core's
// output goes to the first egress filter, and a rejected request's failure
// goes where the core's output would.
func (p *pipelineActor) spawnStages(c actor.Context) {
	t, n := p.t, p.node
	p.kids.reset(t, n.Path)
	next := p.next
	for i := len(n.Egress) - 1; i >= 0; i-- {
		f, after := n.Egress[i], next
		props, _ := t.props(f.Path, func(am *actorMetrics) actor.Actor {
			return &egressHost{filter: f.filter(t), next: after, am: am}
		}, nil)
		next = c.Spawn(props)
		p.kids.add(next, f.Path, after)
	}
	coreOut := next
	next = n.Core.spawn(t, c, coreOut)
	p.kids.add(next, n.Core.NodePath(), coreOut)
	for i := len(n.Ingress) - 1; i >= 0; i-- {
		f, after := n.Ingress[i], next
		props, _ := t.props(f.Path, func(am *actorMetrics) actor.Actor {
			return &ingressHost{filter: f.filter(t), next: after, out: coreOut, am: am}
		}, nil)
		next = c.Spawn(props)
		p.kids.add(next, f.Path, coreOut)
	}
	p.first = next
}
