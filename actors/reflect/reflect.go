// Package reflect is the reflect model: it answers a chat with its last user
// message, as the Python original's example model did. It costs next to
// nothing, which makes it the model for measuring the framework itself.
package reflect

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the reflect model's layout arguments.
type Args struct {
	// Chunk streams the answer this many runes at a time, as an LLM streams
	// tokens; 0 answers in one chunk.
	Chunk int `json:"chunk"`
}

// Model is the reflect model.
type Model struct{ chunk int }

// New returns a reflect model.
func New(args actors.Args) (actors.Model, error) {
	var a Args
	if err := args.Decode(&a); err != nil {
		return nil, err
	}
	if a.Chunk < 0 {
		return nil, fmt.Errorf("chunk must be 0 or more, got %d", a.Chunk)
	}
	return &Model{chunk: a.Chunk}, nil
}

// Generate implements actors.Model.
func (m *Model) Generate(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
	answer := actors.LastUserMessage(req.History)
	if m.chunk == 0 {
		return emit(answer)
	}
	for len(answer) > 0 {
		n, runes := 0, 0
		for n < len(answer) && runes < m.chunk {
			_, size := utf8.DecodeRuneInString(answer[n:])
			n += size
			runes++
		}
		if err := emit(answer[:n]); err != nil {
			return err
		}
		answer = answer[n:]
	}
	return nil
}

func init() {
	actors.RegisterModel(actors.ModelKind{
		Name:     "reflect",
		Aliases:  []string{"models.reflect.ReflectModel"},
		Capacity: 64,
		New:      New,
	})
}
