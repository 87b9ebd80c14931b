package gateway_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/troupe-llm/troupe/actors"
)

// An OpenAI API stream is taken over from net/http like an Agent API one:
// its events and [DONE] arrive whole after the take-over, the connection
// then serves the client's next request, and a client that hangs up
// cancels its chat. A whole (non-stream) answer is not taken over.
func TestOpenAIStreamTakenOver(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)})
	raw := func(text string, stream bool) string {
		body := fmt.Sprintf(`{"model":"llm","stream":%t,"messages":[{"role":"user","content":%q}]}`, stream, text)
		return fmt.Sprintf("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	}
	taken := func() {
		t.Helper()
		select {
		case <-n.hijacked:
		case <-time.After(10 * time.Second):
			t.Fatal("the stream's connection was not taken over")
		}
	}
	conn, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	release := func() {
		t.Helper()
		g.release <- struct{}{}
		if err := <-g.ended; err != nil {
			t.Fatalf("model ended with %v", err)
		}
	}
	// ask sends a chat and, once its model has begun, reads the
	// response's head: for a stream right away, for a whole answer (which
	// has no head until it is complete) after letting the model finish.
	ask := func(text string, stream bool) *http.Response {
		t.Helper()
		if _, err := io.WriteString(conn, raw(text, stream)); err != nil {
			t.Fatal(err)
		}
		<-g.started
		if !stream {
			release()
		}
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	bodyOf := func(resp *http.Response) string {
		t.Helper()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	resp := ask("a", true)
	taken()
	release()
	body := bodyOf(resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"content":"a"`) || !strings.Contains(body, `"content":"!"`) ||
		!strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream after the take-over: %d %q", resp.StatusCode, body)
	}
	// Kept alive: the same connection takes a whole answer, which stays
	// with net/http.
	resp = ask("b", false)
	body = bodyOf(resp)
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"content":"b!"`) {
		t.Fatalf("whole answer on the kept connection: %d %q", resp.StatusCode, body)
	}
	select {
	case <-n.hijacked:
		t.Fatal("a whole answer's connection was taken over")
	default:
	}
	if got := testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "completed")); got != 2 {
		t.Fatalf("completed chats %v, want 2", got)
	}

	// A client that hangs up after the take-over cancels its chat.
	gone, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(gone, raw("c", true)); err != nil {
		t.Fatal(err)
	}
	<-g.started
	taken()
	gone.Close()
	select {
	case err := <-g.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("model ended with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the model was not cancelled")
	}
	waitFor(t, func() bool {
		return testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "cancelled")) == 1
	}, "the cancelled chat counted")
}
