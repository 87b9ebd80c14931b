// Command cluster benchmarks a Troupe cluster of real processes on
// 127.0.0.1: what a remote hop adds to a chat and to each chunk, how fast
// five nodes find each other, how fast chats are routed around a killed
// or silent node, how throughput grows from one node to three behind one
// gateway, and whether a cluster with as many clients as places keeps
// every place busy.
//
// Run it from the module: go run ./bench/cluster [-out bench/cluster/results.md].
// See bench/cluster/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// endpoint is the chat path of every node.
const endpoint = "/v1/completion"

type options struct {
	troupe          string
	testdata        string
	out             string
	logs            string
	only            []string
	duration        time.Duration
	warmup          time.Duration
	rounds          int
	cpuClients      int
	convergeRounds  int
	failoverClients int
	steady          time.Duration
	scaleDelay      time.Duration
	satChat         time.Duration
	timeout         time.Duration
}

var benchmarks = []string{"hop", "converge", "kill", "stop", "scale", "saturate"}

func main() {
	var o options
	var only string
	flag.StringVar(&o.troupe, "troupe", "", "a built troupe binary (default: build ./cmd/troupe)")
	flag.StringVar(&o.testdata, "testdata", "bench/testdata", "the directory with short.txt and long.txt")
	flag.StringVar(&o.out, "out", "", "also write the results, as markdown, to this file")
	flag.StringVar(&o.logs, "logs", "", "save each node's output in this directory, as NAME.log")
	flag.StringVar(&only, "only", strings.Join(benchmarks, ","), "the benchmarks to run, comma-separated")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long each measured load lasts")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "the warm-up before each measured load")
	flag.IntVar(&o.rounds, "rounds", 2, "remote hop: measure each side this many times, alternating, and keep the best")
	flag.IntVar(&o.cpuClients, "cpu-clients", 4, "remote hop: concurrent clients of the CPU-per-chunk run")
	flag.IntVar(&o.convergeRounds, "converge-rounds", 10, "convergence: start the five nodes this many times (none starts after 90s)")
	flag.IntVar(&o.failoverClients, "failover-clients", 8, "kill and stop: concurrent clients through the gateway")
	flag.DurationVar(&o.steady, "steady", 2*time.Second, "kill and stop: steady load before the signal")
	flag.DurationVar(&o.scaleDelay, "scale-delay", 10*time.Millisecond, "scale-out: the model's sleep per chunk")
	flag.DurationVar(&o.satChat, "sat-chat", 500*time.Millisecond, "saturation: how long the model takes for a chat")
	flag.DurationVar(&o.timeout, "timeout", 8*time.Minute, "give up (and kill every node) after this long")
	flag.Parse()
	o.only = strings.Split(only, ",")
	for _, name := range o.only {
		if !slices.Contains(benchmarks, name) {
			fail(fmt.Errorf("-only: unknown benchmark %q (have %s)", name, strings.Join(benchmarks, ", ")))
		}
	}
	if o.duration <= 0 || o.duration > time.Minute || o.warmup < 0 || o.warmup > time.Minute || o.steady < time.Second || o.steady > time.Minute {
		fail(errors.New("-duration must be in (0, 1m], -warmup in [0, 1m], -steady in [1s, 1m]"))
	}
	if o.rounds < 1 || o.rounds > 10 || o.convergeRounds < 1 || o.convergeRounds > 20 || o.cpuClients < 1 || o.cpuClients > 256 ||
		o.failoverClients < 1 || o.failoverClients > 256 || o.scaleDelay < time.Millisecond || o.scaleDelay > time.Second || o.satChat < 10*time.Millisecond || o.satChat > 10*time.Second {
		fail(errors.New("-rounds 1-10, -converge-rounds 1-20, -cpu-clients and -failover-clients 1-256, -scale-delay 1ms-1s, -sat-chat 10ms-10s"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	err := run(ctx, o)
	cancel()
	stop()
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "cluster:", err)
	os.Exit(1)
}

// bench holds what every benchmark needs.
type bench struct {
	o           options
	fleet       *fleet
	short, long string
}

func run(ctx context.Context, o options) error {
	dir, err := os.MkdirTemp("", "troupe-cluster-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	if o.troupe == "" {
		o.troupe = filepath.Join(dir, "troupe")
		fmt.Fprintln(os.Stderr, "building ./cmd/troupe...")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.troupe, "./cmd/troupe")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building ./cmd/troupe (run from the module root, or pass -troupe): %w", err)
		}
	}
	short, err := os.ReadFile(filepath.Join(o.testdata, "short.txt"))
	if err != nil {
		return fmt.Errorf("%w (run from the module root, or pass -testdata)", err)
	}
	long, err := os.ReadFile(filepath.Join(o.testdata, "long.txt"))
	if err != nil {
		return fmt.Errorf("%w (run from the module root, or pass -testdata)", err)
	}
	if o.logs != "" {
		if err := os.MkdirAll(o.logs, 0o755); err != nil {
			return err
		}
	}
	b := &bench{o: o, fleet: newFleet(o.troupe, dir, o.logs),
		short: strings.TrimSpace(string(short)), long: strings.TrimSpace(string(long))}
	// Every node started is killed on the way out, on error and on Ctrl-C
	// too.
	defer b.fleet.killAll()

	m := proc.MachineFacts(runtime.Version())
	// The nodes share the cores this process may use, whatever the
	// machine has.
	m.Cores = runtime.NumCPU()
	rep := &report{machine: m, command: "go run ./bench/cluster " + strings.Join(os.Args[1:], " "), o: o}
	began := time.Now()
	for _, name := range o.only {
		var err error
		switch name {
		case "hop":
			rep.hop, err = b.hop(ctx)
		case "converge":
			rep.converge, err = b.converge(ctx)
		case "kill":
			rep.kill, err = b.failover(ctx, syscall.SIGKILL, 3*time.Second)
		case "stop":
			// A silent node is declared dead in seconds; the load goes
			// on until its stuck chats are re-routed.
			rep.stop, err = b.failover(ctx, syscall.SIGSTOP, 10*time.Second)
		case "scale":
			rep.scale, err = b.scale(ctx)
		case "saturate":
			rep.saturate, err = b.saturate(ctx)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	rep.took = time.Since(began)
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

// waitRoutes sends chats through gateway from clients at once until one is
// answered by the node named want. A node routes to a member only once it
// has the member's load, which comes by gossip shortly after the join.
func waitRoutes(ctx context.Context, hc *http.Client, gateway string, c chat, want string, clients int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, r := range closedLoop(ctx, hc, gateway, c, clients, time.Now().Add(100*time.Millisecond)) {
			if r.ok && r.node == want {
				return nil
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return fmt.Errorf("no chat through %s reached %s within %v", gateway, want, timeout)
}
