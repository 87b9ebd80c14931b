// Package shout is an example of a kind of one's own: a filter that
// upper-cases the answer and ends every sentence with a mark, with typed
// arguments that the layout file sets. It registers itself from init; a
// troupe binary that imports it can use `filter: shout` in its layouts.
package shout

import (
	"fmt"
	"strings"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the shout filter's arguments. Unknown ones are errors, with
// the place in the layout file.
type Args struct {
	// Mark replaces each sentence's final period.
	Mark string `json:"mark"`
}

// Default sets the arguments a layout leaves out.
func (a *Args) Default() { a.Mark = "!" }

// Validate checks the arguments once decoded.
func (a *Args) Validate() error {
	if a.Mark == "" || len([]rune(a.Mark)) > 3 {
		return fmt.Errorf("mark must be 1 to 3 characters, got %q", a.Mark)
	}
	return nil
}

// Filter is a shout filter instance.
type Filter struct{ mark string }

// MapHistory leaves the request alone.
func (f *Filter) MapHistory(h []*actors.Message) ([]*actors.Message, error) { return h, nil }

// NewStream returns one answer's state. Upper-casing works rune by rune,
// but a period is held back until the next rune says whether it ends a
// sentence (a space or the end) or is part of a number (3.5).
func (f *Filter) NewStream() actors.Stream { return &stream{mark: f.mark} }

type stream struct {
	mark string
	held bool // a period waits
}

func (s *stream) Write(chunk string) string {
	var b strings.Builder
	for _, r := range chunk {
		if s.held {
			s.held = false
			if r == ' ' || r == '\n' {
				b.WriteString(s.mark)
			} else {
				b.WriteRune('.')
			}
		}
		if r == '.' {
			s.held = true
			continue
		}
		b.WriteString(strings.ToUpper(string(r)))
	}
	return b.String()
}

func (s *stream) Flush() string {
	if s.held {
		s.held = false
		return s.mark
	}
	return ""
}

func init() {
	actors.RegisterFilter(actors.TypedFilter("shout", func(a Args) (actors.Filter, error) {
		return &Filter{mark: a.Mark}, nil
	}))
}
