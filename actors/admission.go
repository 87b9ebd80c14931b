package actors

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrOverloaded is returned when a layout's capacity and queue are both full.
var ErrOverloaded = errors.New("overloaded")

// Bounds of Admission.RetryAfter.
const (
	minRetryAfter = time.Second
	maxRetryAfter = time.Minute
)

// Admission bounds the chats a layout runs at once and the chats waiting for
// a place, in front of its actors: protoactor's bounded mailboxes spin when
// full, so the bound lives here and what does not fit is rejected at once.
//
// It also keeps two things the cluster needs. Each chat may be admitted for
// an origin (the gateway node that sent it), and Admission counts the places
// each origin holds and waits for, so that a node can tell every gateway the
// load of everybody else: the gateway knows its own chats better than any
// report. And it measures how fast places free up while all are taken, so
// that a refused client can be told when to come back (RetryAfter).
type Admission struct {
	capacity int
	maxQueue int
	now      func() time.Time // time.Now; tests set it

	mu      sync.Mutex
	running int
	waiters []waiter // FIFO
	origins map[string]*originLoad
	drain   drainRate
}

// waiter is a chat in the queue; granted is closed when it gets a place.
type waiter struct {
	granted chan struct{}
	origin  string
}

// originLoad is what one origin holds: places and places waited for.
type originLoad struct{ running, queued int }

// NewAdmission admits capacity chats at once and queues up to queue more.
func NewAdmission(capacity, queue int) *Admission {
	if capacity < 1 {
		capacity = 1
	}
	if queue < 0 {
		queue = 0
	}
	return &Admission{capacity: capacity, maxQueue: queue, now: time.Now}
}

// Acquire takes a place, waiting in the queue when all are taken. It returns
// ErrOverloaded when the queue is full too, or ctx's error when ctx ends while
// waiting. Each successful Acquire must be paired with one Release.
func (a *Admission) Acquire(ctx context.Context) error { return a.AcquireFor(ctx, "") }

// AcquireFor is Acquire for a chat sent by origin (a gateway node's
// address; "" for this node's own chats). Each success must be paired with
// one ReleaseFor of the same origin.
func (a *Admission) AcquireFor(ctx context.Context, origin string) error {
	a.mu.Lock()
	if a.running < a.capacity && len(a.waiters) == 0 {
		a.take(origin)
		a.mu.Unlock()
		return nil
	}
	if len(a.waiters) >= a.maxQueue {
		a.mu.Unlock()
		return ErrOverloaded
	}
	w := waiter{granted: make(chan struct{}), origin: origin}
	a.waiters = append(a.waiters, w)
	a.count(origin, 0, 1)
	a.mu.Unlock()

	select {
	case <-w.granted:
		return nil
	case <-ctx.Done():
		a.mu.Lock()
		for i, o := range a.waiters {
			if o.granted == w.granted {
				a.waiters = append(a.waiters[:i], a.waiters[i+1:]...)
				a.count(origin, 0, -1)
				a.mu.Unlock()
				return ctx.Err()
			}
		}
		// The place was granted while ctx ended: hand it on. The chat never
		// ran, so this is no completion.
		a.release(origin, false)
		a.mu.Unlock()
		return ctx.Err()
	}
}

// TryAcquire takes a place for this node's own chats if one is free now and
// nobody waits for one; it never queues. A true must be paired with one
// Release.
func (a *Admission) TryAcquire() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.running < a.capacity && len(a.waiters) == 0 {
		a.take("")
		return true
	}
	return false
}

// take gives origin a free place; a.mu is held.
func (a *Admission) take(origin string) {
	a.running++
	a.count(origin, 1, 0)
	if a.running == a.capacity {
		a.drain.saturated(a.now(), true)
	}
}

// Release frees a place taken by Acquire or TryAcquire, handing it to the
// oldest waiter if there is one.
func (a *Admission) Release() { a.ReleaseFor("") }

// ReleaseFor frees a place taken by AcquireFor with the same origin.
func (a *Admission) ReleaseFor(origin string) {
	a.mu.Lock()
	a.release(origin, true)
	a.mu.Unlock()
}

