package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/agenttest"
)

// `troupe layout check` reports every mistake at once with its place and
// fails; a good file lists its layouts. `troupe layout graph` draws it.
func TestLayoutCommands(t *testing.T) {
	bad := writeTemp(t, "version: 2\nlayouts:\n  a: {model: gpt9}\n  b: {route: [{when: {last_message: \"(\"}, then: {model: reflect}}]}\n  c: {layout: c}\n")
	tests := []struct {
		name    string
		args    []string
		wantErr error
		stdout  []string
		stderr  []string
	}{
		{"check good", []string{"layout", "check", "../../examples/local-trees.yaml"}, nil,
			[]string{"layout echo: 64 chats at once", "layout replicas: 24 chats at once"}, nil},
		{"check version 1", []string{"layout", "check", "../../examples/layout.yaml"}, nil, []string{"layout Unnamed_LLM: 64 chats at once"}, nil},
		{"check bad", []string{"layout", "check", bad}, errLayoutInvalid, nil,
			[]string{bad + ":3:14: unknown kind: model \"gpt9\"", bad + ":4:37: last_message: not a valid regular expression", bad + ":5:15: layouts refer to each other in a cycle: c → c"}},
		{"check missing", []string{"layout", "check", "/nonexistent.yaml"}, errLayoutInvalid, nil, []string{"no such file"}},
		{"graph dot", []string{"layout", "graph", "../../examples/trees.yaml"}, nil, []string{"digraph layouts {", `"pool × 4"`}, nil},
		{"graph mermaid", []string{"layout", "graph", "--format", "mermaid", "../../examples/trees.yaml"}, nil, []string{"flowchart LR", `"fanout (first)"`}, nil},
		{"graph bad format", []string{"layout", "graph", "--format", "png", "../../examples/trees.yaml"}, errors.New("unknown graph format"), nil, nil},
		{"no file", []string{"layout", "check"}, errors.New("usage"), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, func(string) string { return "" }, &stdout, &stderr)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("err %v; stderr %s", err, stderr.String())
			case tt.wantErr != nil && (err == nil || !strings.Contains(err.Error(), tt.wantErr.Error())):
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			for _, w := range tt.stdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tt.stderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

// A node serving a version 2 file serves each of its layouts under its
// name, through both APIs, registers each with the Agent, and lists them
// as models; a name it does not serve is a 404.
func TestNodeServesSeveralLayouts(t *testing.T) {
	agent := agenttest.Start(t)
	p := startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", "../../examples/local-trees.yaml"))
	for _, name := range []string{"echo", "router", "resilient", "both", "replicas"} {
		agent.WaitEndpoints(t, name, func(e []string) bool { return len(e) > 0 }, 10*time.Second)
	}
	if got := len(agent.Endpoints("replicas")); got != 24 {
		t.Errorf("replicas registered %d endpoints, want one per place (24)", got)
	}
	code, body := p.post(t, "/v1/completion", url.Values{"input": {userInput("/echo 软件")}, "name": {"router"}})
	if code != 200 || body != "/echo 軟體" {
		t.Errorf("router through the Agent API: %d %q", code, body)
	}
	resp, err := http.Post(p.url("/v1/chat/completions"), "application/json",
		strings.NewReader(`{"model":"both","messages":[{"role":"user","content":"软件"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Choices []struct{ Message struct{ Content string } }
	}
	if err := json.NewDecoder(resp.Body).Decode(&c); err != nil || len(c.Choices) != 1 {
		t.Fatalf("both through the OpenAI API: %v %+v", err, c)
	}
	resp.Body.Close()
	if want := "[echo]\n軟體\n\n[dummy]\n我是一个假模型。"; c.Choices[0].Message.Content != want {
		t.Errorf("both: %q, want %q", c.Choices[0].Message.Content, want)
	}
	code, body = p.post(t, "/v1/completion", url.Values{"input": {userInput("x")}, "name": {"nobody"}})
	if code != 404 || !strings.Contains(body, "nobody") {
		t.Errorf("unknown name: %d %q", code, body)
	}
	resp, err = http.Get(p.url("/v1/models"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var models struct{ Data []struct{ ID string } }
	_ = json.NewDecoder(resp.Body).Decode(&models)
	if len(models.Data) != 5 {
		t.Errorf("models %+v, want the file's five layouts", models.Data)
	}
}
