package actors

import (
	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
)

// PoolNode runs replicas of one child; each chat goes to the replica with the
// fewest chats, the first of them on a tie after the last one chosen, so
// that equal replicas take turns.
type PoolNode struct {
	Path     string
	Replicas []Node
}

func (n *PoolNode) NodePath() string { return n.Path }

func (n *PoolNode) capacity() int {
	c := 0
	for _, r := range n.Replicas {
		c += r.capacity()
	}
	return max(c, 1)
}

func (n *PoolNode) actors() int { return 1 + actorsOf(n.Replicas) }

func (n *PoolNode) check(premade map[string]any) error { return checkAll(n.Replicas, premade) }

func (n *PoolNode) spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID {
	p := &poolActor{node: n, t: t, next: next}
	props, am := t.props(n.Path, func(*actorMetrics) actor.Actor { return p }, &p.kids)
	p.am = am
	p.inFlight = t.metrics.inFlightOf(am)
	return c.Spawn(props)
}

// poolActor sees every message of its chats: it counts each replica's chats
// from request to end, so its choice is exact.
type poolActor struct {
	inFlight prometheus.Gauge
	node     *PoolNode
	t        *incarnation
	next     *actor.PID
	am       *actorMetrics
	kids     children
	entries  []*actor.PID
	busy     []int
	last     int

	chats map[string]poolChat
}

type poolChat struct {
	replica int
	out     *actor.PID
	replyTo *actor.PID
}

func (p *poolActor) Receive(c actor.Context) {
	if _, streaming := c.Message().(*Chunk); !streaming {
		// Only a chat's start and end change the count: not per chunk.
		defer func() { p.inFlight.Set(float64(len(p.chats))) }()
	}
	switch msg := c.Message().(type) {
	case *ChatRequest:
		i := p.pick()
		p.busy[i]++
		p.chats[msg.ChatId] = poolChat{replica: i, out: outputOf(msg, p.next), replyTo: msg.ReplyTo}
		pass(p.am, msg)
		c.Send(p.entries[i], msg)
	case *Cancel:
		if ch, ok := p.chats[msg.ChatId]; ok {
			c.Send(p.entries[ch.replica], msg)
		}
	case *Begin:
		p.forward(c, msg.ChatId, msg, false)
	case *Chunk:
		p.forward(c, msg.ChatId, msg, false)
	case *End:
		p.forward(c, msg.ChatId, msg, true)
	case *Failure:
		p.forward(c, msg.ChatId, msg, true)
	case *actor.Started:
		p.chats = map[string]poolChat{}
		p.kids.reset(p.t, p.node.Path)
		p.busy = make([]int, len(p.node.Replicas))
		p.entries = p.kids.spawnAll(c, p.node.Replicas, c.Self(), p.entries)
	case *actor.Terminated:
		p.kids.terminated(msg.Who)
	case *actor.Restarting, *actor.Stopping:
		for id, ch := range p.chats {
			c.Send(ch.out, &Failure{ChatId: id, Code: Code_CODE_UNAVAILABLE, Reason: "the layout was restarted", ReplyTo: ch.replyTo})
		}
		p.chats = map[string]poolChat{}
		p.kids.forget()
	}
}

func (p *poolActor) pick() int {
	best := -1
	for k := 1; k <= len(p.busy); k++ {
		i := (p.last + k) % len(p.busy)
		if best < 0 || p.busy[i] < p.busy[best] {
			best = i
		}
	}
	p.last = best
	return best
}

func (p *poolActor) forward(c actor.Context, id string, msg any, terminal bool) {
	ch, ok := p.chats[id]
	if !ok {
		return
	}
	if terminal {
		p.busy[ch.replica]--
		delete(p.chats, id)
	}
	c.Send(ch.out, msg)
}
