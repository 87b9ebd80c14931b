// Command openai measures what a Troupe node adds between a client and an
// OpenAI-compatible upstream: time to first token, CPU per streamed token,
// chats per second at 64 concurrent streams, and how fast a client's
// cancel reaches the upstream. Each is measured on three paths to the same
// upstream: the client calling it directly, through nginx as a plain
// streaming reverse proxy, and through a node with the openai model kind.
//
// Run it from the module: go run ./bench/openai [-out bench/openai/results.md].
// The proxy under test runs alone, pinned to CPU 0 (troupe with
// GOMAXPROCS=1, nginx with one worker); the harness, which is the client,
// re-executes itself pinned to CPU 1, where it also runs the upstream, a
// fake OpenAI server of its own ("openai upstream"). See
// bench/openai/README.md.
package main

import (
	"context"
	"debug/buildinfo"
	"errors"
	"flag"
	"fmt"
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

// pinnedEnv marks the re-executed, pinned harness.
const pinnedEnv = "TROUPE_BENCH_PINNED"

type options struct {
	troupe, nginx string
	tokens        int
	delay         time.Duration
	streams       int
	duration      time.Duration
	warmup        time.Duration
	ttftChats     int
	ttftTime      time.Duration
	cancels       int
	cancelDelay   time.Duration
	cancelGap     time.Duration
	cancelTime    time.Duration
	ttftPause     time.Duration
	quietWait     time.Duration
	pacedDelay    time.Duration
	rounds        int
	quick         bool
	timeout       time.Duration
	out           string
}

// cancelTokens is the length of the cancel run's answers: at cancelDelay a
// token, far longer than any cancel takes to arrive.
const cancelTokens = 10_000

// cancelWarm cancels start the cancel run on every path, uncounted.
const cancelWarm = 5

func main() {
	if len(os.Args) > 1 && os.Args[1] == "upstream" {
		if err := upstreamMain(os.Args[2:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return
			}
			fmt.Fprintln(os.Stderr, "openai upstream:", err)
			os.Exit(1)
		}
		return
	}

	var o options
	flag.StringVar(&o.troupe, "troupe", "", "a built troupe binary (default: build ./cmd/troupe)")
	flag.StringVar(&o.nginx, "nginx", "", "an nginx binary (default: nginx on PATH or /usr/sbin, installed with apt-get when missing and root)")
	flag.IntVar(&o.tokens, "tokens", 256, "tokens per answer")
	flag.DurationVar(&o.delay, "delay", 0, "the upstream's pause between two tokens (each token is flushed on its own)")
	flag.IntVar(&o.streams, "streams", 64, "concurrent streams of the throughput run")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each throughput run lasts")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "how long the warm-up before each throughput run lasts")
	flag.IntVar(&o.ttftChats, "ttft-chats", 3000, "chats, one at a time, measured for the time to first token on each path")
	flag.DurationVar(&o.ttftTime, "ttft-time", 10*time.Second, "the longest the time-to-first-token run of a path lasts (the no-pause run: half of it, and half the chats)")
	flag.DurationVar(&o.ttftPause, "ttft-pause", 2*time.Millisecond, "in the time-to-first-token run, the upstream's pause after the first token, so that it travels alone")
	flag.DurationVar(&o.pacedDelay, "paced-delay", 10*time.Millisecond, "in the paced run, which measures the proxies' CPU per token, the upstream's pause between two tokens")
	flag.IntVar(&o.rounds, "rounds", 1, "measure each throughput run this many times and keep the one other processes disturbed least")
	flag.IntVar(&o.cancels, "cancels", 300, "chats cancelled at their first token on each path")
	flag.DurationVar(&o.cancelDelay, "cancel-delay", 10*time.Millisecond, "the upstream's pause between two tokens in the cancel run")
	flag.DurationVar(&o.cancelGap, "cancel-gap", 10*time.Millisecond, "the pause after each cancel")
	flag.DurationVar(&o.cancelTime, "cancel-time", 15*time.Second, "the longest the cancel run of a path lasts")
	flag.DurationVar(&o.quietWait, "quiet-wait", time.Minute, "before each measured run, wait while other processes keep a CPU busy, up to 20s at a time and this long in all (0: never wait)")
	flag.BoolVar(&o.quick, "quick", false, "a short run (about 30 s): fewer chats and cancels, 1.5 s throughput runs, no waiting for a quiet machine (flags given explicitly win)")
	flag.DurationVar(&o.timeout, "timeout", 8*time.Minute, "give up after this long")
	flag.StringVar(&o.out, "out", "", "also write the results, as markdown, to this file")
	flag.Parse()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "openai:", err)
		os.Exit(1)
	}
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected argument %q", flag.Arg(0)))
	}
	if o.quick {
		set := map[string]bool{}
		flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
		quick := map[string]string{
			"duration": "1500ms", "warmup": "500ms",
			"ttft-chats": "300", "ttft-time": "1500ms",
			"cancels": "50", "cancel-time": "3s",
			"quiet-wait": "0s",
		}
		for name, v := range quick {
			if !set[name] {
				_ = flag.Set(name, v)
			}
		}
	}
	switch {
	case o.tokens < 1 || o.tokens > 100_000:
		fail(errors.New("-tokens must be from 1 to 100000"))
	case o.delay < 0 || o.delay > time.Second || o.cancelDelay <= 0 || o.cancelDelay > time.Second:
		fail(errors.New("-delay must be in [0, 1s] and -cancel-delay in (0, 1s]"))
	case o.streams < 1 || o.streams > 4096:
		fail(errors.New("-streams must be from 1 to 4096"))
	case o.duration <= 0 || o.duration > 5*time.Minute || o.warmup < 0 || o.warmup > time.Minute:
		fail(errors.New("-duration must be in (0, 5m] and -warmup in [0, 1m]"))
	case o.ttftChats < 1 || o.ttftTime <= 0 || o.ttftTime > 5*time.Minute:
		fail(errors.New("-ttft-chats must be at least 1 and -ttft-time in (0, 5m]"))
	case o.pacedDelay <= 0 || o.pacedDelay > time.Second || o.quietWait < 0 || o.quietWait > 10*time.Minute:
		fail(errors.New("-paced-delay must be in (0, 1s] and -quiet-wait in [0, 10m]"))
	case o.ttftPause < 0 || o.ttftPause > time.Second || o.rounds < 1 || o.rounds > 10:
		fail(errors.New("-ttft-pause must be in [0, 1s] and -rounds from 1 to 10"))
	case o.cancels < 1 || o.cancelGap < 0 || o.cancelTime <= 0 || o.cancelTime > 5*time.Minute:
		fail(errors.New("-cancels must be at least 1, -cancel-gap at least 0 and -cancel-time in (0, 5m]"))
	}

	taskset, err := exec.LookPath("taskset")
	if err != nil {
		fail(errors.New("taskset is not on PATH; it pins the proxies and the load to separate CPUs: install util-linux (apt-get install util-linux)"))
	}
	if os.Getenv(pinnedEnv) == "" {
		fail(reexecPinned(taskset))
	}
	if err := checkPinned(); err != nil {
		fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	err = run(ctx, o, taskset)
	cancel()
	stop()
	if err != nil {
		fail(err)
	}
}

