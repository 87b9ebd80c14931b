package actors

import (
	"testing"
	"time"
)

// A node that stops or restarts cancels the restarts it had scheduled for
// its children: a timer left behind would restart a child of a layout gone.
func TestPendingRestartsStopWithTheNode(t *testing.T) {
	var cs children
	ran := make(chan struct{}, 1)
	cs.restartLater(time.Hour, func() { ran <- struct{}{} })
	cs.restartLater(time.Hour, func() { ran <- struct{}{} })
	cs.mu.Lock()
	var timers []*time.Timer
	for timer := range cs.timers {
		timers = append(timers, timer)
	}
	cs.mu.Unlock()
	if len(timers) != 2 {
		t.Fatalf("%d pending restarts, want 2", len(timers))
	}
	cs.forget()
	for _, timer := range timers {
		if timer.Stop() {
			t.Fatal("a pending restart survived forget")
		}
	}
	// A restart that fires runs once and leaves the set.
	cs.restartLater(0, func() { ran <- struct{}{} })
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the restart did not run")
	}
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(cs.timers) != 0 {
		t.Fatalf("%d timers left after firing", len(cs.timers))
	}
}
