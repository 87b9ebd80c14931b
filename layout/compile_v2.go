package layout

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/troupe-llm/troupe/actors"
)

// CompileAll compiles every layout of a file into actor trees, with kinds
// looked up in reg. A version 1 file has one layout, named name. It builds
// every leaf once, so bad arguments, unknown kinds, bad regular expressions
// and cycles between layouts are all reported here, each at its place.
func CompileAll(f *File, name string, reg *actors.Registry) ([]actors.LayoutSpec, error) {
	if f.Version < 2 {
		spec, err := Compile(f, name, reg)
		if err != nil {
			return nil, err
		}
		return []actors.LayoutSpec{spec.Tree()}, nil
	}
	c := &compiler{file: f, reg: reg, named: map[string]*Named{}}
	for _, l := range f.Layouts {
		c.named[l.Name] = l
	}
	var specs []actors.LayoutSpec
	for _, l := range f.Layouts {
		root := c.node(l.Root, l.Name, []string{l.Name})
		queue := 0
		if l.Root.Type == "model" {
			queue = l.Root.Queue
		}
		specs = append(specs, actors.LayoutSpec{Name: l.Name, Root: root, Queue: queue, Breaker: l.Breaker})
	}
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	return specs, nil
}

type compiler struct {
	file  *File
	reg   *actors.Registry
	named map[string]*Named
	errs  []error
	seen  map[string]bool
}

// fail records an error once: a layout referred to twice is compiled twice.
func (c *compiler) fail(at pos, format string, args ...any) {
	err := &Error{File: c.file.Name, Line: at.line, Column: at.column, Msg: fmt.Sprintf(format, args...)}
	if c.seen == nil {
		c.seen = map[string]bool{}
	}
	if !c.seen[err.Error()] {
		c.seen[err.Error()] = true
		c.errs = append(c.errs, err)
	}
}

// node compiles a node whose path starts with prefix (the layout's name, or
// its parent's path and its place there); stack holds the layouts being
// compiled, to catch cycles of references.
func (c *compiler) node(n *Node, prefix string, stack []string) actors.Node {
	switch n.Type {
	case "model":
		return c.model(n, prefix)
	case "filter":
		c.fail(n.at, "a filter maps a pipeline's request or answer: make it a stage of a pipeline")
	case "pipeline":
		return c.pipeline(n, prefix+"/pipeline", stack)
	case "route":
		return c.route(n, prefix+"/route", stack)
	case "fallback":
		path := prefix + "/fallback"
		if len(n.Children) == 0 {
			return nil
		}
		return &actors.FallbackNode{Path: path, Resume: n.Resume, Children: c.children(n.Children, path, stack)}
	case "fanout":
		path := prefix + "/fanout"
		if len(n.Children) == 0 {
			return nil
		}
		labels := make([]string, len(n.Children))
		for i, child := range n.Children {
			labels[i] = child.Label
			if labels[i] == "" {
				labels[i] = child.describe()
			}
		}
		return &actors.FanoutNode{Path: path, Merge: n.Merge, Labels: labels, Children: c.children(n.Children, path, stack)}
	case "pool":
		path := prefix + "/pool"
		if n.Of == nil || n.Size < 1 {
			return nil
		}
		var replicas []actors.Node
		for i := 0; i < n.Size; i++ {
			replicas = append(replicas, c.node(n.Of, fmt.Sprintf("%s/%d", path, i), stack))
		}
		return &actors.PoolNode{Path: path, Replicas: replicas}
	case "layout":
		return c.ref(n, prefix, stack)
	}
	return nil
}

// describe names a node for a fan-out's labels and for graphs.
func (n *Node) describe() string {
	switch n.Type {
	case "model", "filter":
		return n.Kind
	case "layout":
		return n.Kind
	}
	return n.Type
}

func (c *compiler) children(nodes []*Node, path string, stack []string) []actors.Node {
	out := make([]actors.Node, len(nodes))
	for i, n := range nodes {
		out[i] = c.node(n, fmt.Sprintf("%s/%d", path, i), stack)
	}
	return out
}

func (c *compiler) model(n *Node, prefix string) actors.Node {
	kind, err := c.reg.Model(n.Kind)
	if err != nil {
		c.fail(n.kindAt, "%v", err)
		return nil
	}
	args := n.Args
	newModel := func() (actors.Model, error) { return kind.New(args) }
	capacity := kind.Capacity
	probe, err := newModel()
	if err != nil {
		at := n.argsAt
		if at.line == 0 {
			at = n.kindAt
		}
		c.fail(at, "%s: %v", kind.Name, err)
		return nil
	}
	if sized, ok := probe.(actors.Sized); ok && sized.Capacity() > 0 {
		capacity = sized.Capacity()
	}
	actors.CloseInstance(probe)
	if n.Concurrency > 0 {
		capacity = n.Concurrency
	}
	capacity = max(capacity, 1)
	queue := 4 * capacity
	if n.Queue > 0 {
		queue = n.Queue
	}
	return &actors.ModelNode{Path: prefix + "/" + kind.Name, New: newModel, Capacity: capacity, Queue: queue}
}

