// Command echo writes its argument and where its coverage counters go: a
// program for covertest's own tests to build, run and count.
package main

import "os"

func main() {
	os.Stdout.WriteString(os.Args[1] + " " + os.Getenv("GOCOVERDIR"))
}
