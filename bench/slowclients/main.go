// Command slowclients holds many idle or slow clients on one node, as a
// slowloris attack does, and measures what they cost it in memory and
// what they do to its other chats: 10,000 connections that send nothing,
// a request head a byte a second, or one request and then nothing, each
// opened again as soon as the node closes it, while other clients chat.
//
// Run it from the module: go run ./bench/slowclients [-out FILE]. See
// bench/README.md.
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
	pinnedEnv = "TROUPE_SLOWCLIENTS_PINNED"
)

type options struct {
	node     string
	out      string
	clients  int
	modes    []mode
	every    time.Duration
	ramp     time.Duration
	settle   time.Duration
	hold     time.Duration
	chatters int
	pause    time.Duration
	env      []string // the node's limit settings, NAME=value
	quiet    time.Duration
	timeout  time.Duration
}

func main() {
	var o options
	var modes, env string
	flag.StringVar(&o.node, "node", "", "a built troupe binary (default: build ./cmd/troupe)")
	flag.StringVar(&o.out, "out", "", "also write the results, as markdown, to this file")
	flag.IntVar(&o.clients, "clients", 10000, "idle or slow clients held at once")
	flag.StringVar(&modes, "modes", "idle,slow,keepalive", "the runs, comma-separated: idle (a connection that sends nothing), slow (a request head a byte every -every), keepalive (one request, then nothing)")
	flag.DurationVar(&o.every, "every", time.Second, "time between two bytes of a slow client")
	flag.DurationVar(&o.ramp, "ramp", 5*time.Second, "time over which the clients connect, evenly")
	flag.DurationVar(&o.settle, "settle", 5*time.Second, "wait after the last client connected before measuring")
	flag.DurationVar(&o.hold, "hold", 20*time.Second, "how long the clients are measured held: longer than HEADER_TIMEOUT, so that the node cuts them off and they come back")
	flag.IntVar(&o.chatters, "chatters", 4, "clients chatting meanwhile, each a chat at a time on a new connection")
	flag.DurationVar(&o.pause, "pause", 50*time.Millisecond, "a chatter's pause between two chats")
	flag.StringVar(&env, "env", "", "settings for the node, comma-separated NAME=value (e.g. MAX_CONNECTIONS=4000,HEADER_TIMEOUT=5s); the defaults otherwise")
	flag.DurationVar(&o.quiet, "quiet", 2*time.Minute, "wait up to this long for the node's CPU to be quiet before starting")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.Parse()
	for _, m := range strings.Split(modes, ",") {
		switch mode(strings.TrimSpace(m)) {
		case modeIdle, modeSlow, modeKeepAlive:
			o.modes = append(o.modes, mode(strings.TrimSpace(m)))
		default:
			fail(fmt.Errorf("-modes: unknown mode %q (want idle, slow, keepalive)", m))
		}
	}
	if env != "" {
		o.env = strings.Split(env, ",")
	}
	if o.clients < 1 || o.clients > 50000 || o.every < 10*time.Millisecond || o.hold < time.Second || o.chatters < 1 {
		fail(errors.New("-clients 1-50000, -every at least 10ms, -hold at least 1s, -chatters at least 1"))
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
	fmt.Fprintln(os.Stderr, "slowclients:", err)
	os.Exit(1)
}

func run(ctx context.Context, o options, taskset string) error {
	// Each client is a connection in each process; the node inherits the
	// limit.
	if err := proc.RaiseFileLimit(o.clients+o.chatters+1024, fmt.Sprintf("%d clients (-clients, -chatters)", o.clients+o.chatters)); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "troupe-slowclients")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.node == "" {
		o.node = filepath.Join(dir, "troupe")
		fmt.Fprintln(os.Stderr, "building ./cmd/troupe...")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.node, "./cmd/troupe")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building ./cmd/troupe (run from the module root, or pass -node): %w", err)
		}
	}
	layout := filepath.Join(dir, "layout.yaml")
	if err := os.WriteFile(layout, []byte("version: 1\nllm:\n  class: reflect\n  args: {}\n"), 0o644); err != nil {
		return err
	}
	rep := &report{o: o, machine: proc.MachineFacts(runtime.Version()), pinned: os.Getenv(pinnedEnv) != "",
		command: "go run ./bench/slowclients " + strings.Join(os.Args[1:], " ")}
	for _, m := range o.modes {
		// A node of its own for each run, so that one run's garbage is not
		// the next one's baseline.
		n, err := startNode(ctx, o, taskset, layout)
		if err != nil {
			return err
		}
		r, err := measure(ctx, o, n, m)
		n.Stop()
		if err != nil {
			return fmt.Errorf("%s clients: %w", m, err)
		}
		rep.runs = append(rep.runs, r)
	}
	md := rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "wrote", o.out)
	}
	return nil
}
