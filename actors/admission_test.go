package actors_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

func TestAdmissionBoundsRunningAndQueued(t *testing.T) {
	a := actors.NewAdmission(2, 1)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if err := a.Acquire(ctx); err != nil {
			t.Fatalf("acquire %d: %v", i, err)
		}
	}
	granted := make(chan error, 1)
	go func() { granted <- a.Acquire(ctx) }()
	waitFor(t, 5*time.Second, func() bool { _, q := a.Load(); return q == 1 }, "one chat queued")
	if err := a.Acquire(ctx); !errors.Is(err, actors.ErrOverloaded) {
		t.Fatalf("acquire past the queue: %v, want ErrOverloaded", err)
	}
	a.Release()
	if err := <-granted; err != nil {
		t.Fatalf("queued acquire: %v", err)
	}
	if r, q := a.Load(); r != 2 || q != 0 {
		t.Fatalf("load %d running %d queued, want 2 and 0", r, q)
	}
}

func TestAdmissionQueuedWaiterGivesUpOnCancel(t *testing.T) {
	a := actors.NewAdmission(1, 4)
	if err := a.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Acquire(ctx) }()
	waitFor(t, 5*time.Second, func() bool { _, q := a.Load(); return q == 1 }, "queued")
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v", err)
	}
	a.Release()
	if r, q := a.Load(); r != 0 || q != 0 {
		t.Fatalf("load %d/%d after release, want 0/0: a cancelled waiter kept a place", r, q)
	}
}

func TestAdmissionIsFIFO(t *testing.T) {
	a := actors.NewAdmission(1, 8)
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
		waitFor(t, 5*time.Second, func() bool { _, q := a.Load(); return q == i+1 }, "queued in order")
	}
	for want := 0; want < 3; want++ {
		a.Release()
		if got := <-order; got != want {
			t.Fatalf("granted %d, want %d", got, want)
		}
	}
}

// A reply takes one terminal message: what any actor sends after it is
// dropped, which is what answers every chat exactly once.
func TestReplyAcceptsOneTerminalMessage(t *testing.T) {
	system := actor.NewActorSystem()
	defer system.Shutdown()
	r := actors.NewReply(system, "x")
	defer r.Close()
	root := system.Root
	root.Send(r.PID(), &actors.Chunk{Text: "a"})
	root.Send(r.PID(), &actors.Failure{Reason: "first"})
	root.Send(r.PID(), &actors.End{})
	root.Send(r.PID(), &actors.Chunk{Text: "late"})
	if r.Fail(actors.Code_CODE_INTERNAL, "second") {
		t.Fatal("Fail after a terminal message reported success")
	}
	batch, err := r.Receive(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != 2 || batch[0].(*actors.Chunk).Text != "a" || batch[1].(*actors.Failure).Reason != "first" {
		t.Fatalf("got %v", batch)
	}
}
