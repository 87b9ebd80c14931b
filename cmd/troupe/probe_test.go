package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// probe runs `troupe <args>` with the node's settings and returns its exit
// code and output.
func probe(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := runBounded(t, cmd)
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0, out
	case errors.As(err, &exit):
		return exit.ExitCode(), out
	}
	t.Fatal(err)
	return -1, ""
}

func getStatus(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// /health is liveness, /ready readiness; `troupe health` asks the node its
// own settings describe, and exits 0 or 1 on its answer.
func TestHealthAndReadiness(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	env := map[string]string{"PORT": port, "IGNORE_AGENT": "1", "GOSSIP_PORT": "0", "REMOTE_PORT": "0"}
	p := startProcess(t, env)
	if code, _ := getStatus(t, p.url("/health")); code != http.StatusNoContent {
		t.Fatalf("/health: %d", code)
	}
	if code, body := getStatus(t, p.url("/ready")); code != 200 || body != "ready" {
		t.Fatalf("/ready: %d %q", code, body)
	}
	if code, out := probe(t, map[string]string{"PORT": port}, "health"); code != 0 || !strings.Contains(out, "ready") {
		t.Fatalf("troupe health: exit %d, %q", code, out)
	}
	if code, out := probe(t, map[string]string{"PORT": port}, "health", "-live"); code != 0 {
		t.Fatalf("troupe health -live: exit %d, %q", code, out)
	}
	// Nothing listens on a fresh port: unhealthy, exit 1.
	if code, out := probe(t, map[string]string{"PORT": strconv.Itoa(freePort(t))}, "health"); code != 1 || !strings.Contains(out, "troupe: health") {
		t.Fatalf("troupe health of no node: exit %d, %q", code, out)
	}

	// A node whose seeds cannot be reached has not joined: alive, not ready.
	alone := startProcess(t, nodeEnv(nil, "JOIN", "127.0.0.1:"+strconv.Itoa(freePort(t))))
	if code, _ := getStatus(t, alone.url("/health")); code != http.StatusNoContent {
		t.Fatalf("/health of a node that has not joined: %d", code)
	}
	if code, body := getStatus(t, alone.url("/ready")); code != 503 || !strings.Contains(body, "not joined") {
		t.Fatalf("/ready of a node that has not joined: %d %q", code, body)
	}
	// Once a member is there, it joins, and is ready.
	_, gossip, _ := strings.Cut(alone.env("JOIN"), ":")
	startProcess(t, nodeEnv(nil, "GOSSIP_PORT", gossip))
	waitFor(t, func() bool { code, _ := getStatus(t, alone.url("/ready")); return code == 200 }, "the node to join and be ready")

	// A layout that failed past its restart budget: no healthy layout.
	broken := startProcess(t, nodeEnv(nil, "LAYOUT_CONFIG", writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"abc\", delay: 1ms, panic: 1}\n  concurrency: 1\n")))
	waitFor(t, func() bool {
		broken.post(t, "/v1/completion", url.Values{"input": {userInput("x")}})
		code, body := getStatus(t, broken.url("/ready"))
		return code == 503 && strings.Contains(body, "no healthy layout")
	}, "a node whose only layout is unhealthy to be not ready")
}

// env returns one of the process's settings, as the test gave it.
func (p *process) env(key string) string {
	for _, kv := range p.cmd.Env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v
		}
	}
	return ""
}

// `troupe drain` (Kubernetes' preStop) makes the node not ready at once,
// refuse new chats, finish the ones it runs, and return; the node then
// waits for its signal and exits 0.
func TestDrainCommand(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	layout := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 100ms}\n  concurrency: 2\n")
	p := startProcess(t, map[string]string{"PORT": port, "IGNORE_AGENT": "1", "GOSSIP_PORT": "0", "REMOTE_PORT": "0", "LAYOUT_CONFIG": layout, "DRAIN_TIMEOUT": "20s"})

	// A chat that runs about a second.
	answer := make(chan string, 1)
	go func() {
		resp, err := http.PostForm(p.url("/v1/completion"), url.Values{"input": {userInput("x")}})
		if err != nil {
			answer <- err.Error()
			return
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		answer <- string(b)
	}()
	waitFor(t, func() bool { return p.status(t).InFlight == 1 }, "the chat to start")

	drained := make(chan string, 1)
	go func() {
		code, out := probe(t, map[string]string{"PORT": port}, "drain")
		drained <- strconv.Itoa(code) + " " + out
	}()
	waitFor(t, func() bool { code, _ := getStatus(t, p.url("/ready")); return code == 503 }, "the node to turn not ready")
	if code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("late")}}); code != 503 {
		t.Errorf("a chat while draining: %d %q", code, body)
	}
	select {
	case d := <-drained:
		t.Fatalf("troupe drain returned before the chat ended: %s", d)
	case a := <-answer:
		if a != "0123456789" {
			t.Fatalf("the chat in flight answered %q", a)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the chat in flight did not end")
	}
	select {
	case d := <-drained:
		if !strings.HasPrefix(d, "0 ") || !strings.Contains(d, "drained") {
			t.Fatalf("troupe drain: %s", d)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("troupe drain did not return")
	}
	// Drained, not gone: alive until its signal.
	if code, _ := getStatus(t, p.url("/health")); code != http.StatusNoContent {
		t.Fatalf("/health after the drain: %d", code)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after the drain and SIGTERM", code)
	}
	// Only a client on the node's own host may drain it: checked by the
	// gateway's tests, as every client here is on loopback.
}

// LOG_FORMAT=json writes one JSON object a line; every line about a chat
// carries its id under "chat"; no chat content at info level.
func TestJSONLogs(t *testing.T) {
	layout := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"abc\", delay: 1ms, panic: 2}\n")
	p := startProcess(t, nodeEnv(nil, "LOG_FORMAT", "json", "LAYOUT_CONFIG", layout))
	const secret = "private words of a user"
	code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput(secret)}})
	if code != 200 || !strings.Contains(body, "[Error:") {
		t.Fatalf("panicking chat: %d %q", code, body)
	}
	waitFor(t, func() bool { return strings.Contains(p.stderr.String(), "model panicked") }, "the panic to be logged")
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d", code)
	}
	s := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	chatLines := 0
	for s.Scan() {
		var line map[string]any
		if err := json.Unmarshal(s.Bytes(), &line); err != nil {
			t.Errorf("not a JSON line: %q", s.Text())
			continue
		}
		if line["level"] == nil || line["msg"] == nil || line["time"] == nil {
			t.Errorf("line without time, level or msg: %q", s.Text())
		}
		msg, _ := line["msg"].(string)
		if strings.Contains(msg, "chat") || strings.Contains(msg, "model") {
			if id, _ := line["chat"].(string); id == "" {
				t.Errorf("a line about a chat without its id: %q", s.Text())
			}
			chatLines++
		}
		if strings.Contains(s.Text(), secret) {
			t.Errorf("chat content in the log at info level: %q", s.Text())
		}
	}
	if chatLines == 0 {
		t.Fatalf("no line about the failed chat:\n%s", p.stderr.String())
	}
}
