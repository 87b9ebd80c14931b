package gateway_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

// metric reads one series of a counter or gauge, the one with the label's
// value (any label "" for one without); a series not there reads 0.
func metric(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			match := label == ""
			for _, l := range m.GetLabel() {
				match = match || l.GetName() == label && l.GetValue() == value
			}
			if !match {
				continue
			}
			if m.GetGauge() != nil {
				return m.GetGauge().GetValue()
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func (n *node) limitHits(limit string) float64 {
	return metric(n.t, n.reg, "troupe_limit_hits_total", "limit", limit)
}

// connections returns the node's open connections serving a request and
// waiting.
func (n *node) connections() (serving, waiting int) {
	return int(metric(n.t, n.reg, "troupe_http_connections", "state", "serving")),
		int(metric(n.t, n.reg, "troupe_http_connections", "state", "waiting"))
}

func (n *node) dial() net.Conn {
	n.t.Helper()
	c, err := net.Dial("tcp", n.http.Listener.Addr().String())
	if err != nil {
		n.t.Fatal(err)
	}
	n.t.Cleanup(func() { c.Close() })
	return c
}

// postOpenAI sends a chat completion request and returns the response.
func (n *node) postOpenAI(ctx context.Context, body string) *http.Response {
	n.t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.http.URL+"/v1/chat/completions", strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	return resp
}

func openaiBody(stream bool, contents ...string) string {
	msgs := make([]map[string]string, len(contents))
	for i, c := range contents {
		msgs[i] = map[string]string{"role": "user", "content": c}
	}
	b, _ := json.Marshal(map[string]any{"model": "llm", "stream": stream, "messages": msgs})
	return string(b)
}

func agentHistory(contents ...string) string {
	recs := make([]map[string]any, len(contents))
	for i, c := range contents {
		recs[i] = map[string]any{"msg": c, "isbot": false}
	}
	b, _ := json.Marshal(recs)
	return string(b)
}

type openaiErr struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeError(t *testing.T, resp *http.Response) openaiErr {
	t.Helper()
	var e openaiErr
	if err := json.Unmarshal([]byte(readAll(t, resp)), &e); err != nil {
		t.Fatalf("status %d: not an OpenAI error: %v", resp.StatusCode, err)
	}
	return e
}

// Each size limit of a request refuses it in both APIs with 413 and a short
// sentence (OpenAI's error JSON with a code there), and counts it.
func TestLimitsOfARequest(t *testing.T) {
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(newGate(), 2, 0)}, func(c *gateway.Config) {
		c.Limits = gateway.Limits{MaxBodyBytes: 4 << 10, MaxHistoryMessages: 3, MaxHistoryBytes: 100}
	})
	ctx := ctxFor(t)
	big := strings.Repeat("x", 5<<10)
	tests := []struct {
		name      string
		limit     string
		agent     url.Values
		openai    string
		chunked   bool // sent without a Content-Length, so read until the limit
		want      string
		code      string
		wantParam string
	}{
		{"body", "body", form(userInput(big)), openaiBody(false, big), false,
			"The request is too large: at most 4 KiB are accepted.", "request_too_large", ""},
		{"body sent in chunks", "body", form(userInput(big)), openaiBody(false, big), true,
			"The request is too large: at most 4 KiB are accepted.", "request_too_large", ""},
		{"history messages", "history_messages", form(agentHistory("a", "b", "c", "d")), openaiBody(false, "a", "b", "c", "d"), false,
			"The chat has too many messages: 4, at most 3 are accepted.", "too_many_messages", "messages"},
		{"history bytes", "history_bytes", form(agentHistory(strings.Repeat("y", 60), strings.Repeat("z", 60))),
			openaiBody(false, strings.Repeat("y", 60), strings.Repeat("z", 60)), false,
			"The chat is too long: 120 bytes of text, at most 100 bytes are accepted.", "history_too_long", "messages"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := n.limitHits(tt.limit)
			body := func(s string) io.Reader {
				if tt.chunked {
					return io.MultiReader(strings.NewReader(s)) // no length known
				}
				return strings.NewReader(s)
			}
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, n.http.URL+"/v1/completion", body(tt.agent.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, resp); resp.StatusCode != http.StatusRequestEntityTooLarge || got != tt.want+"\n" {
				t.Errorf("Agent API: %d %q, want 413 %q", resp.StatusCode, got, tt.want)
			}
			req, _ = http.NewRequestWithContext(ctx, http.MethodPost, n.http.URL+"/v1/chat/completions", body(tt.openai))
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			e := decodeError(t, resp)
			if resp.StatusCode != http.StatusRequestEntityTooLarge || e.Error.Message != tt.want || e.Error.Code == nil || *e.Error.Code != tt.code ||
				e.Error.Type != "invalid_request_error" || (tt.wantParam != "") != (e.Error.Param != nil) {
				t.Errorf("OpenAI API: %d %+v, want 413 %q code %q", resp.StatusCode, e.Error, tt.want, tt.code)
			}
			if got := n.limitHits(tt.limit) - before; got != 2 {
				t.Errorf("troupe_limit_hits_total{limit=%q} rose by %v, want 2", tt.limit, got)
			}
		})
	}
	// Within every limit, a chat runs.
	resp := n.post(ctx, "/v1/completion", form(agentHistory("a", "b", "hi")))
	r := bufio.NewReader(resp.Body)
	if first, err := r.ReadString('i'); err != nil || first != "hi" || resp.StatusCode != http.StatusOK {
		t.Fatalf("a chat within the limits: %d %q %v", resp.StatusCode, first, err)
	}
	resp.Body.Close()
}

