// Package dummy is the dummy model of the Python original: it answers a fixed
// text one character at a time, with a delay between characters, which makes
// it a stand-in for a slow LLM in demos and tests.
package dummy

import (
	"context"
	"fmt"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the dummy model's layout arguments.
type Args struct {
	Content string `json:"content"`
	// Delay between characters, as a Go duration ("20ms"); the default is
	// the original's 20ms.
	Delay string `json:"delay"`
	// Panic makes the model panic after this many characters, for
	// demonstrating and testing supervision; 0 never panics.
	Panic int `json:"panic"`
}

// Model is the dummy model.
type Model struct {
	content string
	delay   time.Duration
	panicAt int
}

// New returns a dummy model.
func New(args actors.Args) (actors.Model, error) {
	a := Args{Content: "I'm a dummy model.", Delay: "20ms"}
	if err := args.Decode(&a); err != nil {
		return nil, err
	}
	d, err := time.ParseDuration(a.Delay)
	if err != nil || d < 0 {
		return nil, fmt.Errorf("delay: want a duration such as \"20ms\", got %q", a.Delay)
	}
	return &Model{content: a.Content, delay: d, panicAt: a.Panic}, nil
}

// Generate implements actors.Model.
func (m *Model) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	var timer *time.Timer
	if m.delay > 0 {
		timer = time.NewTimer(m.delay)
		defer timer.Stop()
	}
	n := 0
	for i, r := range m.content {
		if m.panicAt > 0 && n == m.panicAt {
			panic("dummy model: panic argument reached")
		}
		if timer != nil && i > 0 {
			select {
			case <-timer.C:
				timer.Reset(m.delay)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := emit(string(r)); err != nil {
			return err
		}
		n++
	}
	return nil
}

func init() {
	actors.RegisterModel(actors.ModelKind{
		Name:     "dummy",
		Aliases:  []string{"worker_framework.dummy.DummyModel"},
		Capacity: 64,
		New:      New,
	})
}
