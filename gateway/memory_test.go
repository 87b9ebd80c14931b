package gateway

import (
	"testing"
	"time"
)

// fakeClock is time that moves only when the test says; timers due fire in
// the test's goroutine, so the releaser is tested without any scheduling.
type fakeClock struct {
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clock  *fakeClock
	at     time.Time
	active bool
	f      func()
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) AfterFunc(d time.Duration, f func()) releaseTimer {
	t := &fakeTimer{clock: c, at: c.now.Add(d), active: true, f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	was := t.active
	t.at, t.active = t.clock.now.Add(d), true
	return was
}

func (t *fakeTimer) Stop() bool {
	was := t.active
	t.active = false
	return was
}

// advance moves time by d, firing each timer that comes due on the way at
// its own time.
func (c *fakeClock) advance(d time.Duration) {
	end := c.now.Add(d)
	for {
		var next *fakeTimer
		for _, t := range c.timers {
			if t.active && !t.at.After(end) && (next == nil || t.at.Before(next.at)) {
				next = t
			}
		}
		if next == nil {
			c.now = end
			return
		}
		c.now = next.at
		next.active = false
		next.f()
	}
}

func TestMemoryReleaser(t *testing.T) {
	const quiet = 200 * time.Millisecond
	start := func(t *testing.T, quiet time.Duration) (*memoryReleaser, *fakeClock, *int) {
		t.Helper()
		clock := &fakeClock{now: time.Unix(1_000_000, 0)}
		released := new(int)
		m := newMemoryReleaser(quiet, func() { *released++ }, clock, nil)
		t.Cleanup(m.stop)
		return m, clock, released
	}
	want := func(t *testing.T, released *int, n int, when string) {
		t.Helper()
		if *released != n {
			t.Fatalf("%s: released %d times, want %d", when, *released, n)
		}
	}

	t.Run("releases once chats stop for a while", func(t *testing.T) {
		m, clock, released := start(t, quiet)
		m.chatStarted()
		m.chatEnded()
		clock.advance(quiet - time.Millisecond)
		want(t, released, 0, "before the quiet spell is over")
		clock.advance(time.Millisecond)
		want(t, released, 1, "after the quiet spell")
	})
	t.Run("not while a chat runs", func(t *testing.T) {
		m, clock, released := start(t, quiet)
		m.chatStarted()
		m.chatStarted()
		m.chatEnded()
		clock.advance(10 * quiet)
		want(t, released, 0, "with a chat in flight")
		m.chatEnded()
		clock.advance(quiet)
		want(t, released, 1, "a quiet spell after the last chat")
	})
	t.Run("not under steady traffic", func(t *testing.T) {
		m, clock, released := start(t, quiet)
		for range 100 {
			m.chatStarted()
			clock.advance(quiet / 10)
			m.chatEnded()
			clock.advance(quiet / 10)
		}
		want(t, released, 0, "while chats kept coming")
		clock.advance(2 * quiet)
		want(t, released, 1, "once traffic stopped")
	})
	t.Run("at most once per releaseEvery", func(t *testing.T) {
		m, clock, released := start(t, quiet)
		m.chatStarted()
		m.chatEnded()
		clock.advance(quiet)
		want(t, released, 1, "the first burst")
		m.chatStarted()
		m.chatEnded()
		clock.advance(releaseEvery - time.Millisecond)
		want(t, released, 1, "within releaseEvery of the first")
		clock.advance(time.Millisecond)
		want(t, released, 2, "releaseEvery after the first")
	})
	t.Run("never once stopped", func(t *testing.T) {
		m, clock, released := start(t, quiet)
		m.stop()
		m.stop()
		m.chatStarted()
		m.chatEnded()
		clock.advance(time.Hour)
		want(t, released, 0, "stopped")
	})
	t.Run("never when disabled", func(t *testing.T) {
		m, clock, released := start(t, -1)
		m.chatStarted()
		m.chatEnded()
		clock.advance(time.Hour)
		want(t, released, 0, "disabled")
	})
}
