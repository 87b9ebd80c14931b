package proc

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// Node is a troupe process a benchmark measures.
type Node struct {
	Pid  int
	Base string // http://host:port, once it serves

	out    *output
	exited chan struct{}
}

var servingLine = regexp.MustCompile(`on (http://\S+)/v1/completion`)

// serveTimeout bounds how long a node may take to serve.
const serveTimeout = 30 * time.Second

// StartNode runs args (the node, or taskset and the node) with exactly
// env, in a process group of its own that dies with the benchmark, and
// waits until the node says it serves.
func StartNode(ctx context.Context, args, env []string) (*Node, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = env
	out := &output{}
	watcher := NewWatcher(out, servingLine)
	cmd.Stdout, cmd.Stderr = watcher, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	n := &Node{Pid: cmd.Process.Pid, out: out, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.exited)
	}()
	timer := time.NewTimer(serveTimeout)
	defer timer.Stop()
	select {
	case n.Base = <-watcher.Found():
		return n, nil
	case <-n.exited:
		return nil, fmt.Errorf("the node exited before serving; its output:\n%s", out.tail())
	case <-timer.C:
		n.Stop()
		return nil, fmt.Errorf("the node did not serve within %v; its output:\n%s", serveTimeout, out.tail())
	case <-ctx.Done():
		n.Stop()
		return nil, ctx.Err()
	}
}

// Stop kills the node and waits for it.
func (n *Node) Stop() {
	_ = syscall.Kill(n.Pid, syscall.SIGKILL)
	<-n.exited
}

// Alive reports an error, with the node's last output, once it exited.
func (n *Node) Alive() error {
	select {
	case <-n.exited:
		return fmt.Errorf("the node exited; its output:\n%s", n.out.tail())
	default:
		return nil
	}
}

// output keeps a node's output, up to 1 MiB.
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
