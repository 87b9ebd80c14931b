//go:build race

package main

// raceEnabled builds the binary under test with the race detector when the
// tests run with it, so that races in the real process fail the tests too.
const raceEnabled = true
