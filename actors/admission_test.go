package actors

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// eventually polls cond until it holds or five seconds pass.
func eventually(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func queued(a *Admission, n int) func() bool {
	return func() bool { _, q := a.Load(); return q == n }
}

func TestAdmissionBoundsRunningAndQueued(t *testing.T) {
	a := NewAdmission(2, 1)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := a.Acquire(ctx); err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
	}
	granted := make(chan error, 1)
	go func() { granted <- a.Acquire(ctx) }()
	eventually(t, queued(a, 1), "one chat queued")
	if err := a.Acquire(ctx); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("acquire past the queue: %v, want ErrOverloaded", err)
	}
	if a.TryAcquire() {
		t.Fatal("TryAcquire took a place while all were taken")
	}
	a.Release()
	if err := <-granted; err != nil {
		t.Fatalf("queued acquire: %v", err)
	}
	if r, q := a.Load(); r != 2 || q != 0 {
		t.Fatalf("load %d running %d queued, want 2 and 0", r, q)
	}
	a.Release()
	if !a.TryAcquire() {
		t.Fatal("TryAcquire found no place with one free")
	}
}

func TestAdmissionQueuedWaiterGivesUpOnCancel(t *testing.T) {
	a := NewAdmission(1, 4)
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.AcquireFor(ctx, "gw") }()
	eventually(t, queued(a, 1), "queued")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	a.Release()
	if r, q := a.Load(); r != 0 || q != 0 {
		t.Fatalf("load %d/%d after release, want 0/0: a cancelled waiter kept a place", r, q)
	}
	if len(a.origins) != 0 {
		t.Fatalf("a cancelled waiter is still counted for its origin: %v", a.origins)
	}
}

func TestAdmissionIsFIFO(t *testing.T) {
	a := NewAdmission(1, 8)
	ctx := context.Background()
	if err := a.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	for i := 0; i < 3; i++ {
		go func() {
			if err := a.Acquire(ctx); err == nil {
				order <- i
			}
		}()
		eventually(t, queued(a, i+1), "queued in order")
	}
	for want := 0; want < 3; want++ {
		a.Release()
		if got := <-order; got != want {
			t.Fatalf("granted %d, want %d", got, want)
		}
	}
}

// Each origin's places, running and queued, are known, also as they pass
// from one origin to another's waiter, so a node can tell each gateway the
// load of everybody else.
func TestAdmissionCountsOrigins(t *testing.T) {
	a := NewAdmission(3, 4)
	ctx := context.Background()
	for _, o := range []string{"g1", "g2", ""} {
		if err := a.AcquireFor(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
	granted := make(chan error, 2)
	go func() { granted <- a.AcquireFor(ctx, "g1") }()
	eventually(t, queued(a, 1), "g1's second chat queued")
	go func() { granted <- a.AcquireFor(ctx, "g1") }()
	eventually(t, queued(a, 2), "g1's third chat queued")

	check := func(what string, origin string, wantRunning, wantQueued int) {
		t.Helper()
		if r, q := a.LoadExcluding(origin); r != wantRunning || q != wantQueued {
			t.Fatalf("%s: load without %q is %d running, %d queued; want %d, %d", what, origin, r, q, wantRunning, wantQueued)
		}
	}
	check("start", "g1", 2, 0)
	check("start", "g2", 2, 2)
	check("start", "", 3, 2) // this node's own chats are nobody's origin
	check("start", "g3", 3, 2)

	a.ReleaseFor("g2") // its place goes to g1's first waiter
	if err := <-granted; err != nil {
		t.Fatal(err)
	}
	check("after g2's chat ended", "g1", 1, 0)
	check("after g2's chat ended", "g2", 3, 1)

	a.Release() // this node's chat: g1's last waiter gets it
	if err := <-granted; err != nil {
		t.Fatal(err)
	}
	check("after the local chat ended", "g1", 0, 0)
	for range 3 {
		a.ReleaseFor("g1")
	}
	check("all ended", "", 0, 0)
	if len(a.origins) != 0 {
		t.Fatalf("origins with nothing left are kept: %v", a.origins)
	}
}

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) add(d time.Duration)     { c.t = c.t.Add(d) }
func newFakeClock() *fakeClock               { return &fakeClock{t: time.Unix(1_700_000_000, 0)} }
func within(d, want, tol time.Duration) bool { return d >= want-tol && d <= want+tol }

// saturate takes every free place of a.
func saturate(t *testing.T, a *Admission) {
	t.Helper()
	for range a.Capacity() {
		if !a.TryAcquire() {
			t.Fatal("no free place to fill")
		}
	}
}

// churn ends a chat and starts another every gap, n times, keeping a full.
func churn(a *Admission, c *fakeClock, gap time.Duration, n int) {
	for range n {
		c.add(gap)
		a.Release()
		if !a.TryAcquire() {
			panic("churn: the place just freed was taken")
		}
	}
}

// withQueue adds n waiters to a full admission until the test ends.
func withQueue(t *testing.T, a *Admission, n int) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, n)
	for range n {
		go func() { done <- a.AcquireFor(ctx, "gw") }()
	}
	eventually(t, queued(a, n), "the queue filled")
	t.Cleanup(func() {
		cancel()
		for range n {
			<-done
		}
	})
}

