package gateway

import (
	"sync/atomic"
	"testing"
	"time"
)

func TestMemoryReleaser(t *testing.T) {
	const quiet = 20 * time.Millisecond
	start := func(t *testing.T) (*memoryReleaser, *atomic.Int32) {
		t.Helper()
		var released atomic.Int32
		m := newMemoryReleaser(quiet, func() { released.Add(1) })
		t.Cleanup(m.stop)
		return m, &released
	}
	eventually := func(t *testing.T, cond func() bool, what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting until %s", what)
			}
			time.Sleep(time.Millisecond)
		}
	}

	t.Run("releases once chats stop for a while", func(t *testing.T) {
		m, released := start(t)
		m.chatStarted()
		m.chatEnded()
		eventually(t, func() bool { return released.Load() == 1 }, "memory is released")
	})
	t.Run("not while a chat runs", func(t *testing.T) {
		m, released := start(t)
		m.chatStarted()
		m.chatStarted()
		m.chatEnded()
		time.Sleep(5 * quiet)
		if n := released.Load(); n != 0 {
			t.Fatalf("released %d times with a chat in flight", n)
		}
		m.chatEnded()
		eventually(t, func() bool { return released.Load() == 1 }, "memory is released after the last chat")
	})
	t.Run("not under steady traffic", func(t *testing.T) {
		m, released := start(t)
		busyUntil := time.Now().Add(6 * quiet)
		for time.Now().Before(busyUntil) {
			m.chatStarted()
			time.Sleep(quiet / 10)
			m.chatEnded()
		}
		if n := released.Load(); n != 0 {
			t.Fatalf("released %d times while chats kept coming", n)
		}
		eventually(t, func() bool { return released.Load() == 1 }, "memory is released once traffic stops")
	})
	t.Run("at most once per releaseEvery", func(t *testing.T) {
		m, released := start(t)
		m.chatStarted()
		m.chatEnded()
		eventually(t, func() bool { return released.Load() == 1 }, "the first release")
		m.chatStarted()
		m.chatEnded()
		time.Sleep(5 * quiet)
		if n := released.Load(); n != 1 {
			t.Fatalf("released %d times within %s", n, releaseEvery)
		}
	})
	t.Run("never once stopped or when disabled", func(t *testing.T) {
		m, released := start(t)
		m.stop()
		m.chatStarted()
		m.chatEnded()
		off := newMemoryReleaser(-1, func() { released.Add(1) })
		off.chatStarted()
		off.chatEnded()
		time.Sleep(5 * quiet)
		if n := released.Load(); n != 0 {
			t.Fatalf("released %d times", n)
		}
	})
}