// flood is a model that writes its chunk many times, then waits to be
// cancelled, which it reports.
type flood struct {
	chunk string
	times int
	ended chan error
}

func (f *flood) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	for range f.times {
		if err := emit(f.chunk); err != nil {
			f.ended <- err
			return err
		}
	}
	<-ctx.Done()
	f.ended <- ctx.Err()
	return ctx.Err()
}

// An answer that reaches MaxAnswerBytes is cut at a character's boundary,
// ends as cut in each API's way, and its model is cancelled.
func TestLimitOfAnAnswer(t *testing.T) {
	f := &flood{chunk: "éé", times: 100, ended: make(chan error, 8)}
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(f, 4, 4)}, func(c *gateway.Config) {
		c.Limits = gateway.Limits{MaxAnswerBytes: 11} // 5½ characters of 2 bytes
	})
	ctx := ctxFor(t)
	cancelled := func(api string) {
		t.Helper()
		select {
		case err := <-f.ended:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("%s: the model ended with %v, want cancelled", api, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the model of a cut answer was not cancelled", api)
		}
	}
	want := strings.Repeat("é", 5)

	resp := n.post(ctx, "/v1/completion", form(userInput("hi")))
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || got != want+"\n\n[The answer was cut here: it reached the limit of 11 bytes.]\n" {
		t.Errorf("Agent API: %d %q", resp.StatusCode, got)
	}
	cancelled("Agent API")

	resp = n.postOpenAI(ctx, openaiBody(false, "hi"))
	var completion struct {
		Choices []struct {
			Message      struct{ Content string }
			FinishReason string `json:"finish_reason"`
		}
	}
	if err := json.Unmarshal([]byte(readAll(t, resp)), &completion); err != nil || len(completion.Choices) != 1 ||
		completion.Choices[0].Message.Content != want || completion.Choices[0].FinishReason != "length" {
		t.Errorf("OpenAI API: %+v %v", completion, err)
	}
	cancelled("OpenAI API")

	resp = n.postOpenAI(ctx, openaiBody(true, "hi"))
	var text strings.Builder
	finish, done := "", false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			done = true
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta        struct{ Content string }
				FinishReason *string `json:"finish_reason"`
			}
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil || len(chunk.Choices) != 1 {
			t.Fatalf("event %q: %v", data, err)
		}
		text.WriteString(chunk.Choices[0].Delta.Content)
		if fr := chunk.Choices[0].FinishReason; fr != nil {
			finish = *fr
		}
	}
	resp.Body.Close()
	if text.String() != want || finish != "length" || !done {
		t.Errorf("OpenAI stream: %q, finish_reason %q, [DONE] %v", text.String(), finish, done)
	}
	cancelled("OpenAI stream")

	if got := n.limitHits("answer"); got != 3 {
		t.Errorf("troupe_limit_hits_total{limit=\"answer\"} = %v, want 3", got)
	}
	if got := metric(t, n.reg, "troupe_chats_total", "outcome", "cut"); got != 3 {
		t.Errorf("troupe_chats_total{outcome=\"cut\"} = %v, want 3", got)
	}
}

