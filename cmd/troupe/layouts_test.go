package main

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/agenttest"
)

// A node serving a version 2 file serves each of its layouts under its
// name, through both APIs, registers each with the Agent, and lists them
// as models; a name it does not serve is a 404.
func TestNodeServesSeveralLayouts(t *testing.T) {
	agent := agenttest.Start(t)
	p := startProcess(t, nodeEnv(agent, "LAYOUT_CONFIG", "../../examples/local-trees.yaml"))
	// One endpoint per place: 64 for the others, 24 for three replicas of 8.
	for _, name := range []string{"echo", "router", "resilient", "both"} {
		agent.WaitEndpoints(t, name, hasN(64), 10*time.Second)
	}
	agent.WaitEndpoints(t, "replicas", hasN(24), 10*time.Second)
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
