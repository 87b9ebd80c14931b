package actors

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// clock is a test's time, moved by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time      { return c.t }
func (c *clock) add(d time.Duration) { c.t = c.t.Add(d) }
func newClock() *clock               { return &clock{t: time.Unix(1_700_000_000, 0)} }
func (c *clock) breaker(cfg BreakerConfig) *Breaker {
	return NewBreaker(cfg, c.now, nil, nil, nil)
}

// run admits a chat and ends it with v; it reports whether it was admitted.
func run(t *testing.T, b *Breaker, v Verdict) bool {
	t.Helper()
	tk, _, ok := b.Admit()
	if ok {
		tk.Done(v)
	}
	return ok
}

func wantState(t *testing.T, b *Breaker, want BreakerState) {
	t.Helper()
	if got := b.Status().State; got != want {
		t.Fatalf("state %s, want %s", got.Word(), want.Word())
	}
}

func TestBreakerOpensAfterFailuresInRow(t *testing.T) {
	c := newClock()
	b := c.breaker(BreakerConfig{})
	for i := 0; i < 4; i++ {
		run(t, b, VerdictFailure)
	}
	run(t, b, VerdictSuccess) // a success breaks the row
	for i := 0; i < 4; i++ {
		run(t, b, VerdictFailure)
	}
	wantState(t, b, BreakerState_BREAKER_CLOSED)
	run(t, b, VerdictFailure)
	wantState(t, b, BreakerState_BREAKER_OPEN)
	if s := b.Status(); s.Reason != "5 chats in a row failed" || !s.Until.Equal(c.t.Add(10*time.Second)) {
		t.Fatalf("status %+v", s)
	}
}

// Chats that say nothing about the layout neither open nor close it, nor
// break a row of failures.
func TestBreakerIgnoresNeutralChats(t *testing.T) {
	c := newClock()
	b := c.breaker(BreakerConfig{Failures: 3})
	run(t, b, VerdictFailure)
	run(t, b, VerdictFailure)
	for i := 0; i < 50; i++ {
		run(t, b, VerdictNone)
	}
	wantState(t, b, BreakerState_BREAKER_CLOSED)
	run(t, b, VerdictFailure)
	wantState(t, b, BreakerState_BREAKER_OPEN)
}

func TestBreakerOpensOnRatio(t *testing.T) {
	c := newClock()
	b := c.breaker(BreakerConfig{Failures: 100, Ratio: 0.5, Window: 10})
	// Failing every other chat: never two in a row, but half of ten.
	for i := 0; i < 9; i++ {
		run(t, b, []Verdict{VerdictSuccess, VerdictFailure}[i%2])
	}
	wantState(t, b, BreakerState_BREAKER_CLOSED) // the window is not full yet
	run(t, b, VerdictFailure)
	wantState(t, b, BreakerState_BREAKER_OPEN)
	if s := b.Status(); s.Reason != "5 of the last 10 chats failed" {
		t.Fatalf("reason %q", s.Reason)
	}

	// Below the ratio it stays closed however long it runs: the window
	// slides.
	b = c.breaker(BreakerConfig{Failures: 100, Ratio: 0.5, Window: 10})
	for i := 0; i < 100; i++ {
		run(t, b, []Verdict{VerdictSuccess, VerdictSuccess, VerdictFailure}[i%3])
	}
	wantState(t, b, BreakerState_BREAKER_CLOSED)
}

func TestBreakerRefusesWithTimeLeft(t *testing.T) {
	c := newClock()
	b := c.breaker(BreakerConfig{Failures: 1, Cooldown: 10 * time.Second})
	run(t, b, VerdictFailure)
	c.add(3 * time.Second)
	_, wait, ok := b.Admit()
	if ok || wait != 7*time.Second {
		t.Fatalf("admitted %v, wait %v; want refused, 7s", ok, wait)
	}
}

func TestBreakerProbe(t *testing.T) {
	for _, tt := range []struct {
		name  string
		probe Verdict
		want  BreakerState
	}{
		{"success closes", VerdictSuccess, BreakerState_BREAKER_CLOSED},
		{"failure opens again", VerdictFailure, BreakerState_BREAKER_OPEN},
		{"a cancelled probe leaves the next chat to probe", VerdictNone, BreakerState_BREAKER_HALF_OPEN},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			b := c.breaker(BreakerConfig{Failures: 2, Cooldown: 10 * time.Second})
			run(t, b, VerdictFailure)
			run(t, b, VerdictFailure)
			c.add(10 * time.Second)
			wantState(t, b, BreakerState_BREAKER_HALF_OPEN)
			probe, _, ok := b.Admit()
			if !ok {
				t.Fatal("the probe was refused")
			}
			wantState(t, b, BreakerState_BREAKER_PROBING)
			// One probe at a time: the others wait for its end.
			if _, wait, ok := b.Admit(); ok || wait != time.Second {
				t.Fatalf("a second chat while probing: admitted %v, wait %v", ok, wait)
			}
			probe.Done(tt.probe)
			wantState(t, b, tt.want)
		})
	}
}