// stall is a model that writes nothing until it is cancelled.
type stall struct{}

func (stall) Generate(ctx context.Context, _ *actors.ChatRequest, _ func(string) error) error {
	<-ctx.Done()
	return ctx.Err()
}

// A chat that runs past CHAT_TIMEOUT gets a 504 with a sentence that says
// so in both APIs, and is counted.
func TestLimitOfAChatsTime(t *testing.T) {
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(stall{}, 4, 4)}, func(c *gateway.Config) {
		c.ChatTimeout = 100 * time.Millisecond
	})
	ctx := ctxFor(t)
	resp := n.post(ctx, "/v1/completion", form(userInput("hi")))
	if got := readAll(t, resp); resp.StatusCode != http.StatusGatewayTimeout || got != "Error: the chat ran past its time limit.\n" {
		t.Errorf("Agent API: %d %q", resp.StatusCode, got)
	}
	resp = n.postOpenAI(ctx, openaiBody(true, "hi"))
	if e := decodeError(t, resp); resp.StatusCode != http.StatusGatewayTimeout || e.Error.Message != "The chat ran past its time limit." || e.Error.Type != "server_error" {
		t.Errorf("OpenAI API: %d %+v", resp.StatusCode, e.Error)
	}
	if got := n.limitHits("chat_timeout"); got != 2 {
		t.Errorf("troupe_limit_hits_total{limit=\"chat_timeout\"} = %v, want 2", got)
	}
	if got := metric(t, n.reg, "troupe_chats_total", "outcome", "timed_out"); got != 2 {
		t.Errorf("troupe_chats_total{outcome=\"timed_out\"} = %v, want 2", got)
	}
}

// trickle writes s to c a byte at a time, every gap, until it is all
// written, a write fails or stop is closed; it returns when it has ended.
func trickle(c net.Conn, s string, gap time.Duration, stop <-chan struct{}) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(gap)
		defer tick.Stop()
		for i := range len(s) {
			if _, err := c.Write([]byte{s[i]}); err != nil {
				return
			}
			select {
			case <-tick.C:
			case <-stop:
				return
			}
		}
	}()
	return done
}

// closedWithin reads c until the server closes it, and fails the test if
// that takes longer than limit. It returns what was read.
func closedWithin(t *testing.T, c net.Conn, limit time.Duration, what string) string {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(limit))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("%s: the connection was still open after %v", what, limit)
	}
	return string(b)
}

