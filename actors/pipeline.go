package actors

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

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
// egress filters.
type PipelineSpec struct {
	Name        string
	Ingress     []FilterSpec
	Model       ModelSpec
	Egress      []FilterSpec
	Supervision Supervision
}

// Health is a layout's state as the gateway and the cluster see it.
type Health struct {
	Healthy bool
	Reason  string // why it is unhealthy, short and human
	Since   time.Time
}

// Layout is a running layout: a pipeline actor supervising one actor per
// stage, and the admission in front of it.
type Layout struct {
	Name      string
	Root      *actor.PID
	Admission *Admission

	system     *actor.ActorSystem
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
	entry atomic.Pointer[actor.PID] // the first stage, once spawned
}

func newEpoch() *Epoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &Epoch{ctx: ctx, kill: cancel}
}

// Context ends when the epoch's actors are gone.
func (e *Epoch) Context() context.Context { return e.ctx }

// Entry returns where to send this epoch's chats and their Cancels: its
// first stage, so that a chat skips a hop through the layout's root actor,
// or the root while the stages are being spawned. A chat sent to the entry
// of an epoch whose actors died meanwhile is not lost silently: it must be
// failed when the epoch's Context ends.
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

// StartPipeline spawns a pipeline layout. It creates each stage once before
// spawning anything, so a bad argument fails here rather than in an actor.
func StartPipeline(system *actor.ActorSystem, spec PipelineSpec, metrics *Metrics, logger *slog.Logger) (*Layout, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	p := &pipeline{
		spec:    spec,
		sup:     spec.Supervision.withDefaults(),
		metrics: metrics,
		logger:  logger.With("layout", spec.Name),
	}
	var err error
	if p.model, err = spec.Model.New(); err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Model.Path, err)
	}
	for _, f := range spec.Ingress {
		inst, err := f.New()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Path, err)
		}
		p.ingress = append(p.ingress, inst)
	}
	for _, f := range spec.Egress {
		inst, err := f.New()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Path, err)
		}
		p.egress = append(p.egress, inst)
	}
	capacity := spec.Model.Capacity
	if capacity < 1 {
		capacity = 1
	}
	l := &Layout{Name: spec.Name, Admission: NewAdmission(capacity, spec.Model.Queue), system: system,
		// One worker per actor is enough for every mailbox to run at once;
		// one more covers a mailbox rescheduled while its worker winds down.
		dispatcher: newWorkerPool(len(spec.Ingress)+len(spec.Egress)+3, dispatcherThroughput)}
	l.health.Store(&Health{Healthy: true, Since: time.Now()})
	l.epoch.Store(newEpoch())
	p.layout = l

	root := p.metrics.forActor(spec.Name, "pipeline")
	props := p.metrics.props(root, l.dispatcher, func() actor.Actor { return p },
		actor.WithSupervisor(&strategy{cfg: p.sup, handler: p}))
	pid, err := system.Root.SpawnNamed(props, "layout/"+spec.Name)
	if err != nil {
		l.dispatcher.Close()
		return nil, fmt.Errorf("layout %q: %w", spec.Name, err)
	}
	l.Root = pid
	return l, nil
}

// dispatcherThroughput is how many messages an actor handles in a row before
// it lets other goroutines run: protoactor's default.
const dispatcherThroughput = 300

// stage is one supervised child of the pipeline.
type stage struct {
	path    string
	pid     *actor.PID
	next    *actor.PID // nil: the chat's reply
	ingress bool
	am      *actorMetrics
}

// pipeline is the layout's root actor. Its producer returns the same value on
// a restart on purpose: it holds no per-chat state, only its children.
type pipeline struct {
	spec    PipelineSpec
	sup     Supervision
	metrics *Metrics
	logger  *slog.Logger
	layout  *Layout

	// Instances made by StartPipeline, used by the first incarnation only.
	model   Model
	ingress []Filter
	egress  []Filter

	stages   map[string]*stage // by PID id
	first    *actor.PID
	spawned  int // incarnations so far
	stopping bool
}

type respawn struct{}

func (p *pipeline) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *ChatRequest:
		if !p.layout.Health().Healthy {
			c.Send(msg.ReplyTo, &Failure{ChatId: msg.ChatId, Code: Code_CODE_UNAVAILABLE,
				Reason: fmt.Sprintf("layout %s is unavailable: %s", p.spec.Name, p.layout.Health().Reason), ReplyTo: msg.ReplyTo})
			return
		}
		c.Send(p.first, msg)
	case *Cancel:
		if p.first != nil {
			c.Send(p.first, msg)
		}
	case *actor.Started:
		p.spawnStages(c)
		if old := p.layout.Epoch(); !old.entry.CompareAndSwap(nil, p.first) {
			// The root restarted, which stopped the stages that entry
			// points to: their chats must fail, not hang.
			e := newEpoch()
			e.entry.Store(p.first)
			p.layout.epoch.Store(e)
			old.kill()
		}
	case *actor.Terminated:
		p.stageTerminated(c, msg.Who)
	case respawn:
		p.spawnStages(c)
		e := newEpoch()
		e.entry.Store(p.first)
		p.layout.epoch.Store(e)
		p.layout.health.Store(&Health{Healthy: true, Since: time.Now()})
		p.logger.Info("layout recovered")
	case *actor.Stopping:
		p.stopping = true
		for _, s := range p.stages {
			p.metrics.forget(s.am)
		}
	}
}

