package actors

import (
	"fmt"

	"github.com/asynkron/protoactor-go/actor"
)

// ModelNode is a model leaf: one Model instance behind a model host actor.
type ModelNode struct {
	Path string
	New  func() (Model, error)
	// Capacity is how many chats the model runs at once; Queue how many
	// more wait in its host before it refuses one as overloaded.
	Capacity int
	Queue    int
}

func (n *ModelNode) NodePath() string { return n.Path }
func (n *ModelNode) capacity() int    { return max(n.Capacity, 1) }
func (n *ModelNode) actors() int      { return 1 }

func (n *ModelNode) check(premade map[string]any) error {
	m, err := n.New()
	if err != nil {
		return fmt.Errorf("%s: %w", n.Path, err)
	}
	premade[n.Path] = m
	return nil
}

func (n *ModelNode) spawn(t *incarnation, c actor.Context, next *actor.PID) *actor.PID {
	cancelled := t.metrics.cancels.WithLabelValues(t.layout.Name, n.Path)
	props, _ := t.props(n.Path, func(am *actorMetrics) actor.Actor {
		model := t.instance(n.Path, func() (any, error) { return n.New() }).(Model)
		return &modelHost{model: model, next: next, logger: t.logger, am: am, cancelled: cancelled,
			capacity: n.capacity(), queueLimit: max(n.Queue, 0), inFlight: t.metrics.inFlightOf(am)}
	}, nil)
	return c.Spawn(props)
}

// FilterNode is a filter stage of a pipeline: before the pipeline's core it
// maps the request's history, after it the output stream.
type FilterNode struct {
	Path string
	New  func() (Filter, error)
}

func (n *FilterNode) check(premade map[string]any) error {
	f, err := n.New()
	if err != nil {
		return fmt.Errorf("%s: %w", n.Path, err)
	}
	premade[n.Path] = f
	return nil
}

func (n *FilterNode) filter(t *incarnation) Filter {
	return t.instance(n.Path, func() (any, error) { return n.New() }).(Filter)
}