// A client that sends its request's head or body a byte at a time, or
// nothing, or keeps a connection idle, holds it no longer than the limit
// for that; meanwhile other chats are served. Each limit is counted.
func TestSlowClientsAreCutOff(t *testing.T) {
	g := newGate()
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)}, func(c *gateway.Config) {
		c.Limits = gateway.Limits{HeaderTimeout: 300 * time.Millisecond, BodyTimeout: 600 * time.Millisecond,
			IdleTimeout: 300 * time.Millisecond, MaxHeaderBytes: 1 << 10}
	})
	body := form(userInput("slow")).Encode()
	head := fmt.Sprintf("POST /v1/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n", len(body))
	stop := make(chan struct{})
	var trickles []<-chan struct{}
	t.Cleanup(func() {
		close(stop)
		for _, done := range trickles {
			<-done
		}
	})
	// The bound is the limit plus a generous margin for a loaded machine;
	// a client that is never cut off fails the test, however slow.
	const bound = 5 * time.Second

	slowHead := n.dial()
	trickles = append(trickles, trickle(slowHead, head+body, 20*time.Millisecond, stop))
	slowBody := n.dial()
	if _, err := io.WriteString(slowBody, head); err != nil {
		t.Fatal(err)
	}
	trickles = append(trickles, trickle(slowBody, body, 20*time.Millisecond, stop))
	silent := n.dial()
	idle := n.dial()
	if _, err := io.WriteString(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// A head that comes a byte at a time but whole in time is served, as
	// is one whose lines end with LF alone.
	slowInTime := n.dial()
	inTime := trickle(slowInTime, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", time.Millisecond, stop)
	trickles = append(trickles, inTime)
	lf := n.dial()
	if _, err := io.WriteString(lf, "GET /health HTTP/1.1\nHost: x\nConnection: close\n\n"); err != nil {
		t.Fatal(err)
	}
	bigHead := n.dial()
	if _, err := io.WriteString(bigHead, "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: "+strings.Repeat("b", 8<<10)+"\r\n\r\n"); err != nil {
		t.Fatal(err)
	}

	// A normal chat, served while the slow clients hold their connections;
	// its client then closes its connection, which no limit cut.
	resp := n.post(ctxFor(t), "/v1/completion", form(userInput("hi")))
	<-g.started
	g.release <- struct{}{}
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || got != "hi!" {
		t.Fatalf("a chat beside slow clients: %d %q", resp.StatusCode, got)
	}
	gateway.WaitHandedBack(t)
	http.DefaultClient.CloseIdleConnections()

	// net/http answers a head cut short by its time limit with a 400.
	if got := closedWithin(t, slowHead, bound, "a head sent a byte at a time"); got != "" && !strings.HasPrefix(got, "HTTP/1.1 400 ") {
		t.Errorf("a head sent a byte at a time was answered %q", got)
	}
	if got := closedWithin(t, slowBody, bound, "a body sent a byte at a time"); !strings.HasPrefix(got, "HTTP/1.1 408 ") ||
		!strings.HasSuffix(got, "\r\n\r\nThe request did not arrive within 600ms.\n") {
		t.Errorf("a body sent a byte at a time was answered %q", got)
	}
	closedWithin(t, silent, bound, "a connection that sends nothing")
	for _, c := range []net.Conn{slowInTime, lf} {
		if got := closedWithin(t, c, bound, "a head in time"); !strings.HasPrefix(got, "HTTP/1.1 204 ") {
			t.Errorf("a head in time was answered %q", got)
		}
	}
	if got := closedWithin(t, idle, bound, "an idle kept-alive connection"); !strings.HasPrefix(got, "HTTP/1.1 204 ") {
		t.Errorf("the idle connection's request was answered %q", got)
	}
	if got := closedWithin(t, bigHead, bound, "a head too large"); !strings.HasPrefix(got, "HTTP/1.1 431 ") {
		t.Errorf("a head too large was answered %q", got)
	}
	want := map[string]float64{"header_timeout": 1, "body_timeout": 1, "idle_timeout": 2, "header_size": 1}
	if runtime.GOOS != "linux" {
		// Without the gate, net/http gives a new connection its head's
		// time from the start.
		want["header_timeout"], want["idle_timeout"] = 2, 1
	}
	for limit, want := range want {
		if got := n.limitHits(limit); got != want {
			t.Errorf("troupe_limit_hits_total{limit=%q} = %v, want %v", limit, got, want)
		}
	}
	if got := metric(t, n.reg, "troupe_chat_bad_requests_total", "reason", "body_timeout"); got != 1 {
		t.Errorf("troupe_chat_bad_requests_total{reason=\"body_timeout\"} = %v, want 1", got)
	}
}

// streamChat starts a chat on a connection of its own, with a transport of
// its own, and reads its first chunk: the chat streams, taken over from
// net/http.
func streamChat(t *testing.T, n *node, text string) (*http.Response, *bufio.Reader, *http.Transport) {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	req, _ := http.NewRequestWithContext(ctxFor(t), http.MethodPost, n.http.URL+"/v1/completion", strings.NewReader(form(userInput(text)).Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	first := make([]byte, len(text))
	if _, err := io.ReadFull(r, first); err != nil || string(first) != text {
		t.Fatalf("first chunk %q, %v", first, err)
	}
	select {
	case <-n.hijacked:
	case <-time.After(10 * time.Second):
		t.Fatal("the streaming answer's connection was not taken over")
	}
	return resp, r, tr
}

// At MAX_CONNECTIONS, a new connection is refused with a short 503 while
// every connection serves a chat, and the chats streaming go on; once a
// connection waits idle, a new one takes its place. Taken-over streams
// count, and give their place back when they end.
func TestConnectionLimit(t *testing.T) {
	g := newGate()
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)}, func(c *gateway.Config) {
		c.Limits = gateway.Limits{MaxConnections: 2}
	})
	respA, a, trA := streamChat(t, n, "a")
	respB, b, trB := streamChat(t, n, "b")
	if serving, waiting := n.connections(); serving != 2 || waiting != 0 {
		t.Fatalf("connections: %d serving, %d waiting; want the two streams serving", serving, waiting)
	}

	refused := n.dial()
	got := closedWithin(t, refused, 5*time.Second, "a connection over the limit")
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(got)), nil)
	if err != nil {
		t.Fatalf("a connection over the limit was answered %q: %v", got, err)
	}
	if msg := readAll(t, resp); resp.StatusCode != http.StatusServiceUnavailable || !resp.Close || resp.Header.Get("Retry-After") != "1" ||
		msg != "This node has too many connections open; please try again shortly.\n" {
		t.Fatalf("a connection over the limit was answered %d %q (Connection: close %v)", resp.StatusCode, msg, resp.Close)
	}
	if got := n.limitHits("connections"); got != 1 {
		t.Fatalf("troupe_limit_hits_total{limit=\"connections\"} = %v, want 1", got)
	}

	// The streams were not disturbed.
	for range 2 {
		<-g.started
	}
	g.release <- struct{}{}
	g.release <- struct{}{}
	for _, s := range []struct {
		r    *bufio.Reader
		resp *http.Response
		want string
	}{{a, respA, "!"}, {b, respB, "!"}} {
		rest, err := io.ReadAll(s.r)
		s.resp.Body.Close()
		if err != nil || string(rest) != s.want {
			t.Fatalf("a stream at the limit went on with %q, %v", rest, err)
		}
	}
	// Their connections went back to the HTTP server, kept alive: waiting.
	waitFor(t, func() bool { s, w := n.connections(); return s == 0 && w == 2 }, "the streams' connections waiting")

	// A new chat takes the place of the connection that waited longest.
	resp = n.post(ctxFor(t), "/v1/completion", form(userInput("c")))
	<-g.started
	g.release <- struct{}{}
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || got != "c!" {
		t.Fatalf("a chat at the limit with idle connections: %d %q", resp.StatusCode, got)
	}
	if got := metric(t, n.reg, "troupe_http_connections_reclaimed_total", "", ""); got < 1 {
		t.Fatalf("troupe_http_connections_reclaimed_total = %v, want at least 1", got)
	}
	// Every place comes back once the clients close their connections.
	http.DefaultClient.CloseIdleConnections()
	trA.CloseIdleConnections()
	trB.CloseIdleConnections()
	waitFor(t, func() bool { s, w := n.connections(); return s+w == 0 }, "every connection closed and counted out")
}