// spawnStages spawns one actor per stage, last first, so each knows its next.
func (p *pipeline) spawnStages(c actor.Context) {
	p.spawned++
	premade := p.spawned == 1
	p.stages = map[string]*stage{}
	spawn := func(path string, ingress bool, next *actor.PID, producer func() actor.Actor) *actor.PID {
		am := p.metrics.forActor(p.spec.Name, path)
		incarnations := 0
		props := p.metrics.props(am, p.layout.dispatcher, func() actor.Actor {
			if incarnations++; incarnations > 1 {
				am.restarts.Inc()
			}
			return producer()
		})
		pid := c.Spawn(props)
		p.stages[pid.Id] = &stage{path: path, pid: pid, next: next, ingress: ingress, am: am}
		return pid
	}

	var next *actor.PID
	for i := len(p.spec.Egress) - 1; i >= 0; i-- {
		n, filter := next, instances(p.egress[i], premade, p.spec.Egress[i].New, p.spec.Egress[i].Path)
		next = spawn(p.spec.Egress[i].Path, false, n, func() actor.Actor {
			return &egressHost{filter: filter(), next: n}
		})
	}
	modelNext, model := next, instances(p.model, premade, p.spec.Model.New, p.spec.Model.Path)
	cancelled := p.metrics.cancels.WithLabelValues(p.spec.Name, p.spec.Model.Path)
	next = spawn(p.spec.Model.Path, false, modelNext, func() actor.Actor {
		return &modelHost{model: model(), next: modelNext, logger: p.logger, cancelled: cancelled}
	})
	for i := len(p.spec.Ingress) - 1; i >= 0; i-- {
		n, filter := next, instances(p.ingress[i], premade, p.spec.Ingress[i].New, p.spec.Ingress[i].Path)
		next = spawn(p.spec.Ingress[i].Path, true, n, func() actor.Actor {
			return &ingressHost{filter: filter(), next: n}
		})
	}
	p.first = next
}

// instances returns a stage's source of instances: the one made at start-up
// first (when usePremade), then a new one for every restart, because a
// restarted actor must not inherit its predecessor's state. A constructor
// that worked at start-up and fails now panics, which the supervisor counts
// against the restart budget.
func instances[T any](premade T, usePremade bool, newT func() (T, error), path string) func() T {
	return func() T {
		if usePremade {
			usePremade = false
			return premade
		}
		v, err := newT()
		if err != nil {
			panic(fmt.Sprintf("%s: %v", path, err))
		}
		return v
	}
}

// childFailed implements failureHandler, on the pipeline's goroutine.
func (p *pipeline) childFailed(child *actor.PID, reason any, message any, restartIn time.Duration, stopped bool) {
	s := p.stages[child.Id]
	if s == nil {
		return
	}
	s.am.failures.Inc()
	if stopped {
		p.logger.Error("actor failed past its restart budget", "actor", s.path, "reason", reason)
	} else {
		p.logger.Warn("actor failed; restarting", "actor", s.path, "reason", reason, "in", restartIn)
	}
	cm, ok := message.(ChatMessage)
	if !ok || cm.GetReplyTo() == nil {
		return
	}
	failure := &Failure{ChatId: cm.GetChatId(), Code: Code_CODE_INTERNAL,
		Reason: "the layout failed while handling this chat", ReplyTo: cm.GetReplyTo()}
	to := s.next
	if s.ingress || to == nil {
		// Nothing downstream holds state for the chat yet (ingress), or
		// the reply is next.
		to = cm.GetReplyTo()
	}
	p.layout.system.Root.Send(to, failure)
}

// stageTerminated handles a stage that stopped for good: the layout goes
// unhealthy, the chats running in this incarnation are failed through the
// epoch, and a fresh set of actors starts after the cooldown.
func (p *pipeline) stageTerminated(c actor.Context, who *actor.PID) {
	s, ok := p.stages[who.Id]
	if !ok || p.stopping {
		return
	}
	delete(p.stages, who.Id)
	if p.layout.Health().Healthy {
		reason := fmt.Sprintf("%s failed %d times within %s", s.path, p.sup.MaxRestarts+1, p.sup.Window)
		p.layout.health.Store(&Health{Healthy: false, Reason: reason, Since: time.Now()})
		p.layout.epoch.Load().kill()
		p.logger.Error("layout unhealthy", "reason", reason, "retry_in", p.sup.Cooldown)
		for _, other := range p.stages {
			c.Stop(other.pid)
		}
		p.stages = map[string]*stage{}
		p.first = nil
		self := c.Self()
		system := c.ActorSystem()
		time.AfterFunc(p.sup.Cooldown, func() { system.Root.Send(self, respawn{}) })
	}
}
