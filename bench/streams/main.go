// Command streams holds many streaming chats open on one node at once and
// measures what each costs in memory and how late its chunks reach the
// client: a node with 10,000 chats streaming one chunk a second each.
//
// Run it from the module: go run ./bench/streams [-out bench/streams.md].
// See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// The node runs on nodeCPU, the clients on clientCPU, so that neither
// takes the other's cycles.
const (
	nodeCPU   = "0"
	clientCPU = "1"
	pinnedEnv = "TROUPE_STREAMS_PINNED"
)

type options struct {
	node    string
	out     string
	streams int
	every   time.Duration
	ramp    time.Duration
	settle  time.Duration
	hold    time.Duration
	filters bool
	trace   bool
	quiet   time.Duration
	timeout time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.node, "node", "", "a built node binary (default: build ./bench/streams/node, troupe with the benchclock kind)")
	flag.StringVar(&o.out, "out", "", "also write the results, as markdown, to this file")
	flag.IntVar(&o.streams, "streams", 10000, "streaming chats held open at once")
	flag.DurationVar(&o.every, "every", time.Second, "time between two chunks of a chat")
	flag.DurationVar(&o.ramp, "ramp", 5*time.Second, "time over which the streams are opened, evenly")
	flag.DurationVar(&o.settle, "settle", 15*time.Second, "wait after the last stream opened before measuring: long enough for the garbage collector to go from what opening the streams cost to its steady pace")
	flag.DurationVar(&o.hold, "hold", 30*time.Second, "how long every stream is measured open: long enough for a few garbage collections")
	flag.BoolVar(&o.trace, "trace", false, "print the node's memory every 100ms while measured")
	flag.BoolVar(&o.filters, "filters", false, "put an OpenCC filter before and after the model, as bench/load's streams do")
	flag.DurationVar(&o.quiet, "quiet", 2*time.Minute, "wait up to this long for the node's CPU to be quiet before starting")
	flag.DurationVar(&o.timeout, "timeout", 8*time.Minute, "give up after this long")
	flag.Parse()
	if o.streams < 1 || o.streams > 50000 || o.every < 10*time.Millisecond || o.ramp < 0 || o.hold < time.Second || o.settle < 0 {
		fail(errors.New("-streams 1-50000, -every at least 10ms, -hold at least 1s"))
	}
	taskset, err := exec.LookPath("taskset")
	if err == nil && os.Getenv(pinnedEnv) == "" && runtime.NumCPU() >= 2 {
		fail(proc.ReexecPinned(taskset, clientCPU, pinnedEnv))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	err = run(ctx, o, taskset)
	cancel()
	stop()
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "streams:", err)
	os.Exit(1)
}

func run(ctx context.Context, o options, taskset string) error {
	// Each stream is a connection in each process; the node inherits the
	// limit.
	if err := proc.RaiseFileLimit(o.streams+1024, fmt.Sprintf("%d streams (-streams)", o.streams)); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "troupe-streams")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.node == "" {
		o.node = filepath.Join(dir, "node")
		fmt.Fprintln(os.Stderr, "building ./bench/streams/node...")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.node, "./bench/streams/node")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building ./bench/streams/node (run from the module root, or pass -node): %w", err)
		}
	}
	// Every chat outlasts the measurement: opened during the ramp, it
	// streams through the settling and the hold, and a few chunks more.
	chunks := int((o.ramp+o.settle+o.hold)/o.every) + 3
	layout := filepath.Join(dir, "layout.yaml")
	if err := os.WriteFile(layout, []byte(layoutYAML(o, chunks)), 0o644); err != nil {
		return err
	}
	n, err := startNode(ctx, o, taskset, layout, time.Duration(chunks)*o.every+time.Minute)
	if err != nil {
		return err
	}
	defer n.Stop()

	m := proc.MachineFacts(runtime.Version())
	rep := &report{o: o, machine: m, chunks: chunks, command: "go run ./bench/streams " + strings.Join(os.Args[1:], " "),
		pinned: os.Getenv(pinnedEnv) != ""}
	if err := measure(ctx, o, n, chunks, rep); err != nil {
		return err
	}
	md := rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "wrote", o.out)
	}
	if rep.errs > 0 {
		return fmt.Errorf("%d of %d streams failed; first: %v", rep.errs, o.streams, rep.firstErr)
	}
	return nil
}

func layoutYAML(o options, chunks int) string {
	filters := ""
	if o.filters {
		filters = "ingress-filters:\n  - class: opencc\n    args: {config: s2twp}\negress-filters:\n  - class: opencc\n    args: {config: s2twp}\n"
	}
	return fmt.Sprintf("version: 1\nllm:\n  class: benchclock\n  args: {chunks: %d, every: %q}\n  concurrency: %d\n  queue: 64\n%s",
		chunks, o.every, o.streams+64, filters)
}
