package actors

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Node is one node of a layout tree: a leaf (a model, or a filter inside a
// pipeline) or an inner node (pipeline, route, fallback, fan-out, pool) that
// is an actor supervising its children. Each node type is its own small
// file; the layout compiler builds the tree, StartLayout spawns it.
type Node interface {
	// NodePath names the node in metrics and logs, e.g.
	// "taide/pipeline/1/fallback/0".
	NodePath() string
	// capacity is how many chats the node can run at once.
	capacity() int
	// actors counts the actors the node spawns, to size the layout's
	// worker pool.
	actors() int
	// spawn starts the node as a child of c, its output wired to next (the
	// next stage of its pipeline, or the fallback, fan-out or pool above
	// it; nil for the chat's reply), and returns where its requests and
	// Cancels go.
	spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID
	// check makes an instance of every leaf, so that bad arguments fail
	// at start, and keeps them for the first incarnation.
	check(premade map[string]any) error
}

// incarnation is what every actor of one spawn of a layout's tree shares:
// the layout, its metrics and supervision, and the way to report that a node
// spent its restart budget, which takes the whole incarnation down.
type incarnation struct {
	layout  *Layout
	metrics *Metrics
	sup     Supervision
	logger  *slog.Logger
	root    *actor.PID
	first   bool // the first incarnation uses the instances made at start
	premade *premade
}

// premade are the instances StartLayout made to check the arguments, by
// node path, used once by the first incarnation. The tree's inner nodes
// spawn their children concurrently, hence the lock.
type premade struct {
	mu sync.Mutex
	m  map[string]any
}

func (p *premade) take(path string) (any, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.m[path]
	delete(p.m, path)
	return v, ok
}

// instance returns a leaf's first instance: the one made at start for the
// first incarnation, a new one otherwise.
func (t *incarnation) instance(path string, make func() (any, error)) any {
	if t.first {
		if v, ok := t.premade.take(path); ok {
			return v
		}
	}
	v, err := make()
	if err != nil {
		// It worked at start; failing now is a failure of the actor, which
		// its supervisor counts against the restart budget.
		panic(fmt.Sprintf("%s: %v", path, err))
	}
	return v
}

// props are the Props of one of the layout's actors: instrumented under its
// path, run by the layout's dispatcher, and (for inner nodes) supervising
// its children with the layout's strategy.
func (t *incarnation) props(path string, producer func(am *actorMetrics) actor.Actor, handler failureHandler) (*actor.Props, *actorMetrics) {
	am := t.metrics.forActor(t.layout.Name, path)
	incarnations := 0
	opts := []actor.PropsOption{}
	if handler != nil {
		opts = append(opts, actor.WithSupervisor(&strategy{cfg: t.sup, handler: handler}))
	}
	return t.metrics.props(am, t.layout.dispatcher, func() actor.Actor {
		if incarnations++; incarnations > 1 {
			am.restarts.Inc()
		}
		return producer(am)
	}, opts...), am
}

// spent reports that a node's child failed past its restart budget: the
// layout turns unhealthy, the chats of this incarnation fail through its
// epoch, and the root starts a fresh incarnation after the cooldown.
func (t *incarnation) spent(path string) {
	t.layout.system.Root.Send(t.root, budgetSpent{path: path})
}

type budgetSpent struct{ path string }

// children is the supervision side of an inner node: its children by PID,
// the chat of a message a child dropped by panicking failed where that
// child's output would have gone, and a child past its budget reported.
type children struct {
	t      *incarnation
	path   string
	byID   map[string]*child
	logger *slog.Logger
	// timers are the pending restarts, stopped with the node. Each
	// removes itself when it fires; the supervisor's goroutine and the
	// timer's share the set, hence the lock.
	mu     sync.Mutex
	timers map[*time.Timer]struct{}
}

type child struct {
	path string
	pid  *actor.PID
	// out is where the child's output goes unless a request says
	// otherwise: for a pipeline's ingress filters, where the pipeline's
	// output goes; nil: the chat's reply.
	out *actor.PID
}

// reset readies the children for a fresh set, keeping the lock in place.
func (cs *children) reset(t *incarnation, path string) {
	cs.stopTimers()
	cs.t, cs.path, cs.byID, cs.logger = t, path, map[string]*child{}, t.logger
}

// restartLater implements failureHandler.
func (cs *children) restartLater(delay time.Duration, restart func()) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.timers == nil {
		cs.timers = map[*time.Timer]struct{}{}
	}
	var timer *time.Timer
	timer = time.AfterFunc(delay, func() {
		cs.mu.Lock()
		_, pending := cs.timers[timer]
		delete(cs.timers, timer)
		cs.mu.Unlock()
		if pending {
			restart()
		}
	})
	cs.timers[timer] = struct{}{}
}

