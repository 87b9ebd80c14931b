package main

import (
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/gateway"
)

// statusOf reads a node's /status.json.
func (p *process) status(t *testing.T) gateway.Status {
	t.Helper()
	resp, err := http.Get(p.url("/status.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st gateway.Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("status.json: %v", err)
	}
	return st
}

// Several workers on one host, as Kuwa users run executors: nodes started
// with nothing different but PORT (and their layout) all start and serve,
// whoever holds the default cluster ports; each logs where it gossips, and
// a node joins any of them there.
func TestSeveralNodesPerHost(t *testing.T) {
	var nodes []*process
	for i, layout := range []string{
		"version: 1\nllm:\n  class: reflect\n",
		"version: 1\nllm:\n  class: dummy\n  args: {content: \"b\", delay: 1ms}\n",
		"version: 1\nllm:\n  class: dummy\n  args: {content: \"c\", delay: 1ms}\n",
	} {
		env := map[string]string{
			"PORT":          strconv.Itoa(freePort(t)),
			"LLM_NAME":      "llm-" + strconv.Itoa(i),
			"LAYOUT_CONFIG": writeTemp(t, layout),
			"IGNORE_AGENT":  "true",
		}
		nodes = append(nodes, startProcess(t, env))
	}
	gossip := map[string]bool{}
	for i, p := range nodes {
		code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("a")}})
		if code != 200 || body != []string{"a", "b", "c"}[i] {
			t.Fatalf("node %d answered %d %q", i, code, body)
		}
		self := p.status(t).Members[0]
		if gossip[self.Gossip] {
			t.Fatalf("two nodes gossip on %s", self.Gossip)
		}
		gossip[self.Gossip] = true
		_, port, _ := net.SplitHostPort(self.Gossip)
		if port != "7946" && !strings.Contains(p.stderr.String(), "GOSSIP_PORT not set and its default is taken") {
			t.Errorf("node %d gossips on %s without saying why in its log:\n%s", i, self.Gossip, p.stderr.String())
		}
	}
	// The third node is joinable where it said it gossips.
	third := nodes[2].status(t).Members[0].Gossip
	joiner := startProcess(t, map[string]string{
		"PORT":          strconv.Itoa(freePort(t)),
		"LLM_NAME":      "llm-3",
		"LAYOUT_CONFIG": writeTemp(t, "version: 1\nllm:\n  class: reflect\n"),
		"IGNORE_AGENT":  "true",
		"JOIN":          third,
	})
	joiner.waitAlive(t, 2)
	nodes[2].waitAlive(t, 2)
	waitFor(t, func() bool {
		resp, err := http.Get(joiner.url("/ready"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "the joined node to be ready")
	// A chat for the third node's LLM sent to the joiner runs there.
	resp, err := http.PostForm(joiner.url("/v1/completion"), url.Values{"input": {userInput("x")}, "name": {"llm-2"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Troupe-Node") != nodes[2].status(t).Node {
		t.Fatalf("chat for llm-2 through the joiner: %d on %q", resp.StatusCode, resp.Header.Get("X-Troupe-Node"))
	}
}

// A port set explicitly that is taken stops the node, naming the setting
// and how to choose another.
func TestExplicitPortTakenStops(t *testing.T) {
	for _, setting := range []string{"PORT", "GOSSIP_PORT", "REMOTE_PORT"} {
		t.Run(setting, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
			env := map[string]string{"PORT": "0", "GOSSIP_PORT": "0", "REMOTE_PORT": "0", "IGNORE_AGENT": "1", setting: port}
			cmd := exec.Command(binary)
			for k, v := range env {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := runBounded(t, cmd)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit: %v; output:\n%s", err, out)
			}
			for _, want := range []string{setting + " " + port + ": cannot listen", "address already in use", "set " + setting + " to another port"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// runBounded runs cmd to its end, killing it after 30s.
func runBounded(t *testing.T, cmd *exec.Cmd) (string, error) {
	t.Helper()
	var buf syncBuffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return buf.String(), err
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("%v did not end; output:\n%s", cmd.Args, buf.String())
		return "", nil
	}
}
