package leaktest_test

import (
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/leaktest"
)

func TestCheckFindsALeftGoroutine(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	go func() {
		close(started)
		<-release
	}()
	<-started
	err := leaktest.Check(50 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "TestCheckFindsALeftGoroutine") {
		t.Fatalf("Check with a goroutine left: %v", err)
	}
	close(release)
	if err := leaktest.Check(5 * time.Second); err != nil {
		t.Fatalf("Check after the goroutine ended: %v", err)
	}
}