// reexecPinned replaces the process with itself under taskset -c loadCPU.
// taskset pins before exec, so every thread of the runtime inherits it,
// and the runtime sizes GOMAXPROCS to it.
func reexecPinned(taskset string) error {
	if runtime.NumCPU() < 2 {
		return fmt.Errorf("need at least 2 CPUs (one for the proxy, one for the client and upstream); this process may use %d", runtime.NumCPU())
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := append([]string{"taskset", "-c", loadCPU, self}, os.Args[1:]...)
	env := append(os.Environ(), pinnedEnv+"=1")
	return fmt.Errorf("re-executing under taskset: %w", syscall.Exec(taskset, args, env))
}

// checkPinned makes sure the re-executed process runs on loadCPU alone.
func checkPinned() error {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			if got := strings.TrimSpace(rest); got != loadCPU {
				return fmt.Errorf("the harness runs on CPUs %s, want only %s", got, loadCPU)
			}
			return nil
		}
	}
	return errors.New("/proc/self/status has no Cpus_allowed_list")
}

// bench holds what every scenario needs.
type bench struct {
	o              options
	taskset        string
	tmp            string
	upstream       *process
	upBase, upHost string // http://127.0.0.1:PORT and 127.0.0.1:PORT
	rep            *report
	quietLeft      time.Duration // what is left of o.quietWait
}

