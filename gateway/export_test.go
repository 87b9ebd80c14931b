package gateway

import (
	"testing"
	"time"
)

// Every answer that streams moves off its HTTP handler at its first flush in
// these tests, so that they check the taken-over connection too.
func init() { handOffAfter = 0 }

// WaitHandedBack waits until no taken-over connection is on its way back to
// its HTTP server.
func WaitHandedBack(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for handingBack.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a taken-over connection did not go back to its HTTP server")
		}
		time.Sleep(time.Millisecond)
	}
}

// SetWriteGrace sets, for one test, how long past its chat's time limit a
// write to a client may block.
func SetWriteGrace(t *testing.T, d time.Duration) {
	old := writeGrace
	writeGrace = d
	t.Cleanup(func() { writeGrace = old })
}
