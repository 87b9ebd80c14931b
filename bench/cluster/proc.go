package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// startTimeout bounds how long a node may take to print its address.
const startTimeout = 30 * time.Second

// fleet starts troupe nodes as processes on 127.0.0.1 and kills every one
// it started, also when the benchmark fails half-way.
type fleet struct {
	bin  string
	dir  string // layout files
	logs string // where each node's output is saved when it ends, if set

	mu    sync.Mutex
	nodes []*node
	ports map[int]bool // handed out in this run, so no two nodes share one
}

func newFleet(bin, dir, logs string) *fleet {
	return &fleet{bin: bin, dir: dir, logs: logs, ports: map[int]bool{}}
}

// node is one troupe process.
type node struct {
	name   string
	pid    int
	base   string // http://127.0.0.1:PORT
	gossip int
	log    *logBuffer
	exited chan struct{}
}

// nodeSpec says how to start a node. Gossip 0 picks a free port here (not
// in the node), because others need it to join.
type nodeSpec struct {
	name, llm, layout string
	gossip            int
	join              string // gossip address of a member, or empty
}

var servingLine = regexp.MustCompile(`serving .* on (http://[0-9.]+:[0-9]+)/`)

// layout writes a layout file and returns its path.
func (f *fleet) layout(name, content string) (string, error) {
	path := filepath.Join(f.dir, name+".yaml")
	return path, os.WriteFile(path, []byte(content), 0o644)
}

// port returns a loopback port free now on TCP and UDP and never handed
// out before in this run. It is below the kernel's ephemeral range, where
// neither the load generator's connections nor anything listening on port
// 0 can take it between this check and the node's bind.
func (f *fleet) port() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	lo, hi := portRange()
	for range 200 {
		p := lo + rand.IntN(hi-lo)
		if f.ports[p] {
			continue
		}
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(p))
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		f.ports[p] = true
		return p, nil
	}
	return 0, errors.New("no free port on 127.0.0.1")
}

// portRange is up to 10,000 ports just below the ephemeral range.
func portRange() (lo, hi int) {
	hi = 32768 // Linux's default start of the ephemeral range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 2024 {
				hi = n
			}
		}
	}
	return max(1024, hi-10000), hi
}

// start runs a node with exactly the settings it needs (and PATH) and
// waits until it serves.
func (f *fleet) start(ctx context.Context, s nodeSpec) (*node, error) {
	var err error
	if s.gossip == 0 {
		if s.gossip, err = f.port(); err != nil {
			return nil, err
		}
	}
	remotePort, err := f.port()
	if err != nil {
		return nil, err
	}
	httpPort, err := f.port()
	if err != nil {
		return nil, err
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"IGNORE_AGENT=1",
		"PORT=" + strconv.Itoa(httpPort),
		"PUBLIC_ADDRESS=127.0.0.1",
		"BIND_ADDRESS=127.0.0.1",
		"NODE_NAME=" + s.name,
		"LLM_NAME=" + s.llm,
		"LAYOUT_CONFIG=" + s.layout,
		"GOSSIP_PORT=" + strconv.Itoa(s.gossip),
		"REMOTE_PORT=" + strconv.Itoa(remotePort),
		"CHAT_TIMEOUT=60s",
		"DRAIN_TIMEOUT=1s",
	}
	if s.join != "" {
		env = append(env, "JOIN="+s.join)
	}
	cmd := exec.Command(f.bin)
	cmd.Env = env
	n := &node{name: s.name, gossip: s.gossip, log: &logBuffer{max: 8 << 20}, exited: make(chan struct{})}
	watcher := proc.NewWatcher(n.log, servingLine)
	cmd.Stdout = watcher
	cmd.Stderr = n.log
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so a Ctrl-C reaches only the harness,
		// which then kills the nodes; the death signal covers a harness
		// that dies without cleaning up.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	n.pid = cmd.Process.Pid
	f.mu.Lock()
	f.nodes = append(f.nodes, n)
	f.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		if f.logs != "" {
			_ = os.WriteFile(filepath.Join(f.logs, s.name+".log"), []byte(n.log.String()), 0o644)
		}
		close(n.exited)
	}()
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case n.base = <-watcher.Found():
		return n, nil
	case <-n.exited:
		return nil, fmt.Errorf("%s exited before serving; its output:\n%s", s.name, n.log.tail(4<<10))
	case <-timer.C:
		n.kill()
		return nil, fmt.Errorf("%s did not serve within %v; its output:\n%s", s.name, startTimeout, n.log.tail(4<<10))
	case <-ctx.Done():
		n.kill()
		return nil, ctx.Err()
	}
}