// Slow clients at the limit cannot shut out a chat: the connection that has
// waited longest for its request makes room.
func TestSlowClientsMakeRoomAtTheLimit(t *testing.T) {
	g := newGate()
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)}, func(c *gateway.Config) {
		c.Limits = gateway.Limits{MaxConnections: 3}
	})
	// The first sends nothing, the others the start of a head: those move
	// to the back of the line when their bytes come, the first stays the
	// one that waited longest.
	var slow []net.Conn
	for i := range 3 {
		c := n.dial()
		if i > 0 {
			if _, err := io.WriteString(c, "POST /v1/completion HTTP/1.1\r\nHo"); err != nil {
				t.Fatal(err)
			}
		}
		slow = append(slow, c)
		waitFor(t, func() bool { _, w := n.connections(); return w == i+1 }, "the slow connection counted")
	}
	resp := n.post(ctxFor(t), "/v1/completion", form(userInput("hi")))
	<-g.started
	g.release <- struct{}{}
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || got != "hi!" {
		t.Fatalf("a chat with slow clients at the limit: %d %q", resp.StatusCode, got)
	}
	closedWithin(t, slow[0], 5*time.Second, "the slow client that waited longest")
	if got := metric(t, n.reg, "troupe_http_connections_reclaimed_total", "", ""); got != 1 {
		t.Fatalf("troupe_http_connections_reclaimed_total = %v, want 1", got)
	}
	if got := n.limitHits("connections"); got != 0 {
		t.Fatalf("troupe_limit_hits_total{limit=\"connections\"} = %v, want 0", got)
	}
	http.DefaultClient.CloseIdleConnections()
}

