package gateway_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

// A connection a client's pool dialled and left unused is kept as long as
// an idle one, not cut at the head's time limit: a POST sent on it later
// is served. (A POST on a connection the node closes as it is sent fails,
// and the client may not retry it.)
func TestUnusedConnectionWaitsAsIdle(t *testing.T) {
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(echo, 4, 4)}, func(c *gateway.Config) {
		c.Limits = gateway.Limits{HeaderTimeout: 200 * time.Millisecond, IdleTimeout: time.Minute}
	})
	unused := n.dial()
	// A connection dialled after it and cut at the head's limit shows
	// that limit has passed for the unused one too.
	late := n.dial()
	if _, err := io.WriteString(late, "G"); err != nil {
		t.Fatal(err)
	}
	closedWithin(t, late, 10*time.Second, "a head begun and never finished")
	if got := n.limitHits("header_timeout"); got != 1 {
		t.Fatalf("troupe_limit_hits_total{limit=\"header_timeout\"} = %v, want 1", got)
	}

	body := form(userInput("later")).Encode()
	if _, err := fmt.Fprintf(unused, "POST /v1/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
		t.Fatal(err)
	}
	_ = unused.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(unused), nil)
	if err != nil {
		t.Fatalf("the unused connection's first request: %v", err)
	}
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || got != "later" {
		t.Fatalf("the unused connection's first chat: %d %q", resp.StatusCode, got)
	}
}
