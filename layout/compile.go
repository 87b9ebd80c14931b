package layout

import (
	"errors"
	"fmt"

	"github.com/troupe-llm/troupe/actors"
)

// Compile turns a parsed layout into the spec of a pipeline named name, with
// kinds looked up in reg. It builds every stage once, so bad arguments are
// reported here, at their line, not when the first chat arrives.
func Compile(f *File, name string, reg *actors.Registry) (actors.PipelineSpec, error) {
	spec := actors.PipelineSpec{Name: name, Breaker: f.Model.Breaker}
	var errs []error
	fail := func(at pos, format string, args ...any) {
		errs = append(errs, &Error{File: f.Name, Line: at.line, Column: at.column, Msg: fmt.Sprintf(format, args...)})
	}

	filters := func(stages []Stage, dir string) []actors.FilterSpec {
		var out []actors.FilterSpec
		for i, s := range stages {
			kind, err := reg.Filter(s.Class)
			if err != nil {
				fail(s.line, "%v", err)
				continue
			}
			args := s.Args
			newFilter := func() (actors.Filter, error) { return kind.New(args) }
			probe, err := newFilter()
			if err != nil {
				fail(argsPos(s), "%s: %v", kind.Name, err)
				continue
			}
			actors.CloseInstance(probe)
			out = append(out, actors.FilterSpec{Path: fmt.Sprintf("%s/%d/%s", dir, i, kind.Name), New: newFilter})
		}
		return out
	}
	spec.Ingress = filters(f.Ingress, "ingress")
	spec.Egress = filters(f.Egress, "egress")

	if kind, err := reg.Model(f.Model.Class); err != nil {
		fail(f.Model.line, "%v", err)
	} else {
		args := f.Model.Args
		newModel := func() (actors.Model, error) { return kind.New(args) }
		capacity := kind.Capacity
		if probe, err := newModel(); err != nil {
			fail(argsPos(f.Model), "%s: %v", kind.Name, err)
		} else {
			if sized, ok := probe.(actors.Sized); ok && sized.Capacity() > 0 {
				capacity = sized.Capacity()
			}
			actors.CloseInstance(probe)
		}
		if f.Model.Concurrency > 0 {
			capacity = f.Model.Concurrency
		}
		capacity = max(capacity, 1)
		queue := 4 * capacity
		if f.Model.Queue > 0 {
			queue = f.Model.Queue
		}
		spec.Model = actors.ModelSpec{Path: "model/" + kind.Name, New: newModel, Capacity: capacity, Queue: queue}
	}
	if len(errs) > 0 {
		return actors.PipelineSpec{}, errors.Join(errs...)
	}
	return spec, nil
}

func argsPos(s Stage) pos {
	if s.argsLine.line > 0 {
		return s.argsLine
	}
	return s.line
}
