package layout

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// Graph formats.
const (
	FormatDOT     = "dot"
	FormatMermaid = "mermaid"
)

// WriteGraph draws a file's layouts as it declares them: one subgraph per
// layout, a box per node labelled with its type (or its kind, for models
// and filters), edges from each node to its children in order, and a
// reference to another layout drawn as an edge to that layout's tree. A
// version 1 file is drawn as the one pipeline it is, named name.
func WriteGraph(w io.Writer, f *File, name, format string) error {
	g := &graph{format: format}
	layouts := f.Layouts
	if f.Version < 2 {
		layouts = []*Named{{Name: name, Root: f.v1Tree()}}
	}
	switch format {
	case FormatDOT:
		g.line("digraph layouts {")
		g.line(`  rankdir=LR; node [shape=box, fontname="sans-serif"];`)
	case FormatMermaid:
		g.line("flowchart LR")
	default:
		return fmt.Errorf("unknown graph format %q (want dot or mermaid)", format)
	}
	roots := map[string]string{}
	for _, l := range layouts {
		roots[l.Name] = g.id(l.Name)
	}
	for _, l := range layouts {
		g.layout(l, roots)
	}
	for _, e := range g.refs {
		g.edge(e[0], roots[e[1]], "")
	}
	if format == FormatDOT {
		g.line("}")
	}
	_, err := io.WriteString(w, g.b.String())
	return err
}

// v1Tree is a version 1 file as the tree it is.
func (f *File) v1Tree() *Node {
	p := &Node{Type: "pipeline"}
	for _, s := range f.Ingress {
		p.Children = append(p.Children, &Node{Type: "filter", Kind: s.Class})
	}
	p.Children = append(p.Children, &Node{Type: "model", Kind: f.Model.Class})
	for _, s := range f.Egress {
		p.Children = append(p.Children, &Node{Type: "filter", Kind: s.Class})
	}
	return p
}

type graph struct {
	format string
	b      strings.Builder
	next   int
	refs   [][2]string // from node id to layout name
}

func (g *graph) line(format string, args ...any) {
	fmt.Fprintf(&g.b, format+"\n", args...)
}

// id makes a fresh node id.
func (g *graph) id(hint string) string {
	g.next++
	var b strings.Builder
	for _, r := range hint {
		if r < 128 && (r == '_' || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z') || ('0' <= r && r <= '9')) {
			b.WriteRune(r)
		}
	}
	return fmt.Sprintf("n%d_%s", g.next, b.String())
}

func (g *graph) layout(l *Named, roots map[string]string) {
	root := roots[l.Name]
	if g.format == FormatDOT {
		g.line("  subgraph %q {", "cluster_"+l.Name)
		g.line("    label=%q;", l.Name)
		g.line("    %s [label=%q, shape=ellipse];", root, l.Name)
	} else {
		g.line(`  subgraph %s ["%s"]`, g.id(l.Name), mermaidText(l.Name))
		g.line(`    %s(["%s"])`, root, mermaidText(l.Name))
	}
	if l.Root != nil {
		g.edge(root, g.node(l.Root), "")
	}
	if g.format == FormatDOT {
		g.line("  }")
	} else {
		g.line("  end")
	}
}

// node draws a node and its children, and returns its id.
func (g *graph) node(n *Node) string {
	if n.Type == "layout" {
		id := g.id("ref")
		g.box(id, "layout "+n.Kind, true)
		g.refs = append(g.refs, [2]string{id, n.Kind})
		return id
	}
	id := g.id(n.Type)
	label := n.Type
	switch n.Type {
	case "model", "filter":
		label = n.Type + ": " + n.Kind
	case "fallback":
		if n.Resume {
			label = "fallback (resume)"
		}
	case "fanout":
		label = "fanout (" + n.Merge + ")"
	case "pool":
		label = fmt.Sprintf("pool × %d", n.Size)
	}
	g.box(id, label, false)
	for i, c := range n.Children {
		g.edge(id, g.node(c), fmt.Sprint(i))
	}
	for i, b := range n.Branches {
		if b.Then != nil {
			g.edge(id, g.node(b.Then), fmt.Sprintf("%d: %s", i, b.When.describe()))
		}
	}
	if n.Default != nil {
		g.edge(id, g.node(n.Default), "default")
	}
	if n.Of != nil {
		g.edge(id, g.node(n.Of), "each replica")
	}
	return id
}

func (g *graph) box(id, label string, ref bool) {
	if g.format == FormatDOT {
		style := ""
		if ref {
			style = ", style=dashed"
		}
		g.line("    %s [label=%q%s];", id, label, style)
		return
	}
	if ref {
		g.line(`    %s[/"%s"/]`, id, mermaidText(label))
		return
	}
	g.line(`    %s["%s"]`, id, mermaidText(label))
}

func (g *graph) edge(from, to, label string) {
	if g.format == FormatDOT {
		if label == "" {
			g.line("    %s -> %s;", from, to)
		} else {
			g.line("    %s -> %s [label=%q];", from, to, label)
		}
		return
	}
	if label == "" {
		g.line("    %s --> %s", from, to)
	} else {
		g.line(`    %s -->|"%s"| %s`, from, mermaidText(label), to)
	}
}

// mermaidText keeps a label inside Mermaid's quotes: a quote becomes its
// entity code, as Mermaid wants.
func mermaidText(s string) string { return strings.ReplaceAll(s, `"`, "#quot;") }

// describe says a branch's condition in a few words.
func (w When) describe() string {
	var parts []string
	if w.LastMessage != "" {
		parts = append(parts, "last message ~ "+w.LastMessage)
	}
	for _, r := range []struct {
		name string
		r    Range
	}{{"messages", w.Messages}, {"chars", w.Chars}} {
		switch {
		case r.r.Max > 0:
			parts = append(parts, fmt.Sprintf("%d ≤ %s ≤ %d", r.r.Min, r.name, r.r.Max))
		case r.r.Min > 0:
			parts = append(parts, fmt.Sprintf("%s ≥ %d", r.name, r.r.Min))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(w.Params)) {
		parts = append(parts, name+" ~ "+w.Params[name])
	}
	return strings.Join(parts, ", ")
}
