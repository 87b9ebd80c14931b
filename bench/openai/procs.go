package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
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

// The proxies run on proxyCPU, alone; the harness (the client) and the
// upstream share loadCPU. Every path's client and upstream do the same
// work, so the CPU they share costs every path alike, and the proxy's CPU
// is its own.
const (
	proxyCPU = "0"
	loadCPU  = "1"
)

// startTimeout bounds how long a process may take to start serving.
const startTimeout = 30 * time.Second

// stopTimeout bounds a graceful stop before the process is killed.
const stopTimeout = 10 * time.Second

// process is one process the harness started.
type process struct {
	name   string
	pid    int
	cmd    *exec.Cmd
	out    *tailBuffer
	exited chan struct{}
	err    error // cmd.Wait's; read only after exited is closed
	found  string
}

// start runs argv with env and, when pattern is set, waits until the
// process prints a line that matches it; found is the match's group.
func start(ctx context.Context, name string, argv, env []string, pattern *regexp.Regexp) (*process, error) {
	out := &tailBuffer{max: 64 << 10}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stderr = out
	var watcher *proc.Watcher
	if pattern != nil {
		watcher = proc.NewWatcher(out, pattern)
		cmd.Stdout = watcher
	} else {
		cmd.Stdout = out
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group, so that a Ctrl-C reaches only the
		// harness, which then stops it in order; the death signal covers
		// a harness that dies without cleaning up.
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &process{name: name, pid: cmd.Process.Pid, cmd: cmd, out: out, exited: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	if watcher == nil {
		return p, nil
	}
	timer := time.NewTimer(startTimeout)
	defer timer.Stop()
	select {
	case p.found = <-watcher.Found():
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("%s exited before serving (%v); its output:\n%s", name, p.err, out.String())
	case <-timer.C:
		p.stop()
		return nil, fmt.Errorf("%s did not start within %v; its output:\n%s", name, startTimeout, out.String())
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	}
}

// alive reports an error if the process has exited.
func (p *process) alive() error {
	select {
	case <-p.exited:
		return fmt.Errorf("%s exited during the run (%v); its output:\n%s", p.name, p.err, p.out.String())
	default:
		return nil
	}
}

// stop asks the process to end (SIGTERM), kills its process group if it
// does not, and waits for it. It is safe to call more than once.
func (p *process) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.exited
	}
}

// tailBuffer keeps the last max bytes written to it.
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

// baseEnv is the whole environment of the processes under test: nothing
// from the harness's (a proxy setting, API_KEYS or PORT would change what
// is measured) but PATH.
func baseEnv(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH")}, extra...)
}

var upstreamLine = regexp.MustCompile(`serving on (http://[0-9.]+:[0-9]+)/v1`)

// startUpstream runs the harness itself as the upstream, on loadCPU (the
// harness's CPU, which it inherits).
func startUpstream(ctx context.Context, self string, tokens int, delay time.Duration) (*process, error) {
	argv := []string{self, "upstream", "-tokens", strconv.Itoa(tokens), "-delay", delay.String()}
	return start(ctx, "upstream", argv, baseEnv("GOMAXPROCS=1"), upstreamLine)
}

var troupeLine = regexp.MustCompile(`serving .* on (http://[0-9.]+:[0-9]+)/`)

// modelName is the model the client asks for: Troupe's LLM name, and the
// model the openai kind asks the upstream for.
const modelName = "m"

// troupeLayout is a layout of the openai kind alone, forwarding to base.
func troupeLayout(base string, concurrency int) string {
	return fmt.Sprintf(`version: 1
llm:
  class: openai
  args: {base_url: %q, model: %q, concurrency: %d}
`, base, modelName, concurrency)
}

// startTroupe runs a node with the layout, pinned to proxyCPU with one P.
func startTroupe(ctx context.Context, taskset, bin, layout string) (*process, error) {
	argv := []string{taskset, "-c", proxyCPU, bin,
		"-layout", layout, "-llm-name", modelName,
		"-port", "0", "-gossip-port", "0", "-remote-port", "0",
		"-public-address", "127.0.0.1", "-bind-address", "127.0.0.1",
		"-ignore-agent", "-drain-timeout", "1s"}
	p, err := start(ctx, "troupe", argv, baseEnv("GOMAXPROCS=1"), troupeLine)
	if err != nil && strings.Contains(err.Error(), `"openai"`) {
		err = fmt.Errorf("%w\nthis troupe has no openai model kind: cmd/troupe must import github.com/troupe-llm/troupe/actors/openai", err)
	}
	return p, err
}

