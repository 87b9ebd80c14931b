package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// node is the node process under test.
type node struct {
	pid    int
	url    string // the chat endpoint
	base   string // http://host:port
	cmd    *exec.Cmd
	out    *output
	exited chan struct{}
}

var servingLine = regexp.MustCompile(`on (http://\S+)(/v1/completion)`)

// startNode starts the node on nodeCPU (when taskset is there) with
// GOMAXPROCS=1, and waits until it serves.
func startNode(ctx context.Context, o options, taskset, layout string, chatTimeout time.Duration) (*node, error) {
	args := []string{o.node}
	if taskset != "" && os.Getenv(pinnedEnv) != "" {
		args = []string{taskset, "-c", nodeCPU, o.node}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"GOMAXPROCS=1",
		"IGNORE_AGENT=1",
		"PORT=0", "GOSSIP_PORT=0", "REMOTE_PORT=0",
		"PUBLIC_ADDRESS=127.0.0.1", "BIND_ADDRESS=127.0.0.1",
		"LLM_NAME=streams",
		"LAYOUT_CONFIG=" + layout,
		"CHAT_TIMEOUT=" + chatTimeout.String(),
		// Every stream is a connection, and so is a scrape of /metrics.
		"MAX_CONNECTIONS=" + strconv.Itoa(o.streams+1024),
		"DRAIN_TIMEOUT=1s",
	}
	out := &output{}
	watcher := proc.NewWatcher(out, servingLine)
	cmd.Stdout, cmd.Stderr = watcher, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &node{pid: cmd.Process.Pid, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.exited)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case base := <-watcher.Found():
		n.base = base
		n.url = base + "/v1/completion"
		return n, nil
	case <-n.exited:
		return nil, fmt.Errorf("the node exited before serving; its output:\n%s", out.tail())
	case <-timer.C:
		n.stop()
		return nil, fmt.Errorf("the node did not serve within 30s; its output:\n%s", out.tail())
	case <-ctx.Done():
		n.stop()
		return nil, ctx.Err()
	}
}

// stop kills the node and waits for it.
func (n *node) stop() {
	_ = syscall.Kill(n.pid, syscall.SIGKILL)
	<-n.exited
}

func (n *node) alive() error {
	select {
	case <-n.exited:
		return fmt.Errorf("the node exited; its output:\n%s", n.out.tail())
	default:
		return nil
	}
}

var scrapeClient = &http.Client{Timeout: 5 * time.Second}

// goStats are the node's own Go runtime figures, from its /metrics.
type goStats struct {
	heapInuse, stackInuse, goroutines, nextGC, gcs float64
}

func (n *node) goStats() (goStats, error) {
	resp, err := scrapeClient.Get(n.base + "/metrics")
	if err != nil {
		return goStats{}, err
	}
	defer resp.Body.Close()
	var st goStats
	want := map[string]*float64{
		"go_memstats_heap_inuse_bytes":  &st.heapInuse,
		"go_memstats_stack_inuse_bytes": &st.stackInuse,
		"go_goroutines":                 &st.goroutines,
		"go_memstats_next_gc_bytes":     &st.nextGC,
		"go_gc_duration_seconds_count":  &st.gcs,
	}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		name, value, ok := strings.Cut(s.Text(), " ")
		if p := want[name]; ok && p != nil {
			if *p, err = strconv.ParseFloat(value, 64); err != nil {
				return goStats{}, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return st, s.Err()
}

// output keeps the node's output, up to 1 MiB.
type output struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.buf.Len() < 1<<20 {
		o.buf.Write(p)
	}
	return len(p), nil
}

func (o *output) tail() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	s := o.buf.String()
	if len(s) > 4096 {
		s = "..." + s[len(s)-4096:]
	}
	return s
}
