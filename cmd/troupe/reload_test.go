package main

import (
	"bufio"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/agenttest"
)

func (p *process) hup(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until the node's log has said msg n times.
func (p *process) waitLog(t *testing.T, msg string, n int) {
	t.Helper()
	waitFor(t, func() bool { return strings.Count(p.stderr.String(), msg) >= n }, "the log line "+msg)
}

// On SIGHUP a node reloads its layout file: a chat in flight finishes on
// the old tree while new chats use the new one, names that came and went
// are registered and unregistered with the Agent, and a broken file is
// refused with its errors while the old layouts keep serving.
func TestReloadOnSIGHUP(t *testing.T) {
	agent := agenttest.Start(t)
	file := writeTemp(t, "version: 2\nlayouts:\n  a: {model: dummy, args: {content: \"the old answer\", delay: 30ms}, concurrency: 2}\n  b: {model: reflect, concurrency: 2}\n")
	p := startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", file))
	agent.WaitEndpoints(t, "a", hasN(2), 10*time.Second)
	agent.WaitEndpoints(t, "b", hasN(2), 10*time.Second)

	// A chat on the old tree, streaming when the file changes.
	resp, err := http.PostForm(p.url("/v1/completion"), url.Values{"input": {userInput("x")}, "name": {"a"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	first, err := r.ReadByte()
	if err != nil || first != 't' {
		t.Fatalf("first byte %q, %v", first, err)
	}

	writeFile(t, file, "version: 2\nlayouts:\n  a: {model: dummy, args: {content: \"new\", delay: 1ms}, concurrency: 3}\n  c: {model: reflect}\n")
	p.hup(t)
	p.waitLog(t, "layouts reloaded", 1)

	rest, err := io.ReadAll(r)
	if err != nil || string(first)+string(rest) != "the old answer" {
		t.Fatalf("the chat in flight: %q, %v; want the old tree's whole answer", string(first)+string(rest), err)
	}
	for _, tt := range []struct{ name, input, want string }{{"a", "x", "new"}, {"c", "echo me", "echo me"}} {
		if code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput(tt.input)}, "name": {tt.name}}); code != 200 || body != tt.want {
			t.Errorf("%s after the reload: %d %q, want %q", tt.name, code, body, tt.want)
		}
	}
	if code, _ := p.post(t, "/v1/completion", url.Values{"input": {userInput("x")}, "name": {"b"}}); code != 404 {
		t.Errorf("b after the reload: %d, want 404", code)
	}
	agent.WaitEndpoints(t, "b", hasN(0), 10*time.Second)
	agent.WaitEndpoints(t, "c", hasN(64), 10*time.Second)
	agent.WaitEndpoints(t, "a", hasN(3), 10*time.Second)

	writeFile(t, file, "version: 2\nlayouts:\n  a: {model: gpt9}\n")
	p.hup(t)
	p.waitLog(t, "layout reload refused", 1)
	if !strings.Contains(p.stderr.String(), `unknown kind: model \"gpt9\"`) {
		t.Errorf("the refusal does not say why:\n%s", p.stderr.String())
	}
	if code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("x")}, "name": {"a"}}); code != 200 || body != "new" {
		t.Errorf("a after a refused reload: %d %q", code, body)
	}
	for _, want := range []string{`troupe_layout_reloads_total{result="ok"} 1`, `troupe_layout_reloads_total{result="error"} 1`,
		`troupe_layout_info{file="` + file + `",layout="c"} 1`} {
		if !strings.Contains(p.metrics(t), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if code := p.stop(os.Interrupt); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// Reloading while chats stream loses none: each gets a whole answer, from
// the old tree or the new.
func TestReloadUnderLoadLosesNoChat(t *testing.T) {
	file := writeTemp(t, slowLayout)
	p := startProcess(t, nodeEnv(nil, "LAYOUT_CONFIG", file))
	reloaded := 0
	r := runChats(t, p, 120, 8, 30, func() {
		writeFile(t, file, strings.Replace(slowLayout, slowAnswer, "abcdefghij", 1))
		p.hup(t)
		reloaded++
	})
	p.waitLog(t, "layouts reloaded", reloaded)
	if len(r.problems) > 0 {
		t.Fatalf("%d problems, first: %s", len(r.problems), r.problems[0])
	}
	total := 0
	for answer, n := range r.answers {
		if answer != slowAnswer && answer != "abcdefghij" {
			t.Errorf("%d chats answered %q", n, answer)
		}
		total += n
	}
	if total != 120 || r.answers["abcdefghij"] == 0 || r.answers[slowAnswer] == 0 {
		t.Fatalf("answers %v, want 120 from both trees", r.answers)
	}
}
