// Package layout reads layout files, validates them with errors that name
// file, line and column, and compiles them into actor trees.
//
// Version 1 is the Python original's format: an llm, a list of ingress
// filters and a list of egress filters, each with a class and args (Troupe
// adds three optional keys to llm: concurrency, queue and breaker). Version 2 names
// several layouts, each a tree of pipeline, route, fallback, fanout and pool
// nodes over model and filter kinds, with references between layouts.
package layout

import (
	_ "embed"
	"errors"
	"fmt"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/troupe-llm/troupe/actors"
)

//go:embed default.yaml
var defaultLayout []byte

// DefaultName is the file name errors use for the built-in layout.
const DefaultName = "<built-in layout>"

// File is a parsed layout file.
type File struct {
	Name    string // the file it came from, for errors
	Version int
	// Version 1: one pipeline.
	Model   Stage
	Ingress []Stage
	Egress  []Stage
	// Version 2: named layouts, each a tree, in the file's order.
	Layouts []*Named
}

// Stage is one filter or model entry of a layout.
type Stage struct {
	Class string
	Args  actors.Args
	// Concurrency and Queue override a model kind's defaults; 0 keeps them.
	Concurrency int
	Queue       int
	// Breaker is the layout's circuit breaker, set on a version 1 file's
	// llm.
	Breaker actors.BreakerConfig

	line, argsLine pos
}

type pos struct{ line, column int }

// Error is a problem at a place in a layout file.
type Error struct {
	File   string
	Line   int
	Column int
	Msg    string
}

func (e *Error) Error() string {
	switch {
	case e.Line == 0:
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	case e.Column == 0:
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Column, e.Msg)
}

// Load reads and parses a layout file; an empty path means the built-in one.
func Load(path string) (*File, error) {
	if path == "" {
		return Parse(DefaultName, defaultLayout)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("layout: %w", err)
	}
	return Parse(path, data)
}

// Parse parses a layout file's contents. name is used in errors. All problems
// found are reported together, each with its position.
func Parse(name string, data []byte) (*File, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, yamlError(name, err)
	}
	p := &parser{file: &File{Name: name, Version: 1}}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, &Error{File: name, Msg: "empty layout: want a mapping with version, llm, ingress-filters and egress-filters"}
	}
	top := doc.Content[0]
	if version(top) == "2" {
		p.file.Version = 2
		p.v2(top)
	} else {
		p.top(top)
	}
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return p.file, nil
}

type parser struct {
	file *File
	errs []error
}

func (p *parser) errorf(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file.Name, Line: n.Line, Column: n.Column, Msg: fmt.Sprintf(format, args...)})
}

// version is the value of a layout file's version key, if it has one.
func version(top *yaml.Node) string {
	if top.Kind != yaml.MappingNode {
		return ""
	}
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == "version" {
			return top.Content[i+1].Value
		}
	}
	return ""
}

func (p *parser) top(n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "want a mapping with version, llm, ingress-filters and egress-filters")
		return
	}
	var sawVersion, sawModel bool
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch key.Value {
		case "version":
			sawVersion = true
			if val.Value != "1" {
				p.errorf(val, "unsupported version %q: this Troupe reads versions 1 and 2", val.Value)
			}
		case "llm":
			sawModel = true
			p.file.Model = p.stage(val, true)
		case "ingress-filters":
			p.file.Ingress = p.stages(val)
		case "egress-filters":
			p.file.Egress = p.stages(val)
		case "override-process":
			p.errorf(key, "override-process is not supported: write a model or filter kind in Go instead (see examples/)")
		default:
			p.errorf(key, "unknown key %q (want version, llm, ingress-filters, egress-filters)", key.Value)
		}
	}
	if !sawVersion {
		p.errorf(n, "missing version: add \"version: 1\"")
	}
	if !sawModel {
		p.errorf(n, "missing llm: a layout needs a model")
	}
}

func (p *parser) stages(n *yaml.Node) []Stage {
	if n.Tag == "!!null" {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "want a list of filters, each with class and args")
		return nil
	}
	var out []Stage
	for _, item := range n.Content {
		out = append(out, p.stage(item, false))
	}
	return out
}

func (p *parser) stage(n *yaml.Node, model bool) Stage {
	s := Stage{line: pos{n.Line, n.Column}}
	if n.Kind != yaml.MappingNode {
		p.errorf(n, "want a mapping with class and args")
		return s
	}
	sawClass := false
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		switch {
		case key.Value == "class":
			sawClass = true
			if val.Kind != yaml.ScalarNode || strings.TrimSpace(val.Value) == "" {
				p.errorf(val, "class must name a kind, e.g. reflect or opencc")
				continue
			}
			s.Class, s.line = val.Value, pos{val.Line, val.Column}
		case key.Value == "args":
			s.argsLine = pos{val.Line, val.Column}
			if val.Tag == "!!null" {
				continue
			}
			if val.Kind != yaml.MappingNode {
				p.errorf(val, "args must be a mapping")
				continue
			}
			var args map[string]any
			if err := val.Decode(&args); err != nil {
				p.errorf(val, "args: %v", err)
				continue
			}
			s.Args = args
		case model && key.Value == "breaker":
			s.Breaker = p.breaker(val)
		case model && (key.Value == "concurrency" || key.Value == "queue"):
			var v int
			if err := val.Decode(&v); err != nil || v < 1 {
				p.errorf(val, "%s must be a whole number of at least 1", key.Value)
				continue
			}
			if key.Value == "concurrency" {
				s.Concurrency = v
			} else {
				s.Queue = v
			}
		default:
			want := "class, args"
			if model {
				want += ", concurrency, queue, breaker"
			}
			p.errorf(key, "unknown key %q (want %s)", key.Value, want)
		}
	}
	if !sawClass {
		p.errorf(n, "missing class")
	}
	return s
}

// yamlError turns yaml.v3's "yaml: line N: msg" into a positioned Error.
func yamlError(name string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	var line int
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &line); scanErr == nil {
		msg = strings.TrimSpace(msg[strings.Index(msg, ":")+1:])
	}
	return &Error{File: name, Line: line, Msg: "invalid YAML: " + msg}
}
