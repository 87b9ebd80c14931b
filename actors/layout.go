package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// LayoutSpec is a layout: a name (the LLM name it serves) and its tree.
type LayoutSpec struct {
	Name string
	Root Node
	// Queue is how many chats may wait for a place in the layout before it
	// refuses new ones; 0 is four times its capacity.
	Queue       int
	Supervision Supervision
	Breaker     BreakerConfig
}

// Capacity is how many chats the layout runs at once.
func (s LayoutSpec) Capacity() int { return s.Root.capacity() }

// FilterSpec is one filter stage of a pipeline.
type FilterSpec struct {
	Path string // the stage's path in the layout tree, e.g. "egress/0/opencc"
	New  func() (Filter, error)
}

// ModelSpec is the model stage of a pipeline.
type ModelSpec struct {
	Path string
	New  func() (Model, error)
	// Capacity is how many chats the model serves at once; Queue how many
	// more may wait for a place before the layout rejects new ones.
	Capacity int
	Queue    int
}

// PipelineSpec is a layout of the simple shape: ingress filters, a model,
// egress filters (a version 1 layout file).
type PipelineSpec struct {
	Name        string
	Ingress     []FilterSpec
	Model       ModelSpec
	Egress      []FilterSpec
	Supervision Supervision
	Breaker     BreakerConfig
}

// Tree returns the layout of the pipeline's shape.
func (s PipelineSpec) Tree() LayoutSpec {
	filters := func(specs []FilterSpec) []*FilterNode {
		var out []*FilterNode
		for _, f := range specs {
			out = append(out, &FilterNode{Path: f.Path, New: f.New})
		}
		return out
	}
	m := s.Model
	return LayoutSpec{
		Name: s.Name,
		Root: &PipelineNode{Path: "pipeline", Ingress: filters(s.Ingress), Egress: filters(s.Egress),
			Core: &ModelNode{Path: m.Path, New: m.New, Capacity: m.Capacity, Queue: m.Queue}},
		Queue:       m.Queue,
		Supervision: s.Supervision,
		Breaker:     s.Breaker,
	}
}

// StartPipeline spawns a layout of the pipeline's shape.
func StartPipeline(system *actor.ActorSystem, spec PipelineSpec, metrics *Metrics, logger *slog.Logger) (*Layout, error) {
	return StartLayout(system, spec.Tree(), metrics, logger)
}

// Health is a layout's state as the gateway and the cluster see it.
type Health struct {
	Healthy bool
	Reason  string // why it is unhealthy, short and human
	Since   time.Time
}

// Layout is a running layout: a root actor supervising the layout's tree,
// and the admission and circuit breaker in front of it.
type Layout struct {
	Name      string
	Root      *actor.PID
	Admission *Admission
	Breaker   *Breaker
	Spec      LayoutSpec

	system     *actor.ActorSystem
	metrics    *Metrics
	dispatcher *workerPool
	health     atomic.Pointer[Health]
	epoch      atomic.Pointer[Epoch]
}

// Epoch is one incarnation of a layout's actors. Its context ends when they
// die for good (the restart budget of one of them is spent), so that the
// gateway fails the chats that were running in them instead of letting them
// hang.
type Epoch struct {
	ctx   context.Context
	kill  context.CancelFunc
	entry atomic.Pointer[actor.PID] // the top node's entry, once spawned
}

func newEpoch() *Epoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &Epoch{ctx: ctx, kill: cancel}
}

// Context ends when the epoch's actors are gone.
func (e *Epoch) Context() context.Context { return e.ctx }

// Entry returns where to send this epoch's chats and their Cancels: the top
// node's entry (a top pipeline's first stage), so that a chat skips a hop
// through the layout's root actor, or the root while the tree is being
// spawned. A chat sent to the entry of an epoch whose actors died meanwhile
// is not lost silently: it must be failed when the epoch's Context ends.
func (e *Epoch) Entry(l *Layout) *actor.PID {
	if pid := e.entry.Load(); pid != nil {
		return pid
	}
	return l.Root
}