// release frees origin's place; a chat that ran to its end while every place
// was taken counts for the drain rate. a.mu is held.
func (a *Admission) release(origin string, completed bool) {
	a.count(origin, -1, 0)
	if completed && a.running == a.capacity {
		a.drain.completed(a.now())
	}
	if len(a.waiters) > 0 {
		w := a.waiters[0]
		a.waiters[0] = waiter{}
		a.waiters = a.waiters[1:]
		a.count(w.origin, 1, -1)
		close(w.granted)
		return
	}
	a.running--
	if a.running == a.capacity-1 {
		a.drain.saturated(a.now(), false)
	}
}

// count adds to origin's places; this node's own chats are not counted by
// origin. a.mu is held.
func (a *Admission) count(origin string, running, queued int) {
	if origin == "" {
		return
	}
	o := a.origins[origin]
	if o == nil {
		if a.origins == nil {
			a.origins = map[string]*originLoad{}
		}
		o = &originLoad{}
		a.origins[origin] = o
	}
	o.running += running
	o.queued += queued
	if o.running == 0 && o.queued == 0 {
		delete(a.origins, origin)
	}
}

// Capacity is the number of chats admitted at once.
func (a *Admission) Capacity() int { return a.capacity }

// QueueLimit is the number of chats that may wait.
func (a *Admission) QueueLimit() int { return a.maxQueue }

// Load returns the chats running and waiting now.
func (a *Admission) Load() (running, queued int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.running, len(a.waiters)
}

// LoadExcluding returns the chats running and waiting now, less those
// admitted for origin: the load an origin's gateway cannot know by itself.
func (a *Admission) LoadExcluding(origin string) (running, queued int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	running, queued = a.running, len(a.waiters)
	if o := a.origins[origin]; o != nil && origin != "" {
		running -= o.running
		queued -= o.queued
	}
	return running, queued
}

// RetryAfter is how long a chat refused now had best wait before it is
// tried again: the time the chats waiting now, and one more, take to get a
// place at the rate places have been freeing while every place was taken
// (the last drainSamples completions under saturation over the saturated
// time they span), within [1s, 1m]. While no chat has ended under
// saturation yet, the rate is unknown and the answer is the upper bound.
func (a *Admission) RetryAfter() time.Duration {
	a.mu.Lock()
	rate := a.drain.rate(a.now())
	queued := len(a.waiters)
	a.mu.Unlock()
	if rate <= 0 {
		return maxRetryAfter
	}
	wait := time.Duration(float64(queued+1) / rate * float64(time.Second))
	return min(max(wait, minRetryAfter), maxRetryAfter)
}

// drainSamples is how many completions the drain rate is measured over:
// enough that chance matters little (about ±18%), few enough that it
// follows a change of pace within a few dozen chats.
const drainSamples = 32

// drainRate measures how fast places free up on a clock that runs only
// while every place is taken: the rate at which a queue drains. Time without
// saturation neither dilutes it (an idle night says nothing about how fast a
// full node frees places) nor adds completions (those say how much work
// came, not how fast the node does it).
type drainRate struct {
	since time.Time     // start of the running saturated spell; zero when not saturated
	clock time.Duration // saturated time, every spell so far
	// ends holds the clock at the last completions, a ring of which n are
	// set; next is where the next goes.
	ends    [drainSamples]time.Duration
	n, next int
}

// saturated starts or ends a saturated spell.
func (d *drainRate) saturated(now time.Time, on bool) {
	d.advance(now)
	if on && d.since.IsZero() {
		d.since = now
	} else if !on {
		d.since = time.Time{}
	}
}

func (d *drainRate) advance(now time.Time) {
	if !d.since.IsZero() {
		if dt := now.Sub(d.since); dt > 0 {
			d.clock += dt
		}
		d.since = now
	}
}

func (d *drainRate) completed(now time.Time) {
	d.advance(now)
	d.ends[d.next] = d.clock
	d.next = (d.next + 1) % drainSamples
	d.n = min(d.n+1, drainSamples)
}

// rate returns completions per saturated second, 0 when none was seen: the
// completions kept over the saturated time from the oldest of them (or,
// while fewer than drainSamples were seen, from the first saturation) to
// now. Counting to now makes a node whose chats stopped ending look ever
// slower.
func (d *drainRate) rate(now time.Time) float64 {
	d.advance(now)
	if d.n == 0 {
		return 0
	}
	// Full, the ring spans n-1 gaps between completions and the time since
	// the last; before, n gaps from the start of saturation.
	var from time.Duration
	events := d.n
	if d.n == drainSamples {
		from, events = d.ends[d.next], d.n-1
	}
	span := max(d.clock-from, time.Millisecond)
	return float64(events) / span.Seconds()
}
