package gateway

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// releaseEvery bounds how often the gateway returns memory to the OS: each
// time costs a full garbage collection, a few milliseconds of CPU.
const releaseEvery = 10 * time.Second

// memoryReleaser returns the memory a burst of chats left free to the OS
// once no chat has run for a quiet spell. The Go runtime keeps freed heap
// for reuse and gives it back only slowly, so without this a node that has
// served a burst holds about twice its live heap until the next one.
//
// It never runs while a chat is in flight, nor under steady traffic (the
// quiet spell never comes); docs/benchmarks.md has the measurement.
type memoryReleaser struct {
	quiet   time.Duration
	release func() // debug.FreeOSMemory, but for tests
	clock   releaseClock

	releases prometheus.Counter
	spent    prometheus.Counter

	mu      sync.Mutex
	timer   releaseTimer
	armed   bool
	stopped bool
	running int       // chats in flight
	started uint64    // chats ever started
	seen    uint64    // started when the timer was armed
	last    time.Time // the last release
}

// releaseClock is time for the releaser: the real one, or one a test moves.
type releaseClock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) releaseTimer
}

type releaseTimer interface {
	Reset(d time.Duration) bool
	Stop() bool
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) releaseTimer {
	return time.AfterFunc(d, f)
}

// newMemoryReleaser returns a releaser that waits for quiet without chats;
// a quiet of 0 or less makes one that never releases. reg receives its
// counters; nil registers none.
func newMemoryReleaser(quiet time.Duration, release func(), clock releaseClock, reg prometheus.Registerer) *memoryReleaser {
	m := &memoryReleaser{
		quiet: quiet, release: release, clock: clock, stopped: quiet <= 0,
		releases: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_memory_releases_total",
			Help: "Times the node returned free memory to the OS after a quiet spell without chats.",
		}),
		spent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_memory_release_seconds_total",
			Help: "Time spent returning free memory to the OS (a full garbage collection each time).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.releases, m.spent)
	}
	if !m.stopped {
		m.timer = clock.AfterFunc(time.Hour, m.fire)
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
	now := m.clock.Now()
	if wait := releaseEvery - now.Sub(m.last); !m.last.IsZero() && wait > 0 {
		m.arm(max(wait, m.quiet))
		m.mu.Unlock()
		return
	}
	m.last = now
	m.mu.Unlock()
	start := time.Now()
	m.release()
	m.spent.Add(time.Since(start).Seconds())
	m.releases.Inc()
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
