// Package leaktest checks, at the end of a package's tests, that no
// goroutine running Troupe's code is left: every goroutine has an owner that
// stops it and waits for it.
package leaktest

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// module prefixes the frames of Troupe's own code in a stack dump.
const module = "github.com/troupe-llm/troupe/"

// Main runs the tests and then fails the run if goroutines of Troupe's code
// outlive them for longer than timeout. Use it as TestMain:
//
//	func TestMain(m *testing.M) { leaktest.Main(m, 5*time.Second) }
func Main(m *testing.M, timeout time.Duration) {
	code := m.Run()
	if code == 0 {
		if err := Check(timeout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Check waits up to timeout for every goroutine with a frame of Troupe's
// code (other than the test runner's own) to end, and returns an error
// listing those that did not.
func Check(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		leaked := ours()
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leaked %d goroutines:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func ours() []string {
	buf := make([]byte, 4<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	var leaked []string
	for g := range strings.SplitSeq(stacks, "\n\n") {
		if !strings.Contains(g, module) ||
			strings.Contains(g, module+"internal/leaktest.") ||
			strings.Contains(g, ".TestMain(") {
			continue
		}
		leaked = append(leaked, g)
	}
	return leaked
}