func run(ctx context.Context, o options, taskset string) error {
	began := time.Now()
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "troupe-openai-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.troupe == "" {
		fmt.Fprintln(os.Stderr, "building troupe...")
		if o.troupe, err = build(ctx, root, tmp, "./cmd/troupe", "troupe"); err != nil {
			return err
		}
	}
	if o.nginx, err = findNginx(ctx, o.nginx); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	up, err := startUpstream(ctx, self, o.tokens, o.delay)
	if err != nil {
		return err
	}
	defer up.stop()

	b := &bench{o: o, taskset: taskset, tmp: tmp, upstream: up, upBase: up.found, upHost: strings.TrimPrefix(up.found, "http://"), quietLeft: o.quietWait}
	b.rep = &report{
		machine: proc.MachineFacts(goVersion(o.troupe)),
		nginx:   nginxVersion(o.nginx),
		command: "go run ./bench/openai " + strings.Join(os.Args[1:], " "),
		o:       o,
	}
	if err := b.measureAll(ctx); err != nil {
		return err
	}
	b.rep.took = time.Since(began)
	b.rep.waited = o.quietWait - b.quietLeft

	md := b.rep.markdown()
	fmt.Print(md)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// The three paths, in the order they are measured.
var pathNames = []string{"direct", "nginx", "troupe"}

// target is one path ready for chats.
type target struct {
	name    string
	chatURL string
	proc    *process // the proxy; nil for direct
	cpu     func() (time.Duration, error)
	base    string  // the proxy's base URL
	client  *client // kept-alive connections to chatURL
}

func (t *target) close() {
	if t.client != nil {
		t.client.close()
	}
	if t.proc != nil {
		t.proc.stop()
	}
}

func (t *target) alive() error {
	if t.proc == nil {
		return nil
	}
	return t.proc.alive()
}

// open starts the path's proxy, if it has one, in front of the upstream.
func (b *bench) open(ctx context.Context, name string) (*target, error) {
	t := &target{name: name}
	switch name {
	case "direct":
		t.chatURL = b.upBase + "/v1/chat/completions"
		t.client = newClient(t.chatURL, 2*b.o.streams)
		return t, nil
	case "nginx":
		fmt.Fprintln(os.Stderr, "starting nginx...")
		p, base, err := startNginx(ctx, b.taskset, b.o.nginx, filepath.Join(b.tmp, "nginx"), b.upHost, max(64, b.o.streams))
		if err != nil {
			return nil, err
		}
		t.proc, t.base = p, base
		t.cpu = func() (time.Duration, error) { return treeCPU(p.pid) }
	case "troupe":
		fmt.Fprintln(os.Stderr, "starting troupe...")
		layout := filepath.Join(b.tmp, "layout.yaml")
		if err := os.WriteFile(layout, []byte(troupeLayout(b.upBase+"/v1", max(64, b.o.streams))), 0o644); err != nil {
			return nil, err
		}
		p, err := startTroupe(ctx, b.taskset, b.o.troupe, layout)
		if err != nil {
			return nil, err
		}
		t.proc, t.base = p, p.found
		t.cpu = func() (time.Duration, error) { return proc.CPUTime(p.pid) }
	default:
		return nil, fmt.Errorf("unknown path %q", name)
	}
	t.chatURL = t.base + "/v1/chat/completions"
	t.client = newClient(t.chatURL, 2*b.o.streams)
	return t, nil
}

// pathResult is everything measured on one path.
type pathResult struct {
	name string
	// One chat at a time: with a pause after the first token, and with
	// the throughput run's shape.
	ttft, ttftBurst loadStats
	// For troupe: the mean of troupe_chat_first_chunk_seconds over the
	// ttft run.
	firstChunk time.Duration
	load       loadRun // o.streams at a time
	paced      loadRun // o.streams at a time, tokens o.pacedDelay apart (proxies only)
	// Connections the upstream accepted over the ttft run.
	ttftConns int64
	cancel    cancelStats
}

// loadRun is one measured throughput run.
type loadRun struct {
	loadStats
	// The proxy's CPU; the client's (this process) and the upstream's;
	// what other processes took on each CPU.
	proxyCPU, clientCPU, upstreamCPU time.Duration
	others0, others1                 time.Duration
	upstreamRequests                 int64
	direct                           bool // no proxy: CPU 0 plays no part
}

// disturbed is the share of the run other processes took on the CPUs the
// path uses.
func (r *loadRun) disturbed() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	others := r.others0 + r.others1
	if r.direct {
		others = r.others1
	}
	return others.Seconds() / r.elapsed.Seconds()
}

