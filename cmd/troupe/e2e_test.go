package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/app"
	"github.com/troupe-llm/troupe/internal/agenttest"
	"github.com/troupe-llm/troupe/internal/covertest"
	"github.com/troupe-llm/troupe/internal/leaktest"
)

// binary is the troupe command under test, built once by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "troupe-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "troupe")
	var flags []string
	if raceEnabled {
		flags = append(flags, "-race")
	}
	if out, err := covertest.Build(binary, ".", flags...); err != nil {
		fmt.Fprintf(os.Stderr, "building troupe: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	if code == 0 {
		if err := leaktest.Check(10 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// process is a troupe node running as a real process.
type process struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string // host:port it listens on
	stderr *syncBuffer
	exited chan error    // receives Wait's result once; see stop
	done   chan struct{} // closed when the process has exited
}

var listening = regexp.MustCompile(`serving .* on http://([0-9.:]+)/`)

// startProcess runs the binary with exactly the given environment (plus
// PATH) and waits until it listens.
func startProcess(t *testing.T, env map[string]string, args ...string) *process {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, cmd: cmd, stderr: &syncBuffer{}, exited: make(chan error, 1), done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go func() {
		s := bufio.NewScanner(stdout)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	go func() {
		err := cmd.Wait()
		close(p.done)
		p.exited <- err
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.halt()
		}
		if t.Failed() {
			t.Logf("node stderr:\n%s", p.stderr.String())
		}
	})
	deadline := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("node exited before listening; stderr:\n%s", p.stderr.String())
			}
			if m := listening.FindStringSubmatch(line); m != nil {
				p.addr = m[1]
				return p
			}
		case <-deadline:
			t.Fatalf("node did not start listening; stderr:\n%s", p.stderr.String())
		}
	}
}

// stop sends a signal and waits for the process to exit, returning its
// exit code.
func (p *process) stop(sig os.Signal) int {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			p.t.Fatal(err)
		}
		return 0
	case <-time.After(30 * time.Second):
		p.t.Fatal("node did not exit after the signal")
		return -1
	}
}

