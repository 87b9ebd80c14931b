package gateway_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/troupe-llm/troupe/actors"
)

// The Agent's abort of its first endpoint slot (GET {endpoint}/abort) stops
// that slot's chat and no chat of the OpenAI API, which came through no
// slot of the Agent's.
func TestAbortLeavesOpenAIChats(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 0)})
	ctx := ctxFor(t)
	stream := n.postJSON(ctx, "/v1/chat/completions", `{"model":"llm","stream":true,"messages":[{"role":"user","content":"openai"}]}`, "")
	<-g.started
	base := n.post(ctx, "/v1/completion", form(userInput("base")))
	<-g.started

	resp, err := http.Get(n.http.URL + "/v1/completion/abort")
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, resp); !strings.Contains(got, "Aborted.") {
		t.Fatalf("abort answered %q", got)
	}
	if err := <-g.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("aborted model ended with %v", err)
	}
	if body := readAll(t, base); body != "base" {
		t.Fatalf("aborted chat body %q", body)
	}
	close(g.release)
	if body := readAll(t, stream); !strings.Contains(body, `"content":"!"`) || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("the OpenAI chat did not run to its end:\n%s", body)
	}
}
