package actors

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// Model generates a chat's answer as a stream of text.
//
// Generate runs on a goroutine of its own, never in an actor's Receive, so it
// may block on I/O for as long as ctx allows. It calls emit for every piece of
// output in order; emit returns an error once the chat is cancelled, and
// Generate should then return promptly. One Model value serves up to its
// kind's capacity of chats at once, so Generate must be safe for concurrent
// use.
type Model interface {
	Generate(ctx context.Context, req *ChatRequest, emit func(text string) error) error
}

// Sized is a model whose arguments say how many chats it serves at once (an
// upstream's parallel slots), so that a layout need not repeat the number:
// the layout compiler takes it over the kind's Capacity. A layout's own
// concurrency key still wins.
type Sized interface {
	Capacity() int
}

// ModelFunc adapts a function to a Model, as http.HandlerFunc does for
// handlers.
type ModelFunc func(ctx context.Context, req *ChatRequest, emit func(text string) error) error

// Generate calls f.
func (f ModelFunc) Generate(ctx context.Context, req *ChatRequest, emit func(text string) error) error {
	return f(ctx, req, emit)
}

// Filter transforms a chat on its way through a layout: the history on the
// way in (ingress) and the output stream on the way out (egress). A filter
// that has nothing to do in one direction returns the input unchanged.
type Filter interface {
	// MapHistory maps the whole history before the model sees it. It may
	// change the slice and its messages in place.
	MapHistory(history []*Message) ([]*Message, error)
	// NewStream returns the per-chat state for mapping one output stream.
	NewStream() Stream
}

// Stream maps one chat's output stream, chunk by chunk. A stream whose unit
// is longer than a chunk holds back what it cannot decide yet and releases
// it with a later Write or with Flush, so that the concatenated output equals
// mapping the whole text at once.
type Stream interface {
	Write(chunk string) string
	Flush() string
}

// Args are a kind's arguments as written in a layout file.
type Args map[string]any

// Decode fills the struct v from args, strictly: an argument v has no field
// for is an error, so a typo in a layout file does not pass silently.
func (a Args) Decode(v any) error {
	if len(a) == 0 {
		return nil
	}
	data, err := json.Marshal(map[string]any(a))
	if err != nil {
		return fmt.Errorf("arguments: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("arguments: %w", err)
	}
	return nil
}

// ModelKind describes a kind of model that layouts can name.
type ModelKind struct {
	Name    string
	Aliases []string // other names layouts may use, e.g. the Python original's class paths
	// Capacity is how many chats one instance serves at once unless the
	// layout says otherwise.
	Capacity int
	New      func(args Args) (Model, error)
}

// FilterKind describes a kind of filter that layouts can name.
type FilterKind struct {
	Name    string
	Aliases []string
	New     func(args Args) (Filter, error)
}

// Defaulter is an argument struct that sets its defaults before a layout's
// arguments are decoded over them.
type Defaulter interface{ Default() }

// Validator is an argument struct that checks itself once decoded; its
// error is reported at the arguments' place in the layout file.
type Validator interface{ Validate() error }

// TypedModel describes a model kind whose arguments are the struct A,
// decoded strictly (an unknown argument is an error), defaulted and
// validated when *A implements Defaulter and Validator. It is the Go
// counterpart of the Python original's `class: module.Class`:
//
//	actors.RegisterModel(actors.TypedModel("shout", 16, func(a ShoutArgs) (actors.Model, error) { ... }))
func TypedModel[A any](name string, capacity int, build func(args A) (Model, error)) ModelKind {
	return ModelKind{Name: name, Capacity: capacity, New: func(args Args) (Model, error) {
		a, err := decodeTyped[A](args)
		if err != nil {
			return nil, err
		}
		return build(a)
	}}
}

// TypedFilter is TypedModel for filter kinds.
func TypedFilter[A any](name string, build func(args A) (Filter, error)) FilterKind {
	return FilterKind{Name: name, New: func(args Args) (Filter, error) {
		a, err := decodeTyped[A](args)
		if err != nil {
			return nil, err
		}
		return build(a)
	}}
}

func decodeTyped[A any](args Args) (A, error) {
	var a A
	if d, ok := any(&a).(Defaulter); ok {
		d.Default()
	}
	if err := args.Decode(&a); err != nil {
		return a, err
	}
	if v, ok := any(&a).(Validator); ok {
		if err := v.Validate(); err != nil {
			return a, err
		}
	}
	return a, nil
}

// ErrUnknownKind is returned for a kind name nobody registered.
var ErrUnknownKind = errors.New("unknown kind")

// Registry maps kind names to kinds. Kinds register themselves in the
// default registry from init, as Caddy modules do.
type Registry struct {
	mu      sync.RWMutex
	models  map[string]ModelKind
	filters map[string]FilterKind
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{models: map[string]ModelKind{}, filters: map[string]FilterKind{}}
}

// DefaultRegistry holds the kinds linked into this binary.
var DefaultRegistry = NewRegistry()

// RegisterModel adds a model kind to the default registry. It panics on a
// duplicate name, which is a programming error caught at start-up.
func RegisterModel(k ModelKind) { DefaultRegistry.RegisterModel(k) }

// RegisterFilter adds a filter kind to the default registry.
func RegisterFilter(k FilterKind) { DefaultRegistry.RegisterFilter(k) }

// RegisterModel adds a model kind under its name and aliases.
func (r *Registry) RegisterModel(k ModelKind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, name := range append([]string{k.Name}, k.Aliases...) {
		if _, dup := r.models[name]; dup {
			panic(fmt.Sprintf("actors: model kind %q registered twice", name))
		}
		r.models[name] = k
	}
}

// RegisterFilter adds a filter kind under its name and aliases.
func (r *Registry) RegisterFilter(k FilterKind) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, name := range append([]string{k.Name}, k.Aliases...) {
		if _, dup := r.filters[name]; dup {
			panic(fmt.Sprintf("actors: filter kind %q registered twice", name))
		}
		r.filters[name] = k
	}
}

// Model looks up a model kind by name or alias.
func (r *Registry) Model(name string) (ModelKind, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.models[name]
	if !ok {
		return ModelKind{}, fmt.Errorf("%w: model %q (known: %v)", ErrUnknownKind, name, primaryNames(r.models))
	}
	return k, nil
}

// Filter looks up a filter kind by name or alias.
func (r *Registry) Filter(name string) (FilterKind, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	k, ok := r.filters[name]
	if !ok {
		return FilterKind{}, fmt.Errorf("%w: filter %q (known: %v)", ErrUnknownKind, name, primaryNames(r.filters))
	}
	return k, nil
}

func primaryNames[K interface{ ModelKind | FilterKind }](m map[string]K) []string {
	var names []string
	for alias, k := range m {
		var name string
		switch k := any(k).(type) {
		case ModelKind:
			name = k.Name
		case FilterKind:
			name = k.Name
		}
		if alias == name {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}
