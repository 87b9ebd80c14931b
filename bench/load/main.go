// Command load benchmarks a troupe node against bench/bare, a plain net/http
// handler doing the same work, and measures what the node costs: chats per
// second and latency under closed-loop load, CPU per chat and per streamed
// chunk, RSS at idle, under load and per in-flight stream.
//
// Run it from the module: go run ./bench/load [-out bench/results.md].
// Each server runs alone, pinned to CPU 0 with GOMAXPROCS=1; the load
// generator re-executes itself pinned to CPU 1. See bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/actors/opencc"
	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// pinnedEnv marks the re-executed, pinned load generator.
const pinnedEnv = "TROUPE_BENCH_PINNED"

type options struct {
	troupe, bare string
	testdata     string
	duration     time.Duration
	warmup       time.Duration
	clients      []int
	chunkClients int
	rounds       int
	streams      int
	out          string
}

func main() {
	var o options
	var clients string
	flag.StringVar(&o.troupe, "troupe", "", "a built troupe binary (default: build ./cmd/troupe)")
	flag.StringVar(&o.bare, "bare", "", "a built bare binary (default: build ./bench/bare)")
	flag.StringVar(&o.testdata, "testdata", "", "the directory with short.txt and long.txt (default: bench/testdata of the module)")
	flag.DurationVar(&o.duration, "duration", 5*time.Second, "how long each measured run lasts")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "how long the warm-up before each run lasts")
	flag.StringVar(&clients, "clients", "1,8,64", "the concurrent clients of each run, comma-separated")
	flag.IntVar(&o.rounds, "rounds", 1, "measure each run this many times and keep the one least disturbed by other processes")
	flag.IntVar(&o.chunkClients, "chunk-clients", 8, "concurrent clients of the streamed-chunks run")
	flag.IntVar(&o.streams, "streams", 1000, "concurrent streams held open to measure memory per stream (0 skips)")
	flag.StringVar(&o.out, "out", "", "also write the results, as markdown, to this file")
	flag.Parse()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
	var err error
	if o.clients, err = parseClients(clients); err != nil {
		fail(err)
	}
	if o.duration <= 0 || o.duration > 5*time.Minute || o.warmup < 0 || o.warmup > time.Minute {
		fail(errors.New("-duration must be in (0, 5m] and -warmup in [0, 1m]"))
	}
	if o.chunkClients < 1 || o.rounds < 1 || o.rounds > 10 || o.streams < 0 || o.streams > 10000 {
		fail(errors.New("-chunk-clients must be at least 1, -rounds from 1 to 10 and -streams at most 10000"))
	}

	taskset, err := exec.LookPath("taskset")
	if err != nil {
		fail(errors.New("taskset is not on PATH; it pins the servers and the load to separate CPUs: install util-linux (apt-get install util-linux)"))
	}
	if os.Getenv(pinnedEnv) == "" {
		fail(reexecPinned(taskset))
	}
	if err := checkPinned(); err != nil {
		fail(err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err = run(ctx, o, taskset)
	stop()
	if err != nil {
		fail(err)
	}
}

func parseClients(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 4096 {
			return nil, fmt.Errorf("-clients: %q is not a number of clients from 1 to 4096", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// reexecPinned replaces the process with itself under taskset -c loadCPU.
// Pinning from inside (sched_setaffinity) would pin only the calling
// thread, not the runtime's other threads; taskset pins before exec, so
// every thread inherits it, and the runtime sizes GOMAXPROCS to it.
func reexecPinned(taskset string) error {
	if runtime.NumCPU() < 2 {
		return fmt.Errorf("need at least 2 CPUs (one for the servers, one for the load); this process may use %d", runtime.NumCPU())
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := append([]string{"taskset", "-c", loadCPU, self}, os.Args[1:]...)
	env := append(os.Environ(), pinnedEnv+"=1")
	return fmt.Errorf("re-executing under taskset: %w", syscall.Exec(taskset, args, env))
}

// checkPinned makes sure the re-executed process really runs on loadCPU
// alone, so that the numbers are not quietly measured with shared CPUs.
func checkPinned() error {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			if got := strings.TrimSpace(rest); got != loadCPU {
				return fmt.Errorf("the load generator runs on CPUs %s, want only %s", got, loadCPU)
			}
			return nil
		}
	}
	return errors.New("/proc/self/status has no Cpus_allowed_list")
}

// input is one chat message size of the matrix.
type input struct {
	name string
	text string
}

func run(ctx context.Context, o options, taskset string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	if o.testdata == "" {
		o.testdata = filepath.Join(root, "bench", "testdata")
	}
	var inputs []input
	for _, name := range []string{"short", "long"} {
		data, err := os.ReadFile(filepath.Join(o.testdata, name+".txt"))
		if err != nil {
			return err
		}
		inputs = append(inputs, input{name: name, text: string(data)})
	}
	conv, err := opencc.Load("s2twp")
	if err != nil {
		return err
	}

	tmp, err := os.MkdirTemp("", "troupe-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.troupe == "" {
		fmt.Fprintln(os.Stderr, "building troupe and bare...")
		if o.troupe, err = build(ctx, root, tmp, "./cmd/troupe", "troupe"); err != nil {
			return err
		}
	}
	if o.bare == "" {
		if o.bare, err = build(ctx, root, tmp, "./bench/bare", "bare"); err != nil {
			return err
		}
	}
	if err := raiseFileLimit(2*o.streams + 1024); err != nil {
		return err
	}

	rep := &report{
		machine:  proc.MachineFacts(serverGoVersion(o.troupe)),
		command:  "go run ./bench/load " + strings.Join(os.Args[1:], " "),
		duration: o.duration,
		warmup:   o.warmup,
		rounds:   o.rounds,
	}
	for _, in := range inputs {
		rep.inputs = append(rep.inputs, fmt.Sprintf("%s: %d runes, %d bytes", in.name, len([]rune(in.text)), len(in.text)))
	}
	chats := make(map[string]chat)
	for _, in := range inputs {
		chats[in.name] = chat{body: formBody(in.text), want: []byte(conv.Convert(conv.Convert(in.text)))}
	}

	b := &bench{o: o, taskset: taskset, rep: rep}
	for _, t := range []struct{ name, bin, layout string }{
		{"troupe", o.troupe, ""},
		{"bare", o.bare, ""},
	} {
		if err := b.matrix(ctx, t.name, t.bin, serverEnv(t.layout), inputs, chats); err != nil {
			return err
		}
	}

	long := inputs[1].text
	chunkLayout := filepath.Join(tmp, "chunk.yaml")
	if err := os.WriteFile(chunkLayout, []byte(chunkLayoutYAML), 0o644); err != nil {
		return err
	}
	rep.chunks = len([]rune(conv.Convert(long)))
	if err := b.chunked(ctx, serverEnv(chunkLayout), chats["long"]); err != nil {
		return err
	}

	if o.streams > 0 {
		content := string([]rune(long)[:streamRunes])
		streamLayout := filepath.Join(tmp, "streams.yaml")
		if err := os.WriteFile(streamLayout, []byte(streamsLayoutYAML(content, o.streams)), 0o644); err != nil {
			return err
		}
		c := chat{body: formBody(inputs[0].text), want: []byte(conv.Convert(content))}
		if err := b.streams(ctx, serverEnv(streamLayout), c); err != nil {
			return err
		}
	}

	md := rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the troupe module (go run ./bench/load)")
	}
	return filepath.Dir(mod), nil
}

// serverEnv is the environment both kinds of server run with: on loopback,
// any free port, one P, and for troupe no Agent and the given layout (""
// for the built-in one).
func serverEnv(layout string) []string {
	return []string{
		"GOMAXPROCS=1",
		"PORT=0",
		"BIND_ADDRESS=127.0.0.1",
		"IGNORE_AGENT=1",
		"LAYOUT_CONFIG=" + layout,
	}
}

// formBody encodes a one-message chat as the Agent sends it.
func formBody(msg string) []byte {
	input, _ := json.Marshal([]map[string]any{{"msg": msg, "isbot": false}})
	return []byte(url.Values{
		"input":      {string(input)},
		"name":       {"bench"},
		"history_id": {"1"},
		"user_id":    {"1"},
	}.Encode())
}

// raiseFileLimit makes room for the connections of the streams scenario,
// on both sides: the servers inherit the limit.
func raiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	if lim.Max < uint64(need) {
		return fmt.Errorf("open files are limited to %d; the streams scenario needs %d (raise ulimit -Hn, or lower -streams)", lim.Max, need)
	}
	lim.Cur = uint64(need)
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// chunkLayoutYAML streams the reflect model's answer one rune at a time
// through the egress filter.
const chunkLayoutYAML = `version: 1
llm:
  class: reflect
  args: {chunk: 1}
ingress-filters:
  - class: opencc
    args: {config: s2twp}
egress-filters:
  - class: opencc
    args: {config: s2twp}
`

// A streams scenario chat lasts streamRunes*streamDelay (10 s), far longer
// than the RSS sampling while all are open.
const (
	streamRunes = 200
	streamDelay = "50ms"
)

func streamsLayoutYAML(content string, streams int) string {
	// A JSON string is a valid YAML double-quoted scalar, whatever the
	// sample holds (quotes, %, newlines).
	quoted, _ := json.Marshal(content)
	slots := max(2048, streams)
	return fmt.Sprintf(`version: 1
llm:
  class: dummy
  args:
    content: %s
    delay: %s
  concurrency: %d
  queue: %d
ingress-filters:
  - class: opencc
    args: {config: s2twp}
egress-filters:
  - class: opencc
    args: {config: s2twp}
`, quoted, streamDelay, slots, slots)
}