// Each failed probe doubles the cool-down up to its bound; a success
// resets it.
func TestBreakerCooldownGrowsBounded(t *testing.T) {
	c := newClock()
	b := c.breaker(BreakerConfig{Failures: 1, Cooldown: 10 * time.Second, MaxCooldown: 35 * time.Second})
	run(t, b, VerdictFailure)
	var got []time.Duration
	for i := 0; i < 4; i++ {
		s := b.Status()
		got = append(got, s.Until.Sub(c.t))
		c.t = s.Until
		run(t, b, VerdictFailure) // the probe
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 35 * time.Second, 35 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("cool-downs %v, want %v", got, want)
		}
	}
	c.t = b.Status().Until
	run(t, b, VerdictSuccess)
	wantState(t, b, BreakerState_BREAKER_CLOSED)
	run(t, b, VerdictFailure)
	if d := b.Status().Until.Sub(c.t); d != 10*time.Second {
		t.Fatalf("cool-down after a close %v, want 10s", d)
	}
}

// A chat that started before the breaker opened or closed no longer
// counts when it ends: it says nothing about the probe, nor about the
// layout since it was taken back.
func TestBreakerIgnoresChatsOfAnEarlierState(t *testing.T) {
	c := newClock()
	b := c.breaker(BreakerConfig{Failures: 2, Cooldown: time.Second})
	late, _, _ := b.Admit()
	run(t, b, VerdictFailure)
	run(t, b, VerdictFailure)
	late.Done(VerdictSuccess) // started while closed, ends while open
	wantState(t, b, BreakerState_BREAKER_OPEN)

	c.add(time.Second)
	run(t, b, VerdictSuccess) // the probe closes it
	old, _, _ := b.Admit()
	run(t, b, VerdictFailure)
	run(t, b, VerdictFailure)
	c.add(time.Second)
	probe, _, _ := b.Admit()
	old.Done(VerdictFailure) // of the closed spell before: no effect on the probe
	wantState(t, b, BreakerState_BREAKER_PROBING)
	probe.Done(VerdictSuccess)
	wantState(t, b, BreakerState_BREAKER_CLOSED)
}

func TestBreakerOffAndNil(t *testing.T) {
	c := newClock()
	for _, b := range []*Breaker{c.breaker(BreakerConfig{Off: true}), nil} {
		for i := 0; i < 100; i++ {
			if !run(t, b, VerdictFailure) {
				t.Fatal("refused")
			}
		}
		wantState(t, b, BreakerState_BREAKER_CLOSED)
	}
}

func TestBreakerMetrics(t *testing.T) {
	c := newClock()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	b := NewBreaker(BreakerConfig{Failures: 1, Cooldown: time.Second}, c.now,
		m.breakerOpens.WithLabelValues("l"), m.breakerRefused.WithLabelValues("l"), nil)
	m.breakers.set("l", b)
	run(t, b, VerdictFailure)
	run(t, b, VerdictSuccess)
	run(t, b, VerdictSuccess)
	if n := testutil.ToFloat64(m.breakerRefused.WithLabelValues("l")); n != 2 {
		t.Fatalf("refused %v, want 2", n)
	}
	if n := testutil.ToFloat64(m.breakerOpens.WithLabelValues("l")); n != 1 {
		t.Fatalf("opens %v, want 1", n)
	}
	if v := testutil.ToFloat64(m.breakers); v != 2 {
		t.Fatalf("state %v, want 2 (open)", v)
	}
	c.add(time.Second)
	if v := testutil.ToFloat64(m.breakers); v != 1 {
		t.Fatalf("state %v, want 1 (half-open) once the cool-down is over", v)
	}
	m.breakers.remove("l", b)
	if n := testutil.CollectAndCount(m.breakers); n != 0 {
		t.Fatalf("%d series after the layout stopped", n)
	}
}

func TestVerdictOf(t *testing.T) {
	for code, want := range map[Code]Verdict{
		Code_CODE_INTERNAL: VerdictFailure, Code_CODE_UNAVAILABLE: VerdictFailure, Code_CODE_DEADLINE_EXCEEDED: VerdictFailure,
		Code_CODE_CANCELED: VerdictNone, Code_CODE_INVALID_ARGUMENT: VerdictNone, Code_CODE_OVERLOADED: VerdictNone,
		Code_CODE_CIRCUIT_OPEN: VerdictNone,
	} {
		if got := VerdictOf(code); got != want {
			t.Errorf("%s: %v, want %v", code, got, want)
		}
	}
}
