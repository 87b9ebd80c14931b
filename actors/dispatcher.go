package actors

import (
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// workerPool is an actor.Dispatcher that runs mailboxes on a few long-lived
// goroutines. protoactor's default dispatcher starts a goroutine every time
// an idle actor gets a message: several per chat, each on a fresh stack that
// the actor code then grows by copying, which cost about a fifth of a short
// chat's CPU. A worker keeps its grown stack from one mailbox run to the
// next.
//
// A pool is only safe for actors that never block in Receive: a mailbox run
// that waits for another actor while holding the last idle worker could
// wait forever for a run that cannot start. Troupe's actors never block
// (models generate on goroutines of their own), and Schedule never waits
// for a worker anyway: when none is idle
// and the pool is full it starts a goroutine, as the default dispatcher
// does, so a slow run costs a goroutine, not a stall.
type workerPool struct {
	work       chan func() // unbuffered: a send succeeds only when a worker is idle
	throughput int

	mu      sync.Mutex
	workers int
	max     int
	closed  bool
	quit    chan struct{}
	done    sync.WaitGroup
}

var _ actor.Dispatcher = (*workerPool)(nil)

// newWorkerPool returns a pool of up to max workers, started as they are
// first needed. throughput is how many messages a mailbox handles before it
// lets other goroutines run, as for protoactor's dispatchers.
func newWorkerPool(max, throughput int) *workerPool {
	return &workerPool{
		work:       make(chan func()),
		throughput: throughput,
		max:        max,
		quit:       make(chan struct{}),
	}
}

// Schedule implements actor.Dispatcher. It never blocks.
func (p *workerPool) Schedule(fn func()) {
	select {
	case p.work <- fn:
		return
	default:
	}
	p.mu.Lock()
	if p.closed || p.workers >= p.max {
		p.mu.Unlock()
		go fn()
		return
	}
	p.workers++
	p.done.Add(1)
	p.mu.Unlock()
	go p.worker(fn)
}

// Throughput implements actor.Dispatcher.
func (p *workerPool) Throughput() int { return p.throughput }

// worker runs first, then whatever is handed to it until the pool closes.
// protoactor recovers a panic inside the mailbox run (and escalates it to
// the supervisor), so a failing actor does not take its worker down.
func (p *workerPool) worker(first func()) {
	defer p.done.Done()
	first()
	for {
		select {
		case fn := <-p.work:
			fn()
		case <-p.quit:
			return
		}
	}
}

// Close stops the workers once they finish what they run and waits for
// them. Work scheduled afterwards runs on goroutines of its own.
func (p *workerPool) Close() {
	p.mu.Lock()
	if !p.closed {
		p.closed = true
		close(p.quit)
	}
	p.mu.Unlock()
	p.done.Wait()
}
