package main

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"testing"

	"github.com/troupe-llm/troupe/internal/openaitest"
)

// An upstream that says it is overloaded (429) moves the chat to another
// node of the cluster, before anything was written to the client; when no
// node has room the client gets 429 with the upstream's Retry-After.
func TestUpstreamOverloadMovesChatToAnotherNode(t *testing.T) {
	busy := openaitest.New(t)
	free := openaitest.New(t)
	overloaded := openaitest.Response{Status: http.StatusTooManyRequests, Header: map[string]string{"Retry-After": "7"}}
	layoutFor := func(u *openaitest.Server) string {
		return writeTemp(t, fmt.Sprintf("version: 1\nllm:\n  class: openai\n  args: {base_url: %q, model: m, retries: 0}\n  concurrency: 2\n", u.URL))
	}
	a := startMember(t, "node-a", layoutFor(busy), nil)
	b := startMember(t, "node-b", layoutFor(free), a)
	a.waitAlive(t, 2)
	b.waitAlive(t, 2)

	// Without a conversation to stick to, a gateway runs a chat on its own
	// node while it has room: node-a, whose upstream is busy.
	busy.Enqueue(overloaded, overloaded, overloaded)
	for i := 0; i < 3; i++ {
		resp, err := http.PostForm(a.url("/v1/completion"), url.Values{"input": {userInput("hi")}})
		if err != nil {
			t.Fatal(err)
		}
		body := readBody(t, resp)
		if resp.StatusCode != 200 || body != "Hello from the fake upstream." || resp.Header.Get("X-Troupe-Node") != "node-b" {
			t.Fatalf("chat %d: status %d from %q: %q", i, resp.StatusCode, resp.Header.Get("X-Troupe-Node"), body)
		}
	}

	// Both upstreams overloaded: 429, with the longest wait they asked for.
	free.Enqueue(overloaded, overloaded, overloaded, overloaded)
	busy.Enqueue(overloaded, overloaded, overloaded, overloaded)
	resp, err := http.PostForm(a.url("/v1/completion"), url.Values{"input": {userInput("hi")}})
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "7" {
		t.Fatalf("status %d, Retry-After %q: %q", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
	if n := a.metric(t, "troupe_cluster_reroutes_total"); n != 5 {
		t.Errorf("reroutes counted %v, want 5 (one per chat, two for the last)", n)
	}
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