func (c *compiler) filter(n *Node, prefix string) *actors.FilterNode {
	kind, err := c.reg.Filter(n.Kind)
	if err != nil {
		c.fail(n.kindAt, "%v", err)
		return nil
	}
	args := n.Args
	newFilter := func() (actors.Filter, error) { return kind.New(args) }
	probe, err := newFilter()
	if err != nil {
		at := n.argsAt
		if at.line == 0 {
			at = n.kindAt
		}
		c.fail(at, "%s: %v", kind.Name, err)
		return nil
	}
	actors.CloseInstance(probe)
	return &actors.FilterNode{Path: prefix + "/" + kind.Name, New: newFilter}
}

// pipeline: the filters before its one other stage map the request, those
// after it the answer.
func (c *compiler) pipeline(n *Node, path string, stack []string) actors.Node {
	core := -1
	for i, s := range n.Children {
		if s.Type == "filter" {
			continue
		}
		if core >= 0 {
			c.fail(s.at, "a pipeline has one stage that answers (here a second one, after the %s at line %d): put alternatives in a fallback, route or fanout",
				n.Children[core].describe(), n.Children[core].at.line)
			continue
		}
		core = i
	}
	if core < 0 {
		if len(n.Children) > 0 {
			c.fail(n.at, "a pipeline needs a stage that answers: a model or another node, between its filters")
		}
		return nil
	}
	p := &actors.PipelineNode{Path: path}
	for i, s := range n.Children {
		stagePrefix := fmt.Sprintf("%s/%d", path, i)
		switch {
		case i < core:
			p.Ingress = append(p.Ingress, c.filter(s, stagePrefix))
		case i > core && s.Type == "filter":
			p.Egress = append(p.Egress, c.filter(s, stagePrefix))
		default:
			p.Core = c.node(s, stagePrefix, stack)
		}
	}
	return p
}

func (c *compiler) route(n *Node, path string, stack []string) actors.Node {
	r := &actors.RouteNode{Path: path}
	for i, b := range n.Branches {
		cond := actors.Condition{
			Messages: actors.Bound{Min: b.When.Messages.Min, Max: b.When.Messages.Max},
			Chars:    actors.Bound{Min: b.When.Chars.Min, Max: b.When.Chars.Max},
		}
		if b.When.LastMessage != "" {
			cond.LastMessage = c.regexp(b.When.LastMessage, b.When.lastAt, "last_message")
		}
		for name, expr := range b.When.Params {
			if cond.Params == nil {
				cond.Params = map[string]*regexp.Regexp{}
			}
			cond.Params[name] = c.regexp(expr, b.When.paramAt[name], "param "+name)
		}
		r.Branches = append(r.Branches, actors.RouteBranch{When: cond, Then: c.node(b.Then, fmt.Sprintf("%s/%d", path, i), stack)})
	}
	if n.Default != nil {
		r.Default = c.node(n.Default, fmt.Sprintf("%s/%d", path, len(n.Branches)), stack)
	}
	return r
}

func (c *compiler) regexp(expr string, at pos, what string) *regexp.Regexp {
	re, err := regexp.Compile(expr)
	if err != nil {
		c.fail(at, "%s: not a valid regular expression: %v", what, strings.TrimPrefix(err.Error(), "error parsing regexp: "))
		return nil
	}
	return re
}

// ref inlines another layout: its tree is spawned again under this one, so
// each layout's actors, metrics and restarts stay its own.
func (c *compiler) ref(n *Node, prefix string, stack []string) actors.Node {
	target, ok := c.named[n.Kind]
	if !ok {
		var names []string
		for name := range c.named {
			names = append(names, name)
		}
		c.fail(n.kindAt, "no layout named %q in this file (have %s)", n.Kind, strings.Join(sorted(names), ", "))
		return nil
	}
	for i, name := range stack {
		if name == n.Kind {
			cycle := append(append([]string{}, stack[i:]...), n.Kind)
			c.fail(n.kindAt, "layouts refer to each other in a cycle: %s", strings.Join(cycle, " → "))
			return nil
		}
	}
	return c.node(target.Root, prefix+"/"+n.Kind, append(stack, n.Kind))
}

func sorted(s []string) []string {
	slices.Sort(s)
	return s
}