// Retry-After is the time the queue, and one more chat, take to drain at
// the rate places freed while all were taken.
func TestAdmissionRetryAfter(t *testing.T) {
	t.Run("nothing ended yet: the upper bound", func(t *testing.T) {
		a := NewAdmission(2, 4)
		c := newFakeClock()
		a.now = c.now
		saturate(t, a)
		c.add(30 * time.Second)
		if got := a.RetryAfter(); got != maxRetryAfter {
			t.Fatalf("got %v, want %v", got, maxRetryAfter)
		}
	})
	t.Run("queue over drain rate", func(t *testing.T) {
		a := NewAdmission(4, 9)
		c := newFakeClock()
		a.now = c.now
		saturate(t, a)
		churn(a, c, 500*time.Millisecond, 120) // 2 chats a second for a minute
		withQueue(t, a, 9)
		// 10 chats at 2 a second: 5 s.
		if got := a.RetryAfter(); !within(got, 5*time.Second, 250*time.Millisecond) {
			t.Fatalf("got %v, want about 5s", got)
		}
	})
	t.Run("a young estimate is not biased low", func(t *testing.T) {
		a := NewAdmission(4, 3)
		c := newFakeClock()
		a.now = c.now
		saturate(t, a)
		churn(a, c, 250*time.Millisecond, 12) // 4 a second, for 3 s only
		withQueue(t, a, 3)
		if got := a.RetryAfter(); !within(got, time.Second, 100*time.Millisecond) {
			t.Fatalf("got %v, want about 1s", got)
		}
	})
	t.Run("idle time and unsaturated chats do not change it", func(t *testing.T) {
		a := NewAdmission(2, 7)
		c := newFakeClock()
		a.now = c.now
		saturate(t, a)
		churn(a, c, time.Second, 60) // 1 a second
		a.Release()
		a.Release()
		// An hour with one fast chat at a time.
		for range 3600 {
			c.add(time.Second)
			if !a.TryAcquire() {
				t.Fatal("no place")
			}
			a.Release()
		}
		saturate(t, a)
		withQueue(t, a, 7)
		if got := a.RetryAfter(); !within(got, 8*time.Second, 300*time.Millisecond) {
			t.Fatalf("got %v, want about 8s as before the idle hour", got)
		}
	})
	t.Run("follows the pace", func(t *testing.T) {
		a := NewAdmission(1, 0)
		c := newFakeClock()
		a.now = c.now
		saturate(t, a)
		churn(a, c, 100*time.Millisecond, 200) // 10 a second
		if got := a.RetryAfter(); got != minRetryAfter {
			t.Fatalf("got %v, want the lower bound %v", got, minRetryAfter)
		}
		churn(a, c, 2*time.Second, 30) // then one every 2 s for a minute
		if got := a.RetryAfter(); !within(got, 2*time.Second, 200*time.Millisecond) {
			t.Fatalf("got %v, want about 2s", got)
		}
		c.add(10 * time.Second) // nothing ends for a while: slower
		if got := a.RetryAfter(); !within(got, 2300*time.Millisecond, 200*time.Millisecond) {
			t.Fatalf("got %v, want about 2.3s", got)
		}
		churn(a, c, 2*time.Minute, 40) // then one every 2 minutes
		if got := a.RetryAfter(); got != maxRetryAfter {
			t.Fatalf("got %v, want the upper bound %v", got, maxRetryAfter)
		}
	})
}

// A reply takes one terminal message: what any actor sends after it is
// dropped, which is what answers every chat exactly once.
func TestReplyAcceptsOneTerminalMessage(t *testing.T) {
	system := actor.NewActorSystem()
	defer system.Shutdown()
	r := NewReply(system, "x")
	defer r.Close()
	root := system.Root
	root.Send(r.PID(), &Chunk{Text: "a"})
	root.Send(r.PID(), &Failure{Reason: "first"})
	root.Send(r.PID(), &End{})
	root.Send(r.PID(), &Chunk{Text: "late"})
	if r.Fail(Code_CODE_INTERNAL, "second") {
		t.Fatal("Fail after a terminal message reported success")
	}
	batch, err := r.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != 2 || batch[0].(*Chunk).Text != "a" || batch[1].(*Failure).Reason != "first" {
		t.Fatalf("got %v", batch)
	}
}