// Health returns the layout's current health.
func (l *Layout) Health() Health { return *l.health.Load() }

// Epoch returns the layout's current incarnation.
func (l *Layout) Epoch() *Epoch { return l.epoch.Load() }

// Stop stops the layout's actors, letting each finish the messages it has
// queued, and waits for them until ctx ends.
func (l *Layout) Stop(ctx context.Context) error {
	// Actors that outlive a timed-out wait run on goroutines of their own.
	defer l.dispatcher.Close()
	l.metrics.breakers.remove(l.Name, l.Breaker)
	done := make(chan error, 1)
	go func() { done <- l.system.Root.PoisonFuture(l.Root).Wait() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		l.system.Root.Stop(l.Root)
		return ctx.Err()
	}
}

// StartLayout spawns a layout. It makes every leaf's instance once before
// spawning anything, so a bad argument fails here rather than in an actor.
func StartLayout(system *actor.ActorSystem, spec LayoutSpec, metrics *Metrics, logger *slog.Logger) (*Layout, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	made := map[string]any{}
	if err := spec.Root.check(made); err != nil {
		for _, v := range made {
			CloseInstance(v)
		}
		return nil, err
	}
	capacity := spec.Root.capacity()
	queue := spec.Queue
	if queue <= 0 {
		queue = 4 * capacity
	}
	l := &Layout{Name: spec.Name, Spec: spec, Admission: NewAdmission(capacity, queue), system: system, metrics: metrics,
		Breaker: NewBreaker(spec.Breaker, time.Now, metrics.breakerOpens.WithLabelValues(spec.Name),
			metrics.breakerRefused.WithLabelValues(spec.Name), logger.With("layout", spec.Name)),
		// One worker per actor is enough for every mailbox to run at once;
		// the root and one more, for a mailbox rescheduled while its worker
		// winds down.
		dispatcher: newWorkerPool(spec.Root.actors()+2, dispatcherThroughput)}
	l.health.Store(&Health{Healthy: true, Since: time.Now()})
	l.epoch.Store(newEpoch())
	r := &layoutRoot{
		spec:    spec,
		layout:  l,
		metrics: metrics,
		sup:     spec.Supervision.withDefaults(),
		logger:  logger.With("layout", spec.Name),
		premade: &premade{m: made},
	}
	am := metrics.forActor(spec.Name, "root")
	props := metrics.props(am, l.dispatcher, func() actor.Actor { return r },
		actor.WithSupervisor(&strategy{cfg: r.sup, handler: &r.kids}))
	pid, err := system.Root.SpawnNamed(props, "layout/"+spec.Name)
	if errors.Is(err, actor.ErrNameExists) {
		// A reload starts the new layout while the old one of the same
		// name finishes its chats.
		pid, err = system.Root.SpawnNamed(props, "layout/"+spec.Name+"@"+system.ProcessRegistry.NextId())
	}
	if err != nil {
		l.dispatcher.Close()
		return nil, fmt.Errorf("layout %q: %w", spec.Name, err)
	}
	l.Root = pid
	metrics.breakers.set(spec.Name, l.Breaker)
	return l, nil
}

// dispatcherThroughput is how many messages an actor handles in a row before
// it lets other goroutines run: protoactor's default.
const dispatcherThroughput = 300

// layoutRoot is a layout's root actor. It supervises the top node of the
// current incarnation of the tree; when any node spends its restart budget
// the layout turns unhealthy, the incarnation's chats fail through its
// epoch, and after a cooldown a fresh incarnation starts. Its producer
// returns the same value on a restart on purpose: it holds no per-chat
// state.
type layoutRoot struct {
	spec    LayoutSpec
	layout  *Layout
	metrics *Metrics
	sup     Supervision
	logger  *slog.Logger
	premade *premade

	kids     children
	current  *incarnation
	top      *actor.PID
	entry    *actor.PID
	spawned  int
	stopping bool
	cooldown *time.Timer
}

