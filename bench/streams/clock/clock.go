// Package clock is a model kind for benchmarks: each chat streams a chunk
// at a steady pace, and each chunk is the time it was emitted, so that a
// client on the same machine can tell how long a chunk took to reach it.
//
// It is linked into the benchmark's node (bench/streams/node) only, never
// into troupe itself.
package clock

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the kind's layout arguments.
type Args struct {
	// Chunks is how many chunks a chat streams; default 10.
	Chunks int `json:"chunks"`
	// Every is the time between chunks, as a Go duration; default "1s".
	Every string `json:"every"`
}

// Model emits Chunks lines, Every apart, the first at once; each line is
// the Unix time in nanoseconds at which it was emitted.
type Model struct {
	chunks int
	every  time.Duration
}

// New returns a clock model.
func New(args actors.Args) (actors.Model, error) {
	a := Args{Chunks: 10, Every: "1s"}
	if err := args.Decode(&a); err != nil {
		return nil, err
	}
	every, err := time.ParseDuration(a.Every)
	if err != nil || every <= 0 {
		return nil, fmt.Errorf("every: want a positive duration such as \"1s\", got %q", a.Every)
	}
	if a.Chunks < 1 {
		return nil, fmt.Errorf("chunks: want at least 1, got %d", a.Chunks)
	}
	return &Model{chunks: a.Chunks, every: every}, nil
}

// Generate implements actors.Model. Each chunk is due at a fixed offset
// from the start, so that a late one does not delay the next.
func (m *Model) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	start := time.Now()
	var timer *time.Timer
	for i := range m.chunks {
		if i > 0 {
			wait := time.Until(start.Add(time.Duration(i) * m.every))
			if timer == nil {
				timer = time.NewTimer(wait)
				defer timer.Stop()
			} else {
				timer.Reset(wait)
			}
			select {
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		var buf [24]byte
		if err := emit(string(strconv.AppendInt(buf[:0], time.Now().UnixNano(), 10)) + "\n"); err != nil {
			return err
		}
	}
	return nil
}

func init() {
	actors.RegisterModel(actors.ModelKind{Name: "benchclock", Capacity: 64, New: New})
}
