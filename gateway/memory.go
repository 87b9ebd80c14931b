package gateway

import (
	"sync"
	"time"
)

// releaseEvery bounds how often the gateway returns memory to the OS: each
// time costs a full garbage collection, a few milliseconds of CPU.
const releaseEvery = 10 * time.Second

// memoryReleaser returns the memory a burst of chats left free to the OS
// once no chat has run for a quiet spell. The Go runtime keeps freed heap
// for reuse and gives it back only slowly, so without this a node that has
// served a burst holds about twice its live heap until the next one.
type memoryReleaser struct {
	quiet   time.Duration
	release func() // debug.FreeOSMemory, but for tests

	mu      sync.Mutex
	timer   *time.Timer
	armed   bool
	stopped bool
	running int       // chats in flight
	started uint64    // chats ever started
	seen    uint64    // started when the timer was armed
	last    time.Time // the last release
}

// newMemoryReleaser returns a releaser that waits for quiet without chats;
// a quiet of 0 or less makes one that never releases.
func newMemoryReleaser(quiet time.Duration, release func()) *memoryReleaser {
	m := &memoryReleaser{quiet: quiet, release: release, stopped: quiet <= 0}
	if !m.stopped {
		m.timer = time.AfterFunc(time.Hour, m.fire)
		m.timer.Stop()
	}
	return m
}

func (m *memoryReleaser) chatStarted() {
	m.mu.Lock()
	m.running++
	m.started++
	m.mu.Unlock()
}

func (m *memoryReleaser) chatEnded() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running--; m.running == 0 {
		m.arm(m.quiet)
	}
}

// arm starts the wait for a quiet spell unless one is running. Under
// steady traffic the timer fires once per quiet and finds chats came and
// went meanwhile, which costs next to nothing; it is not reset per chat.
func (m *memoryReleaser) arm(d time.Duration) {
	if m.armed || m.stopped {
		return
	}
	m.armed = true
	m.seen = m.started
	m.timer.Reset(d)
}

func (m *memoryReleaser) fire() {
	m.mu.Lock()
	m.armed = false
	if m.running > 0 {
		// The last chat to end arms it again.
		m.mu.Unlock()
		return
	}
	if m.started != m.seen {
		m.arm(m.quiet)
		m.mu.Unlock()
		return
	}
	if wait := releaseEvery - time.Since(m.last); !m.last.IsZero() && wait > 0 {
		m.arm(max(wait, m.quiet))
		m.mu.Unlock()
		return
	}
	m.last = time.Now()
	m.mu.Unlock()
	m.release()
}

// stop makes it release no more; a release already running finishes.
func (m *memoryReleaser) stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.stopped {
		m.stopped = true
		m.timer.Stop()
	}
}
