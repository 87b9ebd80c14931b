package actors

import (
	"regexp"
	"unicode/utf8"

	"github.com/asynkron/protoactor-go/actor"
)

// RouteNode sends each chat to the first branch whose condition holds, or to
// its default. Answers flow from the branch straight on: the route actor
// sees only requests and Cancels.
type RouteNode struct {
	Path     string
	Branches []RouteBranch
	Default  Node // nil: a chat no branch takes is refused
}

// RouteBranch is one `when`/`then` of a route.
type RouteBranch struct {
	When Condition
	Then Node
}

// Condition is what a route branch asks of a chat; every part that is set
// must hold.
type Condition struct {
	// LastMessage must match the last user message.
	LastMessage *regexp.Regexp
	// Messages and Chars bound the history's message count and its length
	// in characters.
	Messages, Chars Bound
	// Params must each match the chat's parameter of that name (a missing
	// parameter matches nothing).
	Params map[string]*regexp.Regexp
}

// Bound is an inclusive range; a zero Max means no upper bound.
type Bound struct{ Min, Max int }

func (b Bound) holds(n int) bool { return n >= b.Min && (b.Max == 0 || n <= b.Max) }

// Match reports whether the condition holds for a chat.
func (c Condition) Match(req *ChatRequest) bool {
	if c.LastMessage != nil && !c.LastMessage.MatchString(LastUserMessage(req.History)) {
		return false
	}
	if !c.Messages.holds(len(req.History)) {
		return false
	}
	if c.Chars != (Bound{}) {
		chars := 0
		for _, m := range req.History {
			chars += utf8.RuneCountInString(m.Content)
		}
		if !c.Chars.holds(chars) {
			return false
		}
	}
	for name, re := range c.Params {
		v, ok := req.Params[name]
		if !ok || !re.MatchString(v) {
			return false
		}
	}
	return true
}

func (n *RouteNode) NodePath() string { return n.Path }

// capacity is the smallest of the branches': any chat may take any branch.
func (n *RouteNode) capacity() int { return minCapacity(n.nodes()) }

func (n *RouteNode) actors() int { return 1 + actorsOf(n.nodes()) }

func (n *RouteNode) nodes() []Node {
	var out []Node
	for _, b := range n.Branches {
		out = append(out, b.Then)
	}
	if n.Default != nil {
		out = append(out, n.Default)
	}
	return out
}

func (n *RouteNode) check(premade map[string]any) error { return checkAll(n.nodes(), premade) }

func (n *RouteNode) spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID {
	r := &routeActor{node: n, t: t, next: next}
	props, am := t.props(n.Path, func(*actorMetrics) actor.Actor { return r }, &r.kids)
	r.am = am
	return c.Spawn(props)
}

type routeActor struct {
	node    *RouteNode
	t       *incarnation
	next    *actor.PID
	am      *actorMetrics
	kids    children
	entries []*actor.PID // per branch, then the default
}

func (r *routeActor) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *ChatRequest:
		i := r.pick(msg)
		if i < 0 {
			c.Send(outputOf(msg, r.next), &Failure{ChatId: msg.ChatId, Code: Code_CODE_INVALID_ARGUMENT,
				Reason: "no route of this LLM takes this chat", ReplyTo: msg.ReplyTo})
			return
		}
		pass(r.am, msg)
		c.Send(r.entries[i], msg)
	case *Cancel:
		// The route keeps no per-chat state: every branch gets it, and
		// those that do not run the chat ignore it.
		for _, e := range r.entries {
			c.Send(e, msg)
		}
	case *actor.Started:
		r.kids.reset(r.t, r.node.Path)
		r.entries = r.kids.spawnAll(c, r.node.nodes(), r.next, r.entries)
	case *actor.Terminated:
		r.kids.terminated(msg.Who)
	case *actor.Restarting, *actor.Stopping:
		r.kids.forget()
	}
}

func (r *routeActor) pick(req *ChatRequest) int {
	for i, b := range r.node.Branches {
		if b.When.Match(req) {
			return i
		}
	}
	if r.node.Default != nil {
		return len(r.node.Branches)
	}
	return -1
}