// measureAll runs every scenario. The proxies run side by side, all
// idle but the one measured; the one-chat-at-a-time scenarios (time to
// first token, cancels) take turns between the paths in short blocks, so
// that a burst of other work on the machine, or a drift, falls on every
// path alike. The throughput runs, which load a path fully, run one path
// after the other.
func (b *bench) measureAll(ctx context.Context) error {
	var ts []*target
	defer func() {
		for _, t := range ts {
			t.close()
		}
	}()
	for _, name := range pathNames {
		t, err := b.open(ctx, name)
		if err != nil {
			return err
		}
		ts = append(ts, t)
	}
	res := make([]pathResult, len(ts))
	for i, t := range ts {
		res[i].name = t.name
	}
	stream := newSpec(shape{n: b.o.tokens, delay: b.o.delay})
	paused := newSpec(shape{n: b.o.tokens, delay: b.o.delay, pause: max(b.o.ttftPause, b.o.delay)})

	fmt.Fprintln(os.Stderr, "time to first token, paths taking turns")
	for _, t := range ts {
		if err := warm(ctx, t.client, stream, 1, min(b.o.warmup, time.Second), max(1, b.o.ttftChats/5), t.name); err != nil {
			return err
		}
	}
	b.waitQuiet(ctx)
	tr := ts[len(ts)-1] // troupe
	fc0, err := metricMean(tr.base, firstChunkMetric)
	if err != nil {
		return err
	}
	stats, conns, err := b.turns(ctx, ts, paused, b.o.ttftChats, time.Duration(len(ts))*b.o.ttftTime)
	if err != nil {
		return err
	}
	fc1, err := metricMean(tr.base, firstChunkMetric)
	if err != nil {
		return err
	}
	res[len(ts)-1].firstChunk = fc1.since(fc0)
	for i := range ts {
		res[i].ttft, res[i].ttftConns = stats[i], conns[i]
	}
	if stats, _, err = b.turns(ctx, ts, stream, max(1, b.o.ttftChats/2), time.Duration(len(ts))*b.o.ttftTime/2); err != nil {
		return err
	}
	for i := range ts {
		res[i].ttftBurst = stats[i]
	}

	for i, t := range ts {
		fmt.Fprintf(os.Stderr, "%s: %d streams\n", t.name, b.o.streams)
		if err := warm(ctx, t.client, stream, b.o.streams, b.o.warmup, 0, t.name); err != nil {
			return err
		}
		for round := range b.o.rounds {
			b.waitQuiet(ctx)
			lr, err := b.loadOnce(ctx, t, stream)
			if err != nil {
				return err
			}
			if round == 0 || lr.disturbed() < res[i].load.disturbed() {
				res[i].load = lr
			}
		}
		if t.proc == nil {
			continue
		}
		fmt.Fprintf(os.Stderr, "%s: %d paced streams\n", t.name, b.o.streams)
		paced := newSpec(shape{n: b.o.tokens, delay: b.o.pacedDelay})
		if err := warm(ctx, t.client, paced, b.o.streams, min(b.o.warmup, time.Second), 0, t.name); err != nil {
			return err
		}
		b.waitQuiet(ctx)
		if res[i].paced, err = b.loadOnce(ctx, t, paced); err != nil {
			return err
		}
		if err := t.alive(); err != nil {
			return err
		}
		// Close the many connections before the next path's runs.
		t.client.close()
	}

	fmt.Fprintln(os.Stderr, "cancels, paths taking turns")
	cs, err := b.cancels(ctx, ts)
	if err != nil {
		return err
	}
	for i, t := range ts {
		res[i].cancel = cs[i]
		if err := t.alive(); err != nil {
			return err
		}
	}
	b.rep.paths = res
	return b.upstream.alive()
}

// turnBlocks is how many blocks each path's share of a one-at-a-time
// scenario is cut into, at most.
const turnBlocks = 20

// turns runs chats of sp one at a time on each target, the targets taking
// turns in blocks, until each has had chats or budget has passed. It also
// returns the connections the upstream accepted during each path's blocks.
func (b *bench) turns(ctx context.Context, ts []*target, sp *spec, chats int, budget time.Duration) ([]loadStats, []int64, error) {
	out := make([]loadStats, len(ts))
	conns := make([]int64, len(ts))
	block := max(1, (chats+turnBlocks-1)/turnBlocks)
	end := time.Now().Add(budget)
	for more := true; more && time.Now().Before(end); {
		more = false
		for i, t := range ts {
			n := min(block, chats-out[i].ok-out[i].errs)
			if n <= 0 {
				continue
			}
			s0, err := stats(b.upBase)
			if err != nil {
				return nil, nil, err
			}
			st := closedLoop(ctx, t.client, sp, 1, time.Until(end), n)
			s1, err := stats(b.upBase)
			if err != nil {
				return nil, nil, err
			}
			// The second stats request's own connection is counted.
			conns[i] += s1.Conns - s0.Conns - 1
			out[i].add(st)
			more = more || out[i].ok+out[i].errs < chats
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
		}
	}
	for i := range out {
		slices.Sort(out[i].ttfts)
		slices.Sort(out[i].totals)
	}
	return out, conns, nil
}

