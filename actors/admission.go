package actors

import (
	"context"
	"errors"
	"sync"
)

// ErrOverloaded is returned when a layout's capacity and queue are both full.
var ErrOverloaded = errors.New("overloaded")

// Admission bounds the chats a layout runs at once and the chats waiting for
// a place, in front of its actors: protoactor's bounded mailboxes spin when
// full, so the bound lives here and what does not fit is rejected at once.
type Admission struct {
	capacity int
	maxQueue int

	mu      sync.Mutex
	running int
	waiters []chan struct{} // FIFO; a closed channel is a granted place

}

// NewAdmission admits capacity chats at once and queues up to queue more.
func NewAdmission(capacity, queue int) *Admission {
	if capacity < 1 {
		capacity = 1
	}
	if queue < 0 {
		queue = 0
	}
	return &Admission{capacity: capacity, maxQueue: queue}
}

// Acquire takes a place, waiting in the queue when all are taken. It returns
// ErrOverloaded when the queue is full too, or ctx's error when ctx ends while
// waiting. Each successful Acquire must be paired with one Release.
func (a *Admission) Acquire(ctx context.Context) error {
	a.mu.Lock()
	if a.running < a.capacity && len(a.waiters) == 0 {
		a.running++
		a.mu.Unlock()
		return nil
	}
	if len(a.waiters) >= a.maxQueue {
		a.mu.Unlock()
		return ErrOverloaded
	}
	ch := make(chan struct{})
	a.waiters = append(a.waiters, ch)
	a.mu.Unlock()

	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		a.mu.Lock()
		for i, w := range a.waiters {
			if w == ch {
				a.waiters = append(a.waiters[:i], a.waiters[i+1:]...)
				a.mu.Unlock()
				return ctx.Err()
			}
		}
		a.mu.Unlock()
		// The place was granted while ctx ended: hand it on.
		a.Release()
		return ctx.Err()
	}
}

// Release frees a place, handing it to the oldest waiter if there is one.
func (a *Admission) Release() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.waiters) > 0 {
		ch := a.waiters[0]
		a.waiters = a.waiters[1:]
		close(ch)
		return
	}
	a.running--
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
