package opencc

import (
	"github.com/troupe-llm/troupe/actors"
)

// Args are the opencc filter's layout arguments.
type Args struct {
	// Config names an OpenCC conversion, e.g. "s2twp" (the default), "s2t",
	// "t2s"; see Configs.
	Config string `json:"config"`
}

// filter converts the history on the way in and the output stream on the
// way out with one shared Converter.
type filter struct{ conv *Converter }

func newFilter(args actors.Args) (actors.Filter, error) {
	a := Args{Config: "s2twp"}
	if err := args.Decode(&a); err != nil {
		return nil, err
	}
	conv, err := Load(a.Config)
	if err != nil {
		return nil, err
	}
	return &filter{conv: conv}, nil
}

// MapHistory converts every message of the history.
func (f *filter) MapHistory(history []*actors.Message) ([]*actors.Message, error) {
	for _, m := range history {
		m.Content = f.conv.Convert(m.Content)
	}
	return history, nil
}

// NewStream returns a streaming converter whose output equals converting
// the whole answer at once.
func (f *filter) NewStream() actors.Stream { return f.conv.NewStream() }

func init() {
	actors.RegisterFilter(actors.FilterKind{
		Name:    "opencc",
		Aliases: []string{"filters.opencc.OpenCC"},
		New:     newFilter,
	})
}
