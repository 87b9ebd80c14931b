package layout

import (
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/troupe-llm/troupe/actors"
)

// Named is one layout of a version 2 file: an LLM name and its tree.
type Named struct {
	Name string
	Root *Node
	// Breaker is the layout's circuit breaker, set beside its top node's
	// keys.
	Breaker actors.BreakerConfig
	at      pos
}

// Node is one node of a version 2 layout as written. Type says which; each
// type reads its own keys (see the parse functions below) and leaves the
// others zero.
type Node struct {
	Type string // model, filter, pipeline, route, fallback, fanout, pool, layout
	// Kind is the model or filter kind; for a layout reference, the name.
	Kind        string
	Args        actors.Args
	Concurrency int
	Queue       int
	// Label names a fan-out child's answer.
	Label string

	Children []*Node   // pipeline stages; fallback and fanout children
	Branches []*Branch // route
	Default  *Node     // route
	Resume   bool      // fallback
	Merge    string    // fanout
	Size     int       // pool
	Of       *Node     // pool

	at, kindAt, argsAt pos
}

// Branch is one `when`/`then` of a route.
type Branch struct {
	When When
	Then *Node
	at   pos
}

// When is a route branch's condition as written.
type When struct {
	LastMessage     string
	Messages, Chars Range
	Params          map[string]string
	at              pos
	lastAt          pos
	paramAt         map[string]pos
}

// Range bounds a count: at least Min, at most Max (0: no upper bound).
type Range struct{ Min, Max int }

// nodeTypes are the keys that say what a node is.
var nodeTypes = []string{"model", "filter", "pipeline", "route", "fallback", "fanout", "pool", "layout"}

func (p *parser) v2(n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "want a mapping with version and layouts")
		return
	}
	sawLayouts := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "version":
		case "layouts":
			sawLayouts = true
			p.layouts(val)
		case "llm", "ingress-filters", "egress-filters":
			p.errorf(key, "%s belongs to version 1 files: write version: 1, or name layouts under layouts", key.Value)
		default:
			p.errorf(key, "unknown key %q (want version, layouts)", key.Value)
		}
	}
	if !sawLayouts {
		p.errorf(n, "missing layouts: a version 2 file names its layouts under \"layouts\"")
	}
}

func (p *parser) layouts(n *yaml.Node) {
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		p.errorf(n, "layouts must map each LLM name to its tree")
		return
	}
	seen := map[string]pos{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		name := strings.TrimSpace(key.Value)
		if name == "" || key.Kind != yaml.ScalarNode {
			p.errorf(key, "a layout's name must be a non-empty string")
			continue
		}
		if first, dup := seen[name]; dup {
			p.errorf(key, "layout %q is defined twice (first at line %d)", name, first.line)
			continue
		}
		seen[name] = pos{key.Line, key.Column}
		l := &Named{Name: name, at: pos{key.Line, key.Column}}
		l.Root, l.Breaker = p.layoutTop(val)
		p.file.Layouts = append(p.file.Layouts, l)
	}
}

// layoutTop parses a layout's top node, which may also carry the settings of
// the layout as a whole (breaker).
func (p *parser) layoutTop(n *yaml.Node) (*Node, actors.BreakerConfig) {
	var b actors.BreakerConfig
	if n.Kind == yaml.MappingNode {
		rest := *n
		rest.Content = nil
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == "breaker" {
				b = p.breaker(n.Content[i+1])
				continue
			}
			rest.Content = append(rest.Content, n.Content[i], n.Content[i+1])
		}
		n = &rest
	}
	return p.node(n), b
}