// halt ends a process the test left running. A killed process writes no
// coverage counters, so in a coverage run it is first asked to shut down,
// and given the time a drain, a leave and closing HTTP take by default.
func (p *process) halt() {
	if covertest.Enabled() && p.cmd.Process.Signal(syscall.SIGTERM) == nil {
		select {
		case <-p.done:
			return
		case <-time.After(45 * time.Second):
		}
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *process) url(path string) string { return "http://" + p.addr + path }

func (p *process) post(t *testing.T, path string, form url.Values) (int, string) {
	t.Helper()
	resp, err := http.PostForm(p.url(path), form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (p *process) metrics(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func nodeEnv(agent *agenttest.Agent, extra ...string) map[string]string {
	env := map[string]string{
		"PORT":           "0",
		"PUBLIC_ADDRESS": "127.0.0.1",
		"LLM_NAME":       "test-llm",
		"AGENT_REFRESH":  "200ms",
		"GOSSIP_PORT":    "0",
		"REMOTE_PORT":    "0",
	}
	if agent != nil {
		env["AGENT_ENDPOINT"] = agent.URL()
	} else {
		env["IGNORE_AGENT"] = "true"
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

func userInput(text string) string { return fmt.Sprintf(`[{"msg":%q,"isbot":false}]`, text) }

// chat sends a chat through the Agent, as its web front end does, and
// returns the answer.
func chat(ctx context.Context, t *testing.T, agent *agenttest.Agent, historyID, input string) string {
	t.Helper()
	rc, err := agent.Chat(ctx, "test-llm", historyID, "u1", input, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func hasN(n int) func([]string) bool { return func(e []string) bool { return len(e) == n } }

// The whole life of a node with an Agent: it registers one endpoint per
// chat it can run, serves chats the Agent forwards (the example layout
// converts to Traditional Chinese both ways), and on SIGTERM unregisters
// before it exits 0.
func TestNodeWithAgent(t *testing.T) {
	agent := agenttest.Start(t)
	p := startProcess(t, nodeEnv(agent))
	endpoints := agent.WaitEndpoints(t, "test-llm", hasN(64), 20*time.Second)
	if endpoints[0] != "http://"+p.addr+"/v1/completion" {
		t.Fatalf("first endpoint %q", endpoints[0])
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := chat(ctx, t, agent, "h1", userInput("鼠标和软件"))
	if got != "滑鼠和軟體" {
		t.Fatalf("chat through the Agent answered %q, want 滑鼠和軟體", got)
	}

	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	if e := agent.Endpoints("test-llm"); len(e) != 0 {
		t.Fatalf("endpoints left registered after shutdown: %v", e)
	}
	var unregistered bool
	for _, c := range agent.Calls() {
		if c.Kind == agenttest.CallUnregister && c.Name == "test-llm" {
			unregistered = true
		}
	}
	if !unregistered {
		t.Fatalf("no unregister call; calls: %v", agent.Calls())
	}
}

// The Agent runs one chat per endpoint URL; with one URL per place, it can
// run as many chats on the node at once as the node has places.
func TestConcurrentChatsThroughAgent(t *testing.T) {
	agent := agenttest.Start(t)
	dir := t.TempDir()
	layoutFile := filepath.Join(dir, "slow.yaml")
	writeFile(t, layoutFile, "version: 1\nllm:\n  class: dummy\n  args: {content: \"软件工程\", delay: 30ms}\n  concurrency: 16\negress-filters:\n  - class: opencc\n")
	startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", layoutFile))
	agent.WaitEndpoints(t, "test-llm", hasN(16), 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	answers := make(chan string, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := agent.Chat(ctx, "test-llm", fmt.Sprint("h", i), "u", userInput("hi"), nil)
			if err != nil {
				answers <- "error: " + err.Error()
				return
			}
			b, _ := io.ReadAll(rc)
			rc.Close()
			answers <- string(b)
		}()
	}
	wg.Wait()
	close(answers)
	for a := range answers {
		if a != "軟體工程" {
			t.Errorf("a chat answered %q", a)
		}
	}
}

// An Agent that restarts forgets its table; the node registers again.
func TestReRegistersWhenAgentForgets(t *testing.T) {
	agent := agenttest.Start(t)
	startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", writeTemp(t, "version: 1\nllm:\n  class: reflect\n  concurrency: 2\n")))
	agent.WaitEndpoints(t, "test-llm", hasN(2), 20*time.Second)
	agent.Forget()
	agent.WaitEndpoints(t, "test-llm", hasN(2), 20*time.Second)
}

// An Agent that is down at start-up does not stop the node; once it is up,
// the node registers.
func TestAgentDownAtStartup(t *testing.T) {
	agent := agenttest.Start(t)
	agent.SetDown(true)
	p := startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", writeTemp(t, "version: 1\nllm:\n  class: reflect\n  concurrency: 2\n")))
	code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("still serving")}})
	if code != 200 || body != "still serving" {
		t.Fatalf("chat while the Agent is down: %d %q", code, body)
	}
	agent.SetDown(false)
	agent.WaitEndpoints(t, "test-llm", hasN(2), 30*time.Second)
}

// A model that panics is restarted by its supervisor; the chat it was
// running gets a short error, the next chat is served, and the restart is
// counted in /metrics.
func TestSupervisionInProcess(t *testing.T) {
	layoutFile := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"abc\", delay: 1ms, panic: 2}\n")
	p := startProcess(t, nodeEnv(nil, "LAYOUT_CONFIG", layoutFile))
	code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("x")}})
	if code != 200 || !strings.HasPrefix(body, "ab") || !strings.Contains(body, "[Error: the model failed.]") {
		t.Fatalf("panicking chat: %d %q", code, body)
	}
	waitFor(t, func() bool {
		return strings.Contains(p.metrics(t), `troupe_actor_restarts_total{actor="model/dummy",layout="test-llm"} 1`)
	}, "restart counted in /metrics")
	// The dummy panics on every chat, so the second one fails the same way:
	// what matters is that it is answered by a restarted model.
	code, body = p.post(t, "/v1/completion", url.Values{"input": {userInput("x")}})
	if code != 200 || !strings.Contains(body, "[Error: the model failed.]") {
		t.Fatalf("chat after restart: %d %q", code, body)
	}
}

func TestBadInputThroughTheBinary(t *testing.T) {
	p := startProcess(t, nodeEnv(nil))
	for _, tt := range []struct {
		input string
		want  string
	}{
		{"", "The chat has no input"},
		{"not json", "not a JSON list"},
		{"[]", "The chat history is empty."},
	} {
		code, body := p.post(t, "/v1/completion", url.Values{"input": {tt.input}})
		if code != 400 || !strings.Contains(body, tt.want) {
			t.Errorf("input %q: %d %q", tt.input, code, body)
		}
	}
}

// With no settings at all, a node serves the built-in example layout on
// the default port and keeps running without an Agent.
// TestRunsWithNoSettings starts a node with nothing set but an Agent that
// is not there and checks that it serves on the default port. As root it
// runs the node in a network namespace of its own, so the defaults are free
// even while a developer's `make run` holds them on the host.
func TestRunsWithNoSettings(t *testing.T) {
	env := map[string]string{"AGENT_ENDPOINT": "http://127.0.0.1:1/v1.0/"}
	var p *process
	client := http.DefaultClient
	if ns, ok := privateNamespace(t); ok {
		transport := &http.Transport{DialContext: dialIn(ns)}
		defer transport.CloseIdleConnections()
		client = &http.Client{Transport: transport, Timeout: 30 * time.Second}
		node := binary
		binary = "ip"
		p = startProcess(t, env, "netns", "exec", ns, node)
		binary = node
	} else {
		requireDefaultPortFree(t)
		p = startProcess(t, env)
	}
	if defaultPort := app.DefaultConfig().Port; p.addr != fmt.Sprintf("127.0.0.1:%d", defaultPort) {
		t.Fatalf("listening on %s, want the default port %d on loopback", p.addr, defaultPort)
	}
	resp, err := client.PostForm(p.url("/v1/completion"), url.Values{"input": {userInput("简体中文")}})
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || string(body) != "簡體中文" {
		t.Fatalf("chat: %d %q %v", resp.StatusCode, body, err)
	}
	if code := p.stop(syscall.SIGINT); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// privateNamespace makes a network namespace with only loopback, up, for
// one test; ok is false where that needs rights the test does not have.
func privateNamespace(t *testing.T) (ns string, ok bool) {
	t.Helper()
	if os.Geteuid() != 0 {
		return "", false
	}
	ip, err := exec.LookPath("ip")
	if err != nil {
		t.Fatal("the test needs the ip command: install the Debian package iproute2")
	}
	ns = fmt.Sprintf("troupe%d-%s", os.Getpid(), strings.ToLower(t.Name()))
	if out, err := exec.Command(ip, "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("creating network namespace %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "delete", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting network namespace %s: %v: %s", ns, err, out)
		}
	})
	if out, err := exec.Command(ip, "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("bringing up loopback in %s: %v: %s", ns, err, out)
	}
	return ns, true
}

// requireDefaultPortFree skips when the default HTTP port is taken on the
// host (a developer's `make run`, say) and the test cannot have a namespace
// of its own; in CI, which runs as root, it never gets here.
func requireDefaultPortFree(t *testing.T) {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", app.DefaultConfig().Port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		why := fmt.Sprintf("the default port %s is taken (is make run up?), and only root can give the node a network namespace of its own", addr)
		if os.Getenv("CI") == "true" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	l.Close()
}

func TestLayoutErrorStopsStartup(t *testing.T) {
	bad := writeTemp(t, "version: 1\nllm:\n  class: gpt\n")
	cmd := exec.Command(binary)
	cmd.Env = []string{"LAYOUT_CONFIG=" + bad, "IGNORE_AGENT=1", "PORT=0"}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v", err)
	}
	if want := bad + ":3:10: unknown kind: model \"gpt\""; !strings.Contains(string(out), want) {
		t.Fatalf("output %q lacks %q", out, want)
	}
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "layout.yaml")
	writeFile(t, path, content)
	return path
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for the process's writes and the
// test's reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The Agent's chat/abort reaches the endpoint that serves the chat, and the
// chat stops there: its answer ends early.
func TestAbortThroughAgent(t *testing.T) {
	agent := agenttest.Start(t)
	layoutFile := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \""+strings.Repeat("x", 1000)+"\", delay: 20ms}\n  concurrency: 2\n")
	startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", layoutFile))
	agent.WaitEndpoints(t, "test-llm", hasN(2), 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rc, err := agent.Chat(ctx, "test-llm", "4242", "u1", userInput("go"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	first := make([]byte, 1)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatalf("first byte: %v", err)
	}
	if err := agent.Abort(ctx, "4242", "u1"); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading the aborted answer: %v", err)
	}
	if n := 1 + len(rest); n >= 1000 {
		t.Fatalf("the aborted chat ran to its end (%d characters)", n)
	}
}