// killAll kills every node still running and waits for them.
func (f *fleet) killAll() {
	f.mu.Lock()
	nodes := f.nodes
	f.nodes = nil
	f.mu.Unlock()
	for _, n := range nodes {
		n.kill()
	}
}

func (n *node) gossipAddr() string { return "127.0.0.1:" + strconv.Itoa(n.gossip) }

// signal sends sig to the node, recording when.
func (n *node) signal(sig syscall.Signal) (time.Time, error) {
	at := time.Now()
	return at, syscall.Kill(n.pid, sig)
}

// kill SIGKILLs the node (a stopped one too) and waits for it to exit.
func (n *node) kill() {
	select {
	case <-n.exited:
		return
	default:
	}
	_ = syscall.Kill(n.pid, syscall.SIGKILL)
	select {
	case <-n.exited:
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "warning: %s (pid %d) did not exit after SIGKILL\n", n.name, n.pid)
	}
}

// cpuOf sums the CPU of several nodes.
func cpuOf(nodes ...*node) (time.Duration, error) {
	var sum time.Duration
	for _, n := range nodes {
		d, err := proc.CPUTime(n.pid)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", n.name, err)
		}
		sum += d
	}
	return sum, nil
}

var scrapeClient = &http.Client{Timeout: 2 * time.Second}

// metric returns the value of one series in the node's /metrics, or -1
// when the node does not answer or has no such series.
func (n *node) metric(series string) float64 {
	resp, err := scrapeClient.Get(n.base + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), series+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}

const aliveSeries = `troupe_cluster_members{state="alive"}`

// waitAlive polls until every node sees want members alive (itself
// included), and returns when that was first true.
func waitAlive(ctx context.Context, want int, timeout time.Duration, nodes ...*node) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for _, n := range nodes {
			if n.metric(aliveSeries) != float64(want) {
				all = false
				break
			}
		}
		if all {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			var seen []string
			for _, n := range nodes {
				seen = append(seen, fmt.Sprintf("%s sees %v", n.name, n.metric(aliveSeries)))
			}
			return time.Time{}, fmt.Errorf("nodes did not all see %d alive members within %v (%s)", want, timeout, strings.Join(seen, ", "))
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// logEvent returns when the node first logged a line with msg and the
// given key=value pair at or after since, from the time slog wrote on it.
func (n *node) logEvent(msg, key, value string, since time.Time) (time.Time, bool) {
	wantMsg := `msg="` + msg + `"`
	wantKV := " " + key + "=" + value
	for line := range strings.Lines(n.log.String()) {
		if !strings.Contains(line, wantMsg) || !strings.Contains(line, wantKV) {
			continue
		}
		ts, ok := strings.CutPrefix(line, "time=")
		if !ok {
			continue
		}
		ts, _, _ = strings.Cut(ts, " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		// slog writes milliseconds: a line from the same millisecond as
		// since counts.
		if err == nil && !at.Before(since.Truncate(time.Millisecond)) {
			return at, true
		}
	}
	return time.Time{}, false
}

// logBuffer keeps a node's output, up to max bytes.
type logBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.buf.Len()+len(p) <= b.max {
		b.buf.Write(p)
	}
	return len(p), nil
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) tail(n int) string {
	s := b.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