// node parses one node: a mapping with exactly one of the node types' keys
// and the keys that type takes.
func (p *parser) node(n *yaml.Node) *Node {
	node := &Node{at: pos{n.Line, n.Column}}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "want a node: a mapping with one of %s", strings.Join(nodeTypes, ", "))
		return node
	}
	var body *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		key := n.Content[i]
		for _, t := range nodeTypes {
			if key.Value != t {
				continue
			}
			if node.Type != "" {
				p.errorf(key, "a node is one thing: %q and %q in one mapping", node.Type, t)
				continue
			}
			node.Type, body = t, n.Content[i+1]
			node.kindAt = pos{body.Line, body.Column}
		}
	}
	if node.Type == "" {
		p.errorf(n, "want a node: a mapping with one of %s", strings.Join(nodeTypes, ", "))
		return node
	}
	allowed := map[string]bool{node.Type: true, "label": true}
	switch node.Type {
	case "model":
		allowed["args"], allowed["concurrency"], allowed["queue"] = true, true, true
		node.Kind = p.name(body, "a model kind, e.g. openai or reflect")
	case "filter":
		allowed["args"] = true
		node.Kind = p.name(body, "a filter kind, e.g. opencc")
	case "layout":
		node.Kind = p.name(body, "the name of another layout of this file")
	case "pipeline":
		node.Children = p.list(body, "pipeline", "its stages in order")
	case "route":
		p.route(node, body)
	case "fallback":
		p.fallback(node, body)
	case "fanout":
		p.fanout(node, body)
	case "pool":
		p.pool(node, body)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		if !allowed[key.Value] {
			if key.Value == "breaker" {
				p.errorf(key, "breaker is a setting of a whole layout: put it beside the keys of the layout's top node")
				continue
			}
			if !slices.Contains(nodeTypes, key.Value) { // a second type is reported above
				p.errorf(key, "unknown key %q for a %s node (want %s)", key.Value, node.Type, keysOf(node.Type))
			}
			continue
		}
		switch key.Value {
		case "args":
			node.Args, node.argsAt = p.args(val)
		case "concurrency", "queue":
			v := p.count(val, key.Value)
			if key.Value == "concurrency" {
				node.Concurrency = v
			} else {
				node.Queue = v
			}
		case "label":
			node.Label = val.Value
		}
	}
	return node
}

func keysOf(typ string) string {
	switch typ {
	case "model":
		return "model, args, concurrency, queue, label"
	case "filter":
		return "filter, args, label"
	}
	return typ + ", label"
}

func (p *parser) name(n *yaml.Node, what string) string {
	if n.Kind != yaml.ScalarNode || strings.TrimSpace(n.Value) == "" {
		p.errorf(n, "want %s", what)
		return ""
	}
	return n.Value
}

func (p *parser) args(n *yaml.Node) (actors.Args, pos) {
	at := pos{n.Line, n.Column}
	if n.Tag == "!!null" {
		return nil, at
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "args must be a mapping")
		return nil, at
	}
	var args map[string]any
	if err := n.Decode(&args); err != nil {
		p.errorf(n, "args: %v", err)
		return nil, at
	}
	return args, at
}

func (p *parser) count(n *yaml.Node, what string) int {
	var v int
	if err := n.Decode(&v); err != nil || v < 1 {
		p.errorf(n, "%s must be a whole number of at least 1", what)
		return 0
	}
	return v
}

// list parses a list of nodes.
func (p *parser) list(n *yaml.Node, typ, what string) []*Node {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		p.errorf(n, "%s wants a list of nodes: %s", typ, what)
		return nil
	}
	var out []*Node
	for _, item := range n.Content {
		out = append(out, p.node(item))
	}
	return out
}

// route: a list of {when, then} branches and at most one {default}, last.
func (p *parser) route(node *Node, n *yaml.Node) {
	if n.Kind != yaml.SequenceNode || len(n.Content) == 0 {
		p.errorf(n, "route wants a list of branches: {when: ..., then: NODE}, and {default: NODE} last")
		return
	}
	for i, item := range n.Content {
		if item.Kind != yaml.MappingNode {
			p.errorf(item, "a route branch is {when: ..., then: NODE} or {default: NODE}")
			continue
		}
		b := &Branch{at: pos{item.Line, item.Column}}
		var sawWhen, sawThen bool
		for j := 0; j+1 < len(item.Content); j += 2 {
			key, val := item.Content[j], item.Content[j+1]
			switch key.Value {
			case "when":
				sawWhen = true
				b.When = p.when(val)
			case "then":
				sawThen = true
				b.Then = p.node(val)
			case "default":
				if node.Default != nil {
					p.errorf(key, "a route has one default")
					continue
				}
				if i != len(n.Content)-1 {
					p.errorf(key, "the default must be the route's last branch")
				}
				node.Default = p.node(val)
			default:
				p.errorf(key, "unknown key %q in a route branch (want when, then, default)", key.Value)
			}
		}
		switch {
		case sawWhen && !sawThen:
			p.errorf(item, "a route branch with when needs then")
		case sawThen && !sawWhen:
			p.errorf(item, "a route branch with then needs when")
		case sawWhen && sawThen:
			node.Branches = append(node.Branches, b)
		}
	}
}

