package gateway

import (
	"context"
	"errors"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// Router chooses the node that runs a chat. The cluster implements it; a
// node on its own uses localRouter.
type Router interface {
	// Route picks a node for a chat of layout; key names its conversation
	// ("" when unknown); tried lists nodes that already refused it. It
	// returns an error that is actors.ErrOverloaded when every node is
	// full; one with a method RetryAfter() time.Duration says how long
	// until it expects room.
	Route(layout, key string, tried []string) (Target, error)
	// Serves reports whether any node serves layout.
	Serves(layout string) bool
	// Layouts lists the layouts served anywhere, sorted.
	Layouts() []string
}

// Target is where a chat runs: a local layout, or the chat host of another
// node with a context that ends when that node is gone. It has the fields
// of cluster.Target, in the same order, so that one converts to the other.
type Target struct {
	Node  string
	Local *actors.Layout
	// Admitted says the router already took a place in Local's admission
	// for the chat, which Done gives back; otherwise the gateway takes one.
	Admitted bool
	Remote   *actor.PID
	Gone     context.Context
	// Silent, when not nil, ends while the node has gone silent: a chat
	// that has written nothing yet is then tried elsewhere.
	Silent context.Context
	// Done, when not nil, is called once when the chat's attempt on the
	// node ends, however it ends: the router counts the chat until then.
	Done func()
}

// errNoNode is what a Router returns when no node serves a layout now.
var errNoNode = errors.New("no node serves it")

// localRouter runs every chat on this node.
type localRouter struct{ layouts *actors.LayoutSet }

func (r localRouter) Route(layout, _ string, tried []string) (Target, error) {
	l, ok := r.layouts.Get(layout)
	if !ok || len(tried) > 0 {
		return Target{}, errNoNode
	}
	if h := l.Health(); !h.Healthy {
		return Target{}, errors.New(h.Reason)
	}
	return Target{Node: "local", Local: l, Gone: context.Background()}, nil
}

func (r localRouter) Layouts() []string { return r.layouts.Names() }

func (r localRouter) Serves(layout string) bool {
	_, ok := r.layouts.Get(layout)
	return ok
}