func (cs *children) stopTimers() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for timer := range cs.timers {
		timer.Stop()
	}
	cs.timers = nil
}

// add records a spawned child.
func (cs *children) add(pid *actor.PID, path string, out *actor.PID) {
	cs.byID[pid.Id] = &child{path: path, pid: pid, out: out}
}

// childFailed implements failureHandler.
func (cs *children) childFailed(who *actor.PID, reason any, message any, restartIn time.Duration, stopped bool) {
	c := cs.byID[who.Id]
	path := cs.path
	if c != nil {
		path = c.path
		cs.t.metrics.forActor(cs.t.layout.Name, path).failures.Inc()
	}
	if stopped {
		cs.logger.Error("actor failed past its restart budget", "actor", path, "reason", reason)
	} else {
		cs.logger.Warn("actor failed; restarting", "actor", path, "reason", reason, "in", restartIn)
	}
	m, ok := message.(ChatMessage)
	if !ok || m.GetReplyTo() == nil {
		return
	}
	failure := &Failure{ChatId: m.GetChatId(), Code: Code_CODE_INTERNAL,
		Reason: "the layout failed while handling this chat", ReplyTo: m.GetReplyTo()}
	// The failure goes where the child's output for that chat would have
	// gone, so that what stands between (egress filters, a fallback) sees
	// the chat end.
	var out *actor.PID
	if c != nil {
		out = c.out
	}
	cs.t.layout.system.Root.Send(outputOf(m, out), failure)
}

// terminated handles a child that stopped: past its budget, it takes the
// incarnation down.
func (cs *children) terminated(who *actor.PID) {
	if c, ok := cs.byID[who.Id]; ok {
		delete(cs.byID, who.Id)
		cs.t.spent(c.path)
	}
}

// forget drops the children when the node stops or restarts, which stops
// them: their Terminated is then no failure, and no restart is pending.
func (cs *children) forget() {
	cs.stopTimers()
	cs.byID = map[string]*child{}
}

// outputOf is where a node sends a chat's output: the node it was wired to
// (the next stage of its pipeline, or the fallback, fan-out or pool above
// it), else the chat's reply. The tree is wired when it is spawned, so no
// message carries a route.
func outputOf(m ChatMessage, next *actor.PID) *actor.PID {
	if next != nil {
		return next
	}
	return m.GetReplyTo()
}

// pass records the time an actor added to a chat's way to its first chunk
// (its mailbox wait and its own work) and stamps the request for the next.
func pass(am *actorMetrics, req *ChatRequest) {
	now := time.Now().UnixNano()
	if req.PassedUnixNano > 0 && am != nil {
		am.firstChunk.Observe(float64(now-req.PassedUnixNano) / 1e9)
	}
	req.PassedUnixNano = now
}

// childPath joins a node's path and a child's part.
func childPath(parent string, parts ...any) string {
	var b strings.Builder
	b.WriteString(parent)
	for _, p := range parts {
		fmt.Fprintf(&b, "/%v", p)
	}
	return b.String()
}

// subChat is the id of a chat's run in one child of a fan-out or one attempt
// of a fallback: each is a chat of its own to the actors below, so late
// messages of an abandoned run cannot be taken for the current one's.
func subChat(id string, n int) string { return fmt.Sprintf("%s~%d", id, n) }

// actorsOf counts the actors of a node's children, for an inner node's
// own count.
func actorsOf(nodes []Node) int {
	n := 0
	for _, c := range nodes {
		n += c.actors()
	}
	return n
}

// checkAll checks every child of an inner node, reporting them all.
func checkAll(nodes []Node, premade map[string]any) error {
	var errs []error
	for _, c := range nodes {
		errs = append(errs, c.check(premade))
	}
	return errors.Join(errs...)
}

// minCapacity is the smallest capacity of a node's children, at least 1.
func minCapacity(nodes []Node) int {
	c := 0
	for _, n := range nodes {
		if c == 0 || n.capacity() < c {
			c = n.capacity()
		}
	}
	return max(c, 1)
}

// spawnAll spawns an inner node's children, their output wired to next
// (the node itself, for one that sees its children's answers), records
// them, and returns their entries.
func (cs *children) spawnAll(c actor.Context, nodes []Node, next *actor.PID, entries []*actor.PID) []*actor.PID {
	entries = entries[:0]
	for _, node := range nodes {
		pid := node.spawn(cs.t, c, next)
		cs.add(pid, node.NodePath(), next)
		entries = append(entries, pid)
	}
	return entries
}