// torrent is a model that writes large chunks until it is cancelled.
type torrent struct{}

func (torrent) Generate(ctx context.Context, _ *actors.ChatRequest, emit func(string) error) error {
	chunk := strings.Repeat("t", 64<<10)
	for ctx.Err() == nil {
		if err := emit(chunk); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// A client that sends a chat and never reads its answer holds its
// connection no longer than the chat's time limit and its grace, and the
// answer waiting for it is bounded by the answer's size limit.
func TestClientThatDoesNotReadIsCutOff(t *testing.T) {
	gateway.SetWriteGrace(t, 100*time.Millisecond)
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(torrent{}, 4, 4)}, func(c *gateway.Config) {
		c.ChatTimeout = 300 * time.Millisecond
		c.Limits = gateway.Limits{MaxAnswerBytes: 32 << 20} // more than the sockets' buffers hold
	})
	c := n.dial()
	body := form(userInput("hi")).Encode()
	if _, err := fmt.Fprintf(c, "POST /v1/completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s", len(body), body); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { s, _ := n.connections(); return s == 1 }, "the chat serving")
	waitFor(t, func() bool { s, w := n.connections(); return s+w == 0 }, "the connection of a client that reads nothing closed")
	// Which limit ended the chat depends on how fast the model wrote: its
	// time, or its answer's size; either way the write waiting for the
	// client gave up.
	timedOut := metric(t, n.reg, "troupe_chats_total", "outcome", "timed_out")
	cut := metric(t, n.reg, "troupe_chats_total", "outcome", "cut")
	if timedOut+cut != 1 {
		t.Fatalf("chats timed out %v, cut %v; want one chat ended by a limit", timedOut, cut)
	}
}

// Connections that wait for a request, sending nothing or a head a byte at
// a time, cost the node no goroutine and a few hundred bytes each: the gate
// holds them, not net/http (16 KiB each). Measured: about 1.4 KiB a
// connection, both ends in this process.
func TestWaitingConnectionsMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("net/http holds waiting connections where there is no gate (Linux's epoll)")
	}
	const count, budget = 1000, 3 << 10
	n := startNode(t, actors.PipelineSpec{Model: modelOf(newGate(), 2, 0)})
	before, goroutines := liveMemory(), runtime.NumGoroutine()
	for i := range count {
		c := n.dial()
		if i%2 == 1 {
			if _, err := io.WriteString(c, "POST /v1/completion HTTP/1.1\r\nHo"); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitFor(t, func() bool { _, w := n.connections(); return w == count }, "the connections counted")
	after := liveMemory()
	per := float64(after-before) / count
	grown := runtime.NumGoroutine() - goroutines
	t.Logf("a waiting connection: %.2f KiB, both ends; %d goroutines more for %d connections", per/1024, grown, count)
	if grown > count/20 {
		t.Errorf("%d goroutines more for %d waiting connections: net/http holds them", grown, count)
	}
	if per > budget {
		t.Errorf("a waiting connection costs %.2f KiB, over its budget of %d KiB", per/1024, budget>>10)
	}
}

// liveMemory returns the live heap, after collections, and the stacks in
// use.
func liveMemory() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}