// loadOnce runs o.streams chats at a time for o.duration and reads every
// process's CPU around it.
func (b *bench) loadOnce(ctx context.Context, t *target, sp *spec) (loadRun, error) {
	r := loadRun{direct: t.proc == nil}
	type sample struct {
		proxy, client, upstream, busy0, busy1 time.Duration
		st                                    upstreamStats
	}
	read := func() (s sample, err error) {
		var errs [5]error
		if t.cpu != nil {
			s.proxy, errs[0] = t.cpu()
		}
		s.client = selfCPU()
		s.upstream, errs[1] = proc.CPUTime(b.upstream.pid)
		s.busy0, errs[2] = proc.CPUBusy(proxyCPU)
		s.busy1, errs[3] = proc.CPUBusy(loadCPU)
		s.st, errs[4] = stats(b.upBase)
		return s, errors.Join(errs[:]...)
	}
	s0, err := read()
	if err != nil {
		return r, err
	}
	r.loadStats = closedLoop(ctx, t.client, sp, b.o.streams, b.o.duration, 0)
	s1, err := read()
	if err != nil {
		return r, err
	}
	r.proxyCPU = s1.proxy - s0.proxy
	r.clientCPU = s1.client - s0.client
	r.upstreamCPU = s1.upstream - s0.upstream
	// /proc/stat and /proc/PID/stat count in 10 ms ticks; a small
	// negative difference is rounding.
	r.others0 = max(0, s1.busy0-s0.busy0-r.proxyCPU)
	r.others1 = max(0, s1.busy1-s0.busy1-r.clientCPU-r.upstreamCPU)
	r.upstreamRequests = s1.st.Requests - s0.st.Requests
	return r, ctx.Err()
}

// selfCPU returns the CPU the harness has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// warm runs a closed loop that must not fail: an error there is a broken
// path, not a measurement.
func warm(ctx context.Context, c *client, sp *spec, streams int, dur time.Duration, limit int, name string) error {
	st := closedLoop(ctx, c, sp, streams, max(dur, 100*time.Millisecond), limit)
	if err := ctx.Err(); err != nil {
		return err
	}
	if st.errs > 0 {
		return fmt.Errorf("%s: %d of %d warm-up chats failed, the first: %w", name, st.errs, st.errs+st.ok, st.firstErr)
	}
	return nil
}

// cancels measures how fast a cancel at the first token reaches the
// upstream on each path, the paths taking turns in blocks.
func (b *bench) cancels(ctx context.Context, ts []*target) ([]cancelStats, error) {
	sp := newSpec(shape{n: cancelTokens, delay: b.o.cancelDelay})
	out := make([]cancelStats, len(ts))
	cs := make([]*client, len(ts))
	for i, t := range ts {
		cs[i] = newClient(t.chatURL, 4)
		defer cs[i].close()
		// Warm-up cancels, uncounted: the first connections; the node's
		// metrics are read after them.
		ws, err := cancelRun(ctx, cs[i], sp, b.upBase, t.name, 0, cancelWarm, b.o.cancelGap, b.o.cancelTime)
		if err != nil {
			return nil, err
		}
		if ws.errs > 0 {
			return nil, fmt.Errorf("%s: %d of %d warm-up cancels failed, the first: %w", t.name, ws.errs, cancelWarm, ws.firstErr)
		}
	}
	tr := ts[len(ts)-1]
	if err := waitMetric(ctx, tr.base, cancelWarm); err != nil {
		return nil, err
	}
	m0, err := metricMean(tr.base, cancelMetric)
	if err != nil {
		return nil, err
	}
	b.waitQuiet(ctx)
	block := max(1, (b.o.cancels+turnBlocks-1)/turnBlocks)
	end := time.Now().Add(time.Duration(len(ts)) * b.o.cancelTime)
	for more := true; more && time.Now().Before(end); {
		more = false
		for i, t := range ts {
			done := out[i].cancelled + out[i].errs // cancelled counts the missed
			n := min(block, b.o.cancels-done)
			if n <= 0 {
				continue
			}
			st, err := cancelRun(ctx, cs[i], sp, b.upBase, t.name, n, 0, b.o.cancelGap, time.Until(end))
			if err != nil {
				return nil, err
			}
			out[i].add(st)
			more = more || done+n < b.o.cancels
		}
	}
	for i := range out {
		slices.Sort(out[i].lags)
	}
	last := &out[len(out)-1]
	if err := waitMetric(ctx, tr.base, int(m0.count)+last.cancelled); err != nil {
		fmt.Fprintln(os.Stderr, "  warning:", err)
	}
	m1, err := metricMean(tr.base, cancelMetric)
	if err != nil {
		return nil, err
	}
	last.metricCount = int(m1.count - m0.count)
	last.metricSum = m1.sum - m0.sum
	return out, nil
}

