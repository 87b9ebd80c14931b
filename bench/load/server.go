package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
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

// serverCPU is the CPU the servers are pinned to; the load generator runs
// on loadCPU, so that neither steals cycles from the other.
const (
	serverCPU = "0"
	loadCPU   = "1"
)

// startTimeout bounds how long a server may take to print its address.
const startTimeout = 30 * time.Second

// stopTimeout bounds a graceful stop before the server is killed.
const stopTimeout = 10 * time.Second

// server is one server process under test, pinned to serverCPU.
type server struct {
	name   string
	pid    int
	url    string
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{}
	err    error // cmd.Wait's; read only after exited is closed
}

// servingLine matches what troupe and bare print once they listen.
var servingLine = regexp.MustCompile(`on (http://\S+/v1/completion)`)

// startServer starts bin under taskset with env added to the environment
// and waits until it prints the URL it serves on.
func startServer(ctx context.Context, name, taskset, bin string, env []string) (*server, error) {
	out := &tailBuffer{max: 64 << 10}
	watcher := proc.NewWatcher(out, servingLine)
	cmd := exec.Command(taskset, "-c", serverCPU, bin)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = watcher
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so that a Ctrl-C reaches only the
		// harness, which then stops the server in order; the death
		// signal covers a harness that dies without cleaning up.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	s := &server{name: name, pid: cmd.Process.Pid, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		s.err = cmd.Wait()
		close(s.exited)
	}()

	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case s.url = <-watcher.Found():
		return s, nil
	case <-s.exited:
		return nil, fmt.Errorf("%s exited before serving (%v); its output:\n%s", name, s.err, out.String())
	case <-timer.C:
		s.stop()
		return nil, fmt.Errorf("%s did not start within %v; its output:\n%s", name, startTimeout, out.String())
	case <-ctx.Done():
		s.stop()
		return nil, ctx.Err()
	}
}

// memoryReleases reads troupe_memory_releases_total from the server's
// /metrics; ok is false for a server without it (bare).
func (s *server) memoryReleases() (n int, ok bool) {
	base, _, _ := strings.Cut(strings.TrimPrefix(s.url, "http://"), "/")
	resp, err := http.Get("http://" + base + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		if v, found := strings.CutPrefix(lines.Text(), "troupe_memory_releases_total "); found {
			f, err := strconv.ParseFloat(v, 64)
			return int(f), err == nil
		}
	}
	return 0, false
}

// alive reports an error if the server has exited.
func (s *server) alive() error {
	select {
	case <-s.exited:
		return fmt.Errorf("%s exited during the run (%v); its output:\n%s", s.name, s.err, s.out.String())
	default:
		return nil
	}
}

// stop asks the server to shut down gracefully, kills it if it does not,
// and waits for it. It is safe to call more than once.
func (s *server) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-s.exited:
	case <-timer.C:
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

// tailBuffer keeps the last max bytes written to it, for error messages
// about a server that a long run would otherwise fill memory with.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// build compiles a main package of the module at root into dir.
func build(ctx context.Context, root, dir, pkg, name string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		return "", errors.New("the go command is not on PATH; pass -troupe and -bare with built binaries instead")
	}
	bin := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, goTool, "build", "-o", bin, pkg)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w\n%s", pkg, err, out)
	}
	return bin, nil
}