type respawn struct{}

func (r *layoutRoot) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *ChatRequest:
		if h := r.layout.Health(); !h.Healthy {
			c.Send(msg.ReplyTo, &Failure{ChatId: msg.ChatId, Code: Code_CODE_UNAVAILABLE,
				Reason: fmt.Sprintf("layout %s is unavailable: %s", r.spec.Name, h.Reason), ReplyTo: msg.ReplyTo})
			return
		}
		c.Send(r.entry, msg)
	case *Cancel:
		if r.entry != nil {
			c.Send(r.entry, msg)
		}
	case *actor.Started:
		if r.spawned > 0 {
			// The root restarted, which stopped the tree its epoch's entry
			// points to: those chats must fail, not hang.
			old := r.layout.Epoch()
			r.layout.epoch.Store(newEpoch())
			old.kill()
		}
		r.spawnTree(c)
	case *actor.Restarting:
		r.kids.forget()
	case entryKnown:
		if msg.t != r.current {
			return
		}
		// A top pipeline took its first stage (again, after a restart of
		// the pipeline actor, which stops and respawns its stages).
		r.entry = msg.entry
		if old := r.layout.Epoch(); !old.entry.CompareAndSwap(nil, msg.entry) {
			e := newEpoch()
			e.entry.Store(msg.entry)
			r.layout.epoch.Store(e)
			old.kill()
		}
	case budgetSpent:
		r.spent(c, msg.path)
	case *actor.Terminated:
		if r.top != nil && msg.Who.Equal(r.top) && !r.stopping && r.layout.Health().Healthy {
			r.spent(c, r.spec.Root.NodePath())
		}
	case respawn:
		if r.stopping {
			return
		}
		r.layout.epoch.Store(newEpoch())
		r.spawnTree(c)
		r.layout.health.Store(&Health{Healthy: true, Since: time.Now()})
		r.logger.Info("layout recovered")
	case *actor.Stopping:
		r.stopping = true
		if r.cooldown != nil {
			r.cooldown.Stop()
		}
		r.kids.forget()
	}
}

// spawnTree starts a fresh incarnation of the tree.
func (r *layoutRoot) spawnTree(c actor.Context) {
	r.spawned++
	t := &incarnation{layout: r.layout, metrics: r.metrics, sup: r.sup, logger: r.logger,
		root: c.Self(), first: r.spawned == 1, premade: r.premade}
	r.current = t
	r.kids.reset(t, "root")
	r.top = r.spec.Root.spawn(t, c, nil)
	r.kids.add(r.top, r.spec.Root.NodePath(), nil)
	r.entry = r.top
	if _, isPipeline := r.spec.Root.(*PipelineNode); !isPipeline {
		// Only a pipeline tells its first stage; any other top node is
		// its own entry.
		e := r.layout.Epoch()
		if !e.entry.CompareAndSwap(nil, r.top) {
			fresh := newEpoch()
			fresh.entry.Store(r.top)
			r.layout.epoch.Store(fresh)
			e.kill()
		}
	}
}

// spent takes the incarnation down after a node spent its restart budget.
func (r *layoutRoot) spent(c actor.Context, path string) {
	if r.stopping || !r.layout.Health().Healthy {
		return
	}
	reason := fmt.Sprintf("%s failed %d times within %s", path, r.sup.MaxRestarts+1, r.sup.Window)
	r.layout.health.Store(&Health{Healthy: false, Reason: reason, Since: time.Now()})
	r.layout.Epoch().kill()
	r.logger.Error("layout unhealthy", "reason", reason, "retry_in", r.sup.Cooldown)
	r.current = nil
	r.entry = nil
	if r.top != nil {
		c.Stop(r.top)
		r.top = nil
	}
	self, system := c.Self(), c.ActorSystem()
	// Stopped with the root (Stopping), so no respawn outlives the layout.
	r.cooldown = time.AfterFunc(r.sup.Cooldown, func() { system.Root.Send(self, respawn{}) })
}
