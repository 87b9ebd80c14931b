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
	addr   string // host:port
	base   string // http://host:port
	out    *output
	exited chan struct{}
}

var servingLine = regexp.MustCompile(`on (http://\S+)/v1/completion`)

// startNode starts troupe on nodeCPU (when taskset is there) with
// GOMAXPROCS=1 and its default limits unless -env says otherwise, and
// waits until it serves.
func startNode(ctx context.Context, o options, taskset, layout string) (*node, error) {
	args := []string{o.node}
	if taskset != "" && os.Getenv(pinnedEnv) != "" {
		args = []string{taskset, "-c", nodeCPU, o.node}
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"GOMAXPROCS=1",
		"IGNORE_AGENT=1",
		"PORT=0", "GOSSIP_PORT=0", "REMOTE_PORT=0",
		"PUBLIC_ADDRESS=127.0.0.1", "BIND_ADDRESS=127.0.0.1",
		"LLM_NAME=slowclients",
		"LAYOUT_CONFIG=" + layout,
		"DRAIN_TIMEOUT=1s",
	}, o.env...)
	out := &output{}
	watcher := proc.NewWatcher(out, servingLine)
	cmd.Stdout, cmd.Stderr = watcher, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &node{pid: cmd.Process.Pid, out: out, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.exited)
	}()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case base := <-watcher.Found():
		n.base = base
		n.addr = strings.TrimPrefix(base, "http://")
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

// scrapeClient has a connection of its own, kept alive: at the limit it
// is one of the node's connections like the others.
var scrapeClient = &http.Client{Timeout: 10 * time.Second}

// series is what the node says of itself on /metrics, by series as
// written there (name and labels).
type series map[string]float64

// scrape reads the node's /metrics.
func (n *node) scrape() (series, error) {
	resp, err := scrapeClient.Get(n.base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	s := series{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			s[line[:i]] = v
		}
	}
	return s, sc.Err()
}

// goMemory is the heap in use and the goroutines' stacks.
func (s series) goMemory() float64 {
	return s["go_memstats_heap_inuse_bytes"] + s["go_memstats_stack_inuse_bytes"]
}

func (s series) connections() float64 {
	return s[`troupe_http_connections{state="serving"}`] + s[`troupe_http_connections{state="waiting"}`]
}

func (s series) limit(name string) float64 { return s[`troupe_limit_hits_total{limit="`+name+`"}`] }

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