// A node listens only on the address it was given: HTTP, gossip (TCP and
// UDP) and the remote all bind BIND_ADDRESS.
func TestListensOnlyOnBindAddress(t *testing.T) {
	ss, err := exec.LookPath("ss")
	if err != nil {
		t.Fatal("this test needs ss: install the Debian package \"iproute2\"")
	}
	p := startProcess(t, nodeEnv(nil, "BIND_ADDRESS", "127.0.0.1"))
	out, err := exec.Command(ss, "-H", "-l", "-n", "-t", "-u", "-p").Output()
	if err != nil {
		t.Fatal(err)
	}
	pid := fmt.Sprintf("pid=%d,", p.cmd.Process.Pid)
	var sockets []string
	for _, line := range strings.Split(string(out), "\n") {
		if !strings.Contains(line, pid) {
			continue
		}
		fields := strings.Fields(line)
		local := fields[4]
		sockets = append(sockets, fields[0]+" "+local)
		if !strings.HasPrefix(local, "127.0.0.1:") {
			t.Errorf("listening on %s %s, want only 127.0.0.1", fields[0], local)
		}
	}
	// HTTP, remote, gossip TCP and gossip UDP.
	if len(sockets) < 4 {
		t.Fatalf("found only %v for the node", sockets)
	}
}

// Older Agents forward only input (and modelfile) to the worker, not the
// LLM name: a node with one layout serves it all the same.
func TestOlderAgentForwardsOnlyInput(t *testing.T) {
	agent := agenttest.StartConfig(t, agenttest.Config{LegacyForward: true})
	startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", writeTemp(t, "version: 1\nllm:\n  class: reflect\n  concurrency: 2\n")))
	agent.WaitEndpoints(t, "test-llm", hasN(2), 20*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if got := chat(ctx, t, agent, "7", userInput("legacy")); got != "legacy" {
		t.Fatalf("answered %q", got)
	}
}