// freePort returns a loopback port nothing listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// nginxConf is a plain streaming reverse proxy in front of upstream
// (host:port): no buffering either way, HTTP/1.1 with a pool of kept-alive
// connections to the upstream, one worker, no access log.
func nginxConf(dir string, port int, upstream string, conns int) string {
	return fmt.Sprintf(`worker_processes 1;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events {
    worker_connections 4096;
}
http {
    access_log off;
    client_body_temp_path %[1]s/client_body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    keepalive_requests 1000000;
    upstream llm {
        server %[3]s;
        keepalive %[4]d;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:%[2]d;
        location / {
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
`, dir, port, upstream, conns)
}

// startNginx runs nginx with one worker in front of upstream (host:port),
// pinned to proxyCPU, and waits until it accepts connections.
func startNginx(ctx context.Context, taskset, bin, dir, upstream string, conns int) (*process, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, []byte(nginxConf(dir, port, upstream, conns)), 0o644); err != nil {
		return nil, "", err
	}
	argv := []string{taskset, "-c", proxyCPU, bin, "-p", dir, "-c", conf, "-e", filepath.Join(dir, "error.log")}
	p, err := start(ctx, "nginx", argv, baseEnv(), nil)
	if err != nil {
		return nil, "", err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if err := p.alive(); err != nil {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			return nil, "", fmt.Errorf("%w\nerror.log:\n%s", err, log)
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, "", fmt.Errorf("nginx did not listen on %s within %v", addr, startTimeout)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			p.stop()
			return nil, "", err
		}
	}
	// The master forks its worker before it listens; wait for the worker
	// too, so that the CPU read later counts it.
	for len(children(p.pid)) == 0 {
		if time.Now().After(deadline) {
			p.stop()
			return nil, "", errors.New("nginx started no worker process")
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			p.stop()
			return nil, "", err
		}
	}
	return p, "http://" + addr, nil
}

// children lists a process's child processes.
func children(pid int) []int {
	var out []int
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid)); err == nil {
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
		return out
	}
	// Without CONFIG_PROC_CHILDREN: every process's parent, from its stat.
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", n))
		if err != nil {
			continue
		}
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i >= 0 {
			if f := strings.Fields(s[i+1:]); len(f) > 1 && f[1] == strconv.Itoa(pid) {
				out = append(out, n)
			}
		}
	}
	return out
}

// treeCPU is the CPU a process and its children (nginx's master and
// workers) have used.
func treeCPU(pid int) (time.Duration, error) {
	sum, err := proc.CPUTime(pid)
	if err != nil {
		return 0, err
	}
	for _, c := range children(pid) {
		d, err := proc.CPUTime(c)
		if err != nil {
			return 0, err
		}
		sum += d
	}
	return sum, nil
}

// findNginx returns the nginx binary: the one given, else the one on PATH
// or in /usr/sbin, else, as root on Debian, the nginx package installed
// with apt-get.
func findNginx(ctx context.Context, given string) (string, error) {
	if given != "" {
		return given, nil
	}
	look := func() string {
		if p, err := exec.LookPath("nginx"); err == nil {
			return p
		}
		if st, err := os.Stat("/usr/sbin/nginx"); err == nil && st.Mode()&0o111 != 0 {
			return "/usr/sbin/nginx"
		}
		return ""
	}
	if p := look(); p != "" {
		return p, nil
	}
	missing := errors.New("nginx is not installed: install Debian's nginx-light or nginx package (apt-get install nginx-light), or pass -nginx with a binary")
	apt, err := exec.LookPath("apt-get")
	if err != nil || os.Geteuid() != 0 {
		return "", missing
	}
	install := func(args ...string) error {
		fmt.Fprintf(os.Stderr, "nginx is missing: apt-get %s\n", strings.Join(args, " "))
		cmd := exec.CommandContext(ctx, apt, args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	pkg := []string{"install", "-y", "-q", "--no-install-recommends", "nginx"}
	if err := install(pkg...); err != nil {
		// The package lists may be missing or stale.
		if err := install("update", "-q"); err != nil {
			return "", fmt.Errorf("%w (apt-get update: %v)", missing, err)
		}
		if err := install(pkg...); err != nil {
			return "", fmt.Errorf("%w (apt-get install: %v)", missing, err)
		}
	}
	if p := look(); p != "" {
		return p, nil
	}
	return "", missing
}

// nginxVersion is what nginx -v says, such as "nginx/1.22.1".
func nginxVersion(bin string) string {
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	s := bufio.NewScanner(strings.NewReader(string(out)))
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "nginx version: "); ok {
			return v
		}
	}
	return "nginx"
}

// metricSum adds up the value of every series of a metric family member
// (such as troupe_model_cancel_seconds_count, any labels) in the node's
// /metrics.
func metricSum(base, name string) (float64, error) {
	resp, err := scrapeClient.Get(base + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var sum float64
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
		if len(f) == 0 {
			continue
		}
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			sum += v
		}
	}
	return sum, s.Err()
}