func (p *parser) when(n *yaml.Node) When {
	w := When{at: pos{n.Line, n.Column}}
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		p.errorf(n, "when wants a mapping of conditions: last_message, messages, chars, param")
		return w
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "last_message":
			w.LastMessage, w.lastAt = p.name(val, "a regular expression"), pos{val.Line, val.Column}
		case "messages":
			w.Messages = p.rangeOf(val, "messages")
		case "chars":
			w.Chars = p.rangeOf(val, "chars")
		case "param":
			if val.Kind != yaml.MappingNode || len(val.Content) == 0 {
				p.errorf(val, "param wants a mapping of parameter names to regular expressions")
				continue
			}
			w.Params, w.paramAt = map[string]string{}, map[string]pos{}
			for j := 0; j+1 < len(val.Content); j += 2 {
				k, v := val.Content[j], val.Content[j+1]
				w.Params[k.Value] = p.name(v, "a regular expression")
				w.paramAt[k.Value] = pos{v.Line, v.Column}
			}
		default:
			p.errorf(key, "unknown condition %q (want last_message, messages, chars, param)", key.Value)
		}
	}
	return w
}

// rangeOf reads a count condition: N (at least N) or {min: N, max: M}.
func (p *parser) rangeOf(n *yaml.Node, what string) Range {
	var at int
	if n.Kind == yaml.ScalarNode {
		if err := n.Decode(&at); err != nil || at < 0 {
			p.errorf(n, "%s wants a whole number (at least that many) or {min: N, max: M}", what)
		}
		return Range{Min: at}
	}
	var r struct {
		Min *int `yaml:"min"`
		Max *int `yaml:"max"`
	}
	if n.Kind != yaml.MappingNode || n.Decode(&r) != nil || (r.Min == nil && r.Max == nil) {
		p.errorf(n, "%s wants a whole number (at least that many) or {min: N, max: M}", what)
		return Range{}
	}
	var out Range
	if r.Min != nil {
		out.Min = *r.Min
	}
	if r.Max != nil {
		out.Max = *r.Max
	}
	for j := 0; j+1 < len(n.Content); j += 2 {
		if k := n.Content[j].Value; k != "min" && k != "max" {
			p.errorf(n.Content[j], "unknown key %q in %s (want min, max)", k, what)
		}
	}
	if out.Min < 0 || (r.Max != nil && (out.Max < 1 || out.Max < out.Min)) {
		p.errorf(n, "%s: want 0 ≤ min ≤ max and max ≥ 1", what)
	}
	return out
}

// fallback: a list of children, or {resume: bool, of: [children]}.
func (p *parser) fallback(node *Node, n *yaml.Node) {
	if n.Kind == yaml.SequenceNode {
		node.Children = p.list(n, "fallback", "its children in order")
		return
	}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "fallback wants a list of children, or {resume: true, of: [children]}")
		return
	}
	sawOf := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "resume":
			if err := val.Decode(&node.Resume); err != nil {
				p.errorf(val, "resume must be true or false")
			}
		case "of":
			sawOf = true
			node.Children = p.list(val, "fallback", "its children in order")
		default:
			p.errorf(key, "unknown key %q in fallback (want resume, of)", key.Value)
		}
	}
	if !sawOf {
		p.errorf(n, "fallback needs of: its children in order")
	}
}

// fanout: {merge: first|all, of: [children]}.
func (p *parser) fanout(node *Node, n *yaml.Node) {
	node.Merge = actors.MergeFirst
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "fanout wants {merge: first or all, of: [children]}")
		return
	}
	sawOf := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "merge":
			if val.Value != actors.MergeFirst && val.Value != actors.MergeAll {
				p.errorf(val, "merge must be first or all, not %q", val.Value)
				continue
			}
			node.Merge = val.Value
		case "of":
			sawOf = true
			node.Children = p.list(val, "fanout", "the children to send each chat to")
		default:
			p.errorf(key, "unknown key %q in fanout (want merge, of)", key.Value)
		}
	}
	if !sawOf {
		p.errorf(n, "fanout needs of: the children to send each chat to")
	}
}

// pool: {size: N, of: NODE}.
func (p *parser) pool(node *Node, n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "pool wants {size: N, of: NODE}")
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "size":
			node.Size = p.count(val, "size")
		case "of":
			node.Of = p.node(val)
		default:
			p.errorf(key, "unknown key %q in pool (want size, of)", key.Value)
		}
	}
	if node.Size == 0 || node.Of == nil {
		p.errorf(n, "pool needs size (replicas, at least 1) and of (the node to replicate)")
	}
}