// histogram is a node histogram's count and sum, over all its series.
type histogram struct{ count, sum float64 }

// since is the mean of what was observed between h0 and h.
func (h histogram) since(h0 histogram) time.Duration {
	if h.count <= h0.count {
		return 0
	}
	return time.Duration((h.sum - h0.sum) / (h.count - h0.count) * float64(time.Second))
}

func metricMean(base, name string) (histogram, error) {
	n, err1 := metricSum(base, name+"_count")
	sum, err2 := metricSum(base, name+"_sum")
	if err := errors.Join(err1, err2); err != nil {
		return histogram{}, fmt.Errorf("troupe /metrics: %w", err)
	}
	return histogram{n, sum}, nil
}

// firstChunkMetric is the node's histogram of the time from a chat's
// admission to its first chunk from the model.
const firstChunkMetric = "troupe_chat_first_chunk_seconds"

// quietBusy is the share of a CPU other processes may take for the
// machine to count as quiet.
const quietBusy = 0.05

// waitQuiet waits until neither CPU is busy with other work (between runs
// nothing of the benchmark's runs): on a shared machine, a test suite
// someone started would otherwise be measured too. It waits at most
// maxQuietWait at a time, and o.quietWait over the whole run.
func (b *bench) waitQuiet(ctx context.Context) {
	const maxQuietWait = 20 * time.Second
	const window = 500 * time.Millisecond
	quietWait := min(maxQuietWait, b.quietLeft)
	if quietWait <= 0 {
		return
	}
	began := time.Now()
	defer func() { b.quietLeft -= time.Since(began) }()
	deadline := began.Add(quietWait)
	said := false
	for {
		a0, err1 := proc.CPUBusy(proxyCPU)
		b0, err2 := proc.CPUBusy(loadCPU)
		if sleep(ctx, window) != nil || errors.Join(err1, err2) != nil {
			return
		}
		a1, _ := proc.CPUBusy(proxyCPU)
		b1, _ := proc.CPUBusy(loadCPU)
		busy := max(a1-a0, b1-b0)
		if busy.Seconds() <= quietBusy*window.Seconds() {
			return
		}
		if !time.Now().Before(deadline) {
			fmt.Fprintf(os.Stderr, "  the machine is still busy after %v (%.0f%% of a CPU); measuring anyway\n", time.Since(began).Round(time.Second), 100*busy.Seconds()/window.Seconds())
			return
		}
		if !said {
			fmt.Fprintf(os.Stderr, "  other processes are using %.0f%% of a CPU; waiting up to %v for them\n", 100*busy.Seconds()/window.Seconds(), quietWait.Round(time.Second))
			said = true
		}
	}
}

// cancelMetric is the node's histogram of the time from a chat's cancel to
// its model's generation returning.
const cancelMetric = "troupe_model_cancel_seconds"

// waitMetric waits (up to a second) until the node has counted want
// cancels.
func waitMetric(ctx context.Context, base string, want int) error {
	deadline := time.Now().Add(time.Second)
	for {
		n, err := metricSum(base, cancelMetric+"_count")
		if err == nil && int(n) >= want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("troupe counted %v cancels in %s, want %d (%v)", n, cancelMetric, want, err)
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
}

func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the troupe module (go run ./bench/openai)")
	}
	return filepath.Dir(mod), nil
}

// build compiles a main package of the module at root into dir.
func build(ctx context.Context, root, dir, pkg, name string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("the go command is not on PATH; pass -troupe with a built binary instead")
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}

// goVersion is the Go version a binary was built with.
func goVersion(bin string) string {
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		return bi.GoVersion
	}
	return runtime.Version()
}
