package main

import (
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A drain that outlasts DRAIN_TIMEOUT cuts the chats still running, each
// with a short error rather than a hang; `troupe drain` (Kubernetes'
// preStop) then fails saying so, `troupe health` calls the node not ready,
// and the node still exits 0 on its signal.
func TestDrainPastItsTimeout(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	// A chat of about ten seconds against a drain of one.
	layout := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 1s}\n  concurrency: 2\n")
	p := startProcess(t, map[string]string{"PORT": port, "IGNORE_AGENT": "1", "GOSSIP_PORT": "0", "REMOTE_PORT": "0",
		"LAYOUT_CONFIG": layout, "DRAIN_TIMEOUT": "1s"})

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

	start := time.Now()
	code, out := probe(t, map[string]string{"PORT": port}, "drain")
	if code != 1 || !strings.Contains(out, "drain: 504") || !strings.Contains(out, "chats in flight cancelled after DRAIN_TIMEOUT 1s") {
		t.Fatalf("troupe drain past the timeout: exit %d, output:\n%s", code, out)
	}
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("troupe drain took %s with DRAIN_TIMEOUT 1s", took)
	}
	select {
	case a := <-answer:
		if !strings.HasPrefix(a, "0") || strings.HasSuffix(a, "9") || !strings.Contains(a, "[Error: the node is shutting down") {
			t.Fatalf("the chat cut by the drain answered %q, want its start and a short error", a)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the chat cut by the drain did not end")
	}
	p.waitLog(t, "drain timed out; chats in flight were cancelled", 1)

	if code, out := probe(t, map[string]string{"PORT": port}, "health"); code != 1 || !strings.Contains(out, "503") {
		t.Fatalf("troupe health on a drained node: exit %d, output:\n%s", code, out)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after the drain and SIGTERM", code)
	}
}

// The same for the chats other nodes' gateways sent: past DRAIN_TIMEOUT the
// draining node cuts them, their gateway ends each with a short error, and
// `troupe drain` names them.
func TestDrainPastItsTimeoutWithChatsFromOtherNodes(t *testing.T) {
	port := strconv.Itoa(freePort(t))
	slow := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 1s}\n  concurrency: 2\n")
	back := startMember(t, "node-back", slow, nil, "PORT", port, "DRAIN_TIMEOUT", "1s")
	front := startMember(t, "node-front", writeTemp(t, "version: 1\nllm:\n  class: reflect\n"), back, "LLM_NAME", "front")
	front.waitAlive(t, 2)

	// test-llm runs only on node-back: the chat goes there.
	resp, err := http.PostForm(front.url("/v1/completion"), url.Values{"input": {userInput("x")}, "name": {"test-llm"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 1)
	if _, err := io.ReadFull(resp.Body, first); err != nil || first[0] != '0' {
		t.Fatalf("the chat through node-front: %q, %v", first, err)
	}

	code, out := probe(t, map[string]string{"PORT": port}, "drain")
	if code != 1 || !strings.Contains(out, "chats from other nodes cancelled after DRAIN_TIMEOUT 1s") {
		t.Fatalf("troupe drain past the timeout: exit %d, output:\n%s", code, out)
	}
	rest, err := io.ReadAll(resp.Body)
	if a := string(first) + string(rest); err != nil || strings.HasSuffix(a, "9") || !strings.Contains(a, "[Error: the node running this chat is shutting down") {
		t.Fatalf("the chat cut on node-back answered %q (%v), want its start and a short error saying why", a, err)
	}
	back.waitLog(t, "drain timed out; chats from other nodes were cancelled", 1)
	if code := back.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("node-back exited %d after the drain and SIGTERM", code)
	}
}
