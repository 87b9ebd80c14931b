// Package chaos is the chaos model, for tests and demos of what a layout
// does with a model that fails: it answers like the dummy model, but each
// chat may panic, fail, hang or crawl, each with its own probability, from
// a seeded random source so that a run can be repeated; and it fails only
// while a file exists, when told so, so that it can be broken and mended
// while it runs.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the chaos model's layout arguments. Probabilities are from 0 to
// 1 and are drawn once per chat, in the order listed; the first that hits
// decides the chat's fate.
type Args struct {
	// Content is the answer of a chat that is spared.
	Content string `json:"content"`
	// Delay between characters of an answer.
	Delay string `json:"delay"`
	// Panic: the model panics (its host is restarted by its supervisor).
	Panic float64 `json:"panic"`
	// Error: the model fails with an upstream-like error ("the model
	// server is unavailable").
	Error float64 `json:"error"`
	// Overload: the model answers that it is busy (an upstream's 429).
	Overload float64 `json:"overload"`
	// Hang: the model never answers, until the chat is cancelled or runs
	// past its deadline.
	Hang float64 `json:"hang"`
	// Slow: the answer crawls, SlowDelay between characters.
	Slow      float64 `json:"slow"`
	SlowDelay string  `json:"slow_delay"`
	// After is how many characters a failing chat answers before it
	// fails (0: fails before its first chunk).
	After int `json:"after"`
	// CrashLoop: the first CrashLoop chats of every instance panic, as a
	// model that cannot start does; the supervisor's budget then takes
	// the layout out of rotation.
	CrashLoop int `json:"crash_loop"`
	// Seed makes the draws repeatable; 0 picks one.
	Seed uint64 `json:"seed"`
	// WhileFile, when set, makes the model fail only while this file
	// exists: every chat is spared while it does not. A test or a demo
	// breaks and mends a running model by creating and removing it, from
	// any process.
	WhileFile string `json:"while_file"`
}

// Default sets the arguments a layout leaves out.
func (a *Args) Default() {
	a.Content = "Chaos, calmly answered."
	a.Delay = "5ms"
	a.SlowDelay = "500ms"
}

// Validate checks the arguments.
func (a *Args) Validate() error {
	for name, p := range map[string]float64{"panic": a.Panic, "error": a.Error, "overload": a.Overload, "hang": a.Hang, "slow": a.Slow} {
		if p < 0 || p > 1 {
			return fmt.Errorf("%s must be a probability from 0 to 1, got %v", name, p)
		}
	}
	if a.Panic+a.Error+a.Overload+a.Hang+a.Slow > 1 {
		return errors.New("the probabilities add up to more than 1")
	}
	if a.After < 0 || a.CrashLoop < 0 {
		return errors.New("after and crash_loop must be 0 or more")
	}
	for name, d := range map[string]string{"delay": a.Delay, "slow_delay": a.SlowDelay} {
		if v, err := time.ParseDuration(d); err != nil || v < 0 {
			return fmt.Errorf("%s: want a duration such as \"20ms\", got %q", name, d)
		}
	}
	return nil
}

// fate is what happens to one chat.
type fate int

const (
	spared fate = iota
	panics
	fails
	overloads
	hangs
	crawls
)

// Model is a chaos model instance.
type Model struct {
	args       Args
	delay      time.Duration
	slowDelay  time.Duration
	mu         sync.Mutex
	rng        *rand.Rand
	crashesYet int
}

// instances counts the instances made with each seed in this process. The
// k-th draws from stream k of its seed: a run is repeated draw for draw,
// while an instance restarted after a panic draws anew rather than replaying
// its predecessor's draws (which would make a seeded panic come back every
// few chats, whatever its probability).
var instances struct {
	sync.Mutex
	bySeed map[uint64]uint64
}

// New returns a chaos model.
func New(a Args) (actors.Model, error) {
	seed := a.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	instances.Lock()
	if instances.bySeed == nil {
		instances.bySeed = map[uint64]uint64{}
	}
	k := instances.bySeed[seed]
	instances.bySeed[seed] = k + 1
	instances.Unlock()
	d, _ := time.ParseDuration(a.Delay)
	s, _ := time.ParseDuration(a.SlowDelay)
	return &Model{args: a, delay: d, slowDelay: s, rng: rand.New(rand.NewPCG(seed, k^0x9e3779b97f4a7c15))}, nil
}

func (m *Model) draw() fate {
	if m.args.WhileFile != "" {
		if _, err := os.Stat(m.args.WhileFile); err != nil {
			return spared
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.crashesYet < m.args.CrashLoop {
		m.crashesYet++
		return panics
	}
	x := m.rng.Float64()
	for _, c := range []struct {
		p float64
		f fate
	}{{m.args.Panic, panics}, {m.args.Error, fails}, {m.args.Overload, overloads}, {m.args.Hang, hangs}, {m.args.Slow, crawls}} {
		if x < c.p {
			return c.f
		}
		x -= c.p
	}
	return spared
}

// Generate implements actors.Model.
func (m *Model) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	f := m.draw()
	delay := m.delay
	if f == crawls {
		delay = m.slowDelay
	}
	var timer *time.Timer
	n := 0
	for _, r := range m.args.Content {
		if n == m.args.After {
			if err := m.strike(ctx, f); err != nil {
				return err
			}
		}
		if n > 0 && delay > 0 {
			if timer == nil {
				timer = time.NewTimer(delay)
				defer timer.Stop()
			} else {
				timer.Reset(delay)
			}
			select {
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if err := emit(string(r)); err != nil {
			return err
		}
		n++
	}
	if n <= m.args.After {
		// A content shorter than After: the chat fails at its end.
		return m.strike(ctx, f)
	}
	return nil
}

// strike does to a chat what its fate says, at the point it fails.
func (m *Model) strike(ctx context.Context, f fate) error {
	switch f {
	case panics:
		panic("chaos model: panic drawn")
	case fails:
		return &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: "the model server is unavailable", Err: errors.New("chaos: error drawn")}
	case overloads:
		return &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "the model server is busy", RetryAfter: time.Second, Err: errors.New("chaos: overload drawn")}
	case hangs:
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

func init() {
	actors.RegisterModel(actors.TypedModel("chaos", 64, New))
}
