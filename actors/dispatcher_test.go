package actors

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

func TestWorkerPoolRunsEverythingScheduled(t *testing.T) {
	p := newWorkerPool(3, 10)
	defer p.Close()
	const n = 1000
	var ran atomic.Int32
	var wg sync.WaitGroup
	wg.Add(n)
	for range 4 {
		go func() {
			for range n / 4 {
				p.Schedule(func() {
					ran.Add(1)
					wg.Done()
				})
			}
		}()
	}
	wg.Wait()
	if got := ran.Load(); got != n {
		t.Fatalf("ran %d functions, want %d", got, n)
	}
	p.mu.Lock()
	workers := p.workers
	p.mu.Unlock()
	if workers > 3 {
		t.Fatalf("%d workers, want at most 3", workers)
	}
}

// A pool whose workers are all busy still takes work at once, on a
// goroutine of its own, so that one slow run cannot hold up the others.
func TestWorkerPoolScheduleNeverBlocks(t *testing.T) {
	p := newWorkerPool(1, 10)
	defer p.Close()
	release := make(chan struct{})
	busy := make(chan struct{})
	p.Schedule(func() {
		close(busy)
		<-release
	})
	<-busy
	done := make(chan struct{})
	scheduled := make(chan struct{})
	go func() {
		p.Schedule(func() { close(done) })
		close(scheduled)
	}()
	for _, step := range []struct {
		c    chan struct{}
		what string
	}{{scheduled, "Schedule returned"}, {done, "the second function ran"}} {
		select {
		case <-step.c:
		case <-time.After(5 * time.Second):
			t.Fatalf("while the only worker is busy: timed out waiting until %s", step.what)
		}
	}
	close(release)
}

func TestWorkerPoolCloseWaitsForWorkersAndStillRunsLateWork(t *testing.T) {
	p := newWorkerPool(2, 10)
	finished := make(chan struct{})
	started := make(chan struct{})
	p.Schedule(func() {
		close(started)
		time.Sleep(20 * time.Millisecond)
		close(finished)
	})
	<-started
	p.Close()
	select {
	case <-finished:
	default:
		t.Fatal("Close returned before its worker finished")
	}
	done := make(chan struct{})
	p.Schedule(func() { close(done) })
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("work scheduled after Close never ran")
	}
}

// protoactor recovers a panic inside the mailbox run, so an actor that
// fails does not take its worker down: the pool keeps serving it after its
// restart, on no more workers than before.
func TestWorkerPoolSurvivesPanickingActor(t *testing.T) {
	system := NewActorSystem(actor.Configure())
	defer system.Shutdown()
	p := newWorkerPool(2, 10)
	defer p.Close()
	props := actor.PropsFromFunc(func(c actor.Context) {
		switch msg := c.Message().(type) {
		case string:
			if msg == "panic" {
				panic("told to")
			}
			c.Respond(msg)
		}
	}, actor.WithDispatcher(p))
	pid := system.Root.Spawn(props)
	for _, msg := range []string{"before", "panic", "after", "panic", "again"} {
		if msg == "panic" {
			system.Root.Send(pid, msg)
			continue
		}
		got, err := system.Root.RequestFuture(pid, msg, 5*time.Second).Result()
		if err != nil || got != msg {
			t.Fatalf("%s: got %v, %v", msg, got, err)
		}
	}
	p.mu.Lock()
	workers := p.workers
	p.mu.Unlock()
	if workers > 2 {
		t.Fatalf("%d workers, want at most 2", workers)
	}
}

func TestNewActorSystemShrinksRegistryAndKeepsWhatItHeld(t *testing.T) {
	system := NewActorSystem(actor.Configure())
	defer system.Shutdown()
	if n := len(system.ProcessRegistry.LocalPIDs.LocalPIDs); n != registryBuckets {
		t.Fatalf("%d registry buckets, want %d", n, registryBuckets)
	}
	// The event stream was registered before the registry shrank.
	if _, ok := system.ProcessRegistry.GetLocal("eventstream"); !ok {
		t.Fatal("the event stream process is gone from the registry")
	}
	pid := system.Root.Spawn(actor.PropsFromFunc(func(c actor.Context) {
		if msg, ok := c.Message().(string); ok {
			c.Respond(msg)
		}
	}))
	if got, err := system.Root.RequestFuture(pid, "ping", 5*time.Second).Result(); err != nil || got != "ping" {
		t.Fatalf("request to an actor: got %v, %v", got, err)
	}
}
