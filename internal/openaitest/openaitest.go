// Package openaitest is a scriptable fake of an OpenAI-compatible upstream
// (OpenAI, vLLM, llama.cpp's llama-server, Ollama) for tests and benchmarks
// of clients of POST /v1/chat/completions, such as the official SDK
// github.com/openai/openai-go/v3.
//
// The answers are written as the real servers write them, byte for byte in
// format (field order, separators, escapes, headers, where the usage and
// the last delta travel, how errors look before and during a stream); see
// Dialect for what differs between them. A stream is
//
//	data: {"id":"chatcmpl-…","object":"chat.completion.chunk",…,"choices":[{"index":0,"delta":{"role":"assistant","content":"",…},"logprobs":null,"finish_reason":null}]}
//
//	data: {…"delta":{"content":"Hello"}…}
//
//	data: {…"delta":{},"logprobs":null,"finish_reason":"stop"}]}
//
//	data: {…"choices":[],"usage":{"prompt_tokens":…,"completion_tokens":…,"total_tokens":…}}
//
//	data: [DONE]
//
// with the usage chunk only when the request set
// stream_options.include_usage, every event ended by a blank line and
// flushed on its own. A request without "stream":true gets one
// chat.completion body with choices[0].message, finish_reason and usage.
//
// The server answers each request with the next scripted Response (Default
// when the script is empty), records what it received (Requests) and when
// each exchange ended and whether the client hung up first, which tests of
// cancellation assert on (WaitClosed). It notices a client that goes away
// at once, even while it waits or hangs. The SDK retries 408, 409, 429 and
// 5xx answers (twice by default), each retry taking the next Response.
package openaitest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// ChatPath is the one route the server answers.
const ChatPath = "/v1/chat/completions"

// Server is a running fake upstream. Its methods are safe for concurrent
// use; the Wait methods fail the test, so call them from its goroutine.
type Server struct {
	// URL is the base URL for clients, ending in /v1 (no slash), e.g.
	// http://127.0.0.1:41234/v1: what option.WithBaseURL takes.
	URL string

	ts   *httptest.Server
	stop chan struct{} // closed when the test ends: waits and hangs return

	mu      sync.Mutex
	dialect Dialect
	script  []Response
	reqs    []*Request
	conns   map[net.Conn]*connRecord
	changed chan struct{} // closed and replaced at every change of reqs
}

// Request is what the server received, and how the exchange ended.
type Request struct {
	// Method, Path and Header are the request's.
	Method string
	Path   string
	Header http.Header
	// Body is the raw body; JSON is it decoded when it is a JSON object.
	Body []byte
	JSON map[string]any
	// Stream and IncludeUsage are "stream" and
	// "stream_options":{"include_usage"} of the body.
	Stream       bool
	IncludeUsage bool

	// Arrived is when the request's headers were read.
	Arrived time.Time
	// Closed is when the exchange ended: the answer was complete, the
	// server saw the client go away (context cancelled or a write
	// failed), or the server closed. Zero while it goes on.
	Closed time.Time
	// HungUp reports that the client went away before the answer was
	// complete.
	HungUp bool
	// ConnClosed is when the server saw the request's TCP connection
	// close; zero while it is open, idle in a client's pool included.
	ConnClosed time.Time
}

// Done reports whether the exchange has ended (Closed is set).
func (r Request) Done() bool { return !r.Closed.IsZero() }

// connRecord collects the requests served on one connection.
type connRecord struct{ reqs []*Request }

type connKey struct{}

// New starts a fake upstream on 127.0.0.1 that answers with script, in
// order, and then with Default. It is closed when the test ends: waits and
// hangs in progress return and client connections are cut.
func New(tb testing.TB, script ...Response) *Server {
	tb.Helper()
	s := &Server{
		stop:    make(chan struct{}),
		dialect: OpenAI,
		script:  slices.Clone(script),
		conns:   make(map[net.Conn]*connRecord),
		changed: make(chan struct{}),
	}
	s.ts = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.ts.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		rec := &connRecord{}
		s.mu.Lock()
		s.conns[c] = rec
		s.mu.Unlock()
		return context.WithValue(ctx, connKey{}, rec)
	}
	s.ts.Config.ConnState = func(c net.Conn, st http.ConnState) {
		if st != http.StateClosed && st != http.StateHijacked {
			return
		}
		now := time.Now()
		s.update(func() {
			if rec := s.conns[c]; rec != nil {
				for _, r := range rec.reqs {
					r.ConnClosed = now
				}
			}
			delete(s.conns, c)
		})
	}
	s.ts.Start()
	s.URL = s.ts.URL + "/v1"
	tb.Cleanup(func() {
		close(s.stop)
		s.ts.CloseClientConnections()
		s.ts.Close()
	})
	return s
}

// SetDialect sets the dialect of answers whose Dialect is SameDialect, of
// Default, and of the server's own errors (bad request, unknown route).
func (s *Server) SetDialect(d Dialect) {
	if d == SameDialect {
		d = OpenAI
	}
	s.mu.Lock()
	s.dialect = d
	s.mu.Unlock()
}

// Enqueue appends responses to the script.
func (s *Server) Enqueue(rs ...Response) {
	s.mu.Lock()
	s.script = append(s.script, rs...)
	s.mu.Unlock()
}

// Pending is the number of scripted responses not yet served.
func (s *Server) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.script)
}

// Requests returns the requests received so far, in order of arrival.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapshot()
}

func (s *Server) snapshot() []Request {
	out := make([]Request, len(s.reqs))
	for i, r := range s.reqs {
		out[i] = *r
		out[i].Header = r.Header.Clone()
	}
	return out
}

// Wait waits until cond holds for the requests received so far, in order
// of arrival, and returns them; it fails the test after timeout. cond is
// called at every change (a request arriving, ending, its connection
// closing), with the server locked: do not call the server from it.
func (s *Server) Wait(tb testing.TB, timeout time.Duration, cond func([]Request) bool) []Request {
	tb.Helper()
	return s.wait(tb, timeout, "the condition", cond)
}

// WaitRequests waits until at least n requests have arrived and returns
// them all; it fails the test after timeout.
func (s *Server) WaitRequests(tb testing.TB, n int, timeout time.Duration) []Request {
	tb.Helper()
	return s.wait(tb, timeout, fmt.Sprintf("%d requests", n), func(rs []Request) bool { return len(rs) >= n })
}

// WaitClosed waits until the i-th request (from 0) has arrived and its
// exchange has ended, and returns it; it fails the test after timeout.
func (s *Server) WaitClosed(tb testing.TB, i int, timeout time.Duration) Request {
	tb.Helper()
	rs := s.wait(tb, timeout, fmt.Sprintf("request %d to end", i), func(rs []Request) bool { return i < len(rs) && rs[i].Done() })
	return rs[i]
}

func (s *Server) wait(tb testing.TB, timeout time.Duration, what string, cond func([]Request) bool) []Request {
	tb.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		s.mu.Lock()
		rs, changed := s.snapshot(), s.changed
		ok := cond(rs)
		s.mu.Unlock()
		if ok {
			return rs
		}
		select {
		case <-changed:
		case <-timer.C:
			tb.Fatalf("openaitest: waited %v for %s; %d requests arrived", timeout, what, len(rs))
			return nil
		}
	}
}

// update changes the records under the lock and wakes the waiters.
func (s *Server) update(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f()
	close(s.changed)
	s.changed = make(chan struct{})
}

// next takes the next scripted response.
func (s *Server) next() (Response, Dialect) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := Default
	if len(s.script) > 0 {
		r = s.script[0]
		s.script = s.script[1:]
	}
	d := r.Dialect
	if d == SameDialect {
		d = s.dialect
	}
	return r, d
}

func (s *Server) serverDialect() Dialect {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dialect
}

// exchange is one request being answered.
type exchange struct {
	s   *Server
	w   http.ResponseWriter
	rc  *http.ResponseController
	ctx context.Context
	req *Request

	complete bool      // the answer was written in full
	goneAt   time.Time // when the client was seen going away
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	rec := &Request{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone(), Arrived: time.Now()}
	s.update(func() {
		s.reqs = append(s.reqs, rec)
		if c, ok := r.Context().Value(connKey{}).(*connRecord); ok {
			c.reqs = append(c.reqs, rec)
		}
	})
	x := &exchange{s: s, w: w, rc: http.NewResponseController(w), ctx: r.Context(), req: rec}
	defer x.end()

	body, err := io.ReadAll(r.Body)
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		doc = nil
	}
	stream, _ := doc["stream"].(bool)
	opts, _ := doc["stream_options"].(map[string]any)
	includeUsage, _ := opts["include_usage"].(bool)
	s.update(func() {
		rec.Body, rec.JSON, rec.Stream, rec.IncludeUsage = body, doc, stream, includeUsage
	})
	if err != nil {
		x.hungUp()
		return
	}

	if r.Method != http.MethodPost || r.URL.Path != ChatPath {
		x.notFound(r)
		return
	}
	if bad := validate(doc); bad != nil {
		d := s.serverDialect()
		x.writeBody(http.StatusBadRequest, contentType(d, false), nil, errorBody(d, http.StatusBadRequest, bad))
		return
	}
	resp, d := s.next()
	x.answer(resp, d, doc, stream, includeUsage)
}

// end records how the exchange ended.
func (x *exchange) end() {
	now := time.Now()
	x.s.update(func() {
		if x.req.Closed.IsZero() {
			x.req.Closed = now
			if !x.goneAt.IsZero() {
				x.req.Closed = x.goneAt
			}
		}
		x.req.HungUp = !x.complete && !x.goneAt.IsZero()
	})
}

// hungUp notes that the client went away (the first time only), unless
// it is the server closing that cut the connection.
func (x *exchange) hungUp() {
	select {
	case <-x.s.stop:
		return
	default:
	}
	if x.goneAt.IsZero() {
		x.goneAt = time.Now()
	}
}

// sleep waits d and reports whether to go on: false when the client went
// away or the server is closing.
func (x *exchange) sleep(d time.Duration) bool {
	if d <= 0 {
		return x.alive()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return x.alive()
	case <-x.ctx.Done():
		x.hungUp()
		return false
	case <-x.s.stop:
		return false
	}
}

func (x *exchange) alive() bool {
	if x.ctx.Err() != nil {
		x.hungUp()
		return false
	}
	select {
	case <-x.s.stop:
		return false
	default:
		return true
	}
}

// hang holds the exchange until the client goes away or the server closes.
func (x *exchange) hang() {
	select {
	case <-x.ctx.Done():
		x.hungUp()
	case <-x.s.stop:
	}
}

// write sends p and flushes it.
func (x *exchange) write(p []byte) bool {
	if _, err := x.w.Write(p); err != nil {
		x.hungUp()
		return false
	}
	if err := x.rc.Flush(); err != nil {
		x.hungUp()
		return false
	}
	return true
}

func (x *exchange) header(ctype string, extra map[string]string, d Dialect) {
	h := x.w.Header()
	h.Set("Content-Type", ctype)
	if d == OpenAI {
		h.Set("X-Request-Id", "req_"+random(32, hex))
		h.Set("Openai-Processing-Ms", "42")
	}
	for k, v := range extra {
		h.Set(k, v)
	}
}

// writeBody sends a whole non-streaming answer.
func (x *exchange) writeBody(status int, ctype string, extra map[string]string, body []byte) {
	x.header(ctype, extra, x.s.serverDialect())
	x.w.WriteHeader(status)
	if x.write(body) {
		x.complete = true
	}
}

func (x *exchange) notFound(r *http.Request) {
	d := x.s.serverDialect()
	switch d {
	case VLLM: // FastAPI's default
		x.writeBody(http.StatusNotFound, "application/json", nil, []byte(`{"detail":"Not Found"}`))
	case LlamaCpp:
		x.writeBody(http.StatusNotFound, contentType(d, false), nil,
			errorBody(d, http.StatusNotFound, &APIError{Message: "File Not Found"}))
	case Ollama: // gin's default
		x.writeBody(http.StatusNotFound, "text/plain", nil, []byte("404 page not found"))
	default:
		x.writeBody(http.StatusNotFound, contentType(d, false), nil, errorBody(d, http.StatusNotFound,
			&APIError{Message: "Invalid URL (" + r.Method + " " + r.URL.Path + ")"}))
	}
}

// validate answers what every server rejects before generating: a body
// that is not a JSON object, no messages, stream_options without stream.
func validate(doc map[string]any) *APIError {
	if doc == nil {
		return &APIError{Message: "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.)"}
	}
	msgs, ok := doc["messages"].([]any)
	switch {
	case !ok:
		return &APIError{Message: "Missing required parameter: 'messages'.", Param: "messages", Code: "missing_required_parameter"}
	case len(msgs) == 0:
		return &APIError{Message: "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", Param: "messages", Code: "empty_array"}
	}
	if stream, _ := doc["stream"].(bool); !stream && doc["stream_options"] != nil {
		return &APIError{Message: "The 'stream_options' parameter is only allowed when 'stream' is enabled.", Param: "stream_options"}
	}
	return nil
}

// answer serves a scripted response.
func (x *exchange) answer(resp Response, d Dialect, doc map[string]any, stream, includeUsage bool) {
	if resp.Hang && (resp.HangAfter < 0 || !stream) {
		x.hang()
		return
	}
	if resp.Error != nil || resp.Status >= 400 || (!stream && resp.StreamError != nil) {
		status, e := resp.Status, resp.Error
		if e == nil {
			e = resp.StreamError
		}
		if status == 0 {
			status = http.StatusInternalServerError
		}
		if !x.sleep(resp.FirstDelay) {
			return
		}
		x.header(contentType(d, false), resp.Header, d)
		x.w.WriteHeader(status)
		if x.write(errorBody(d, status, e)) {
			x.complete = true
		}
		return
	}

	a := newAnswer(resp, d, doc, includeUsage)
	status := resp.Status
	if status == 0 {
		status = http.StatusOK
	}
	if !stream {
		if !x.sleep(resp.FirstDelay + resp.Delay*time.Duration(a.pieces)) {
			return
		}
		x.header(contentType(d, false), resp.Header, d)
		x.w.WriteHeader(status)
		if x.write(a.body()) {
			x.complete = true
		}
		return
	}

	x.header(contentType(d, true), resp.Header, d)
	x.w.WriteHeader(status)
	if !x.write(nil) { // the headers, at once
		return
	}
	stopAt, stopping := -1, resp.StreamError != nil || resp.Hang
	switch {
	case resp.StreamError != nil:
		stopAt = max(resp.ErrorAfter, 0)
	case resp.Hang:
		stopAt = resp.HangAfter
	}
	sent, written := 0, 0
	delay := func() bool {
		if written == 0 {
			return x.sleep(resp.FirstDelay)
		}
		return x.sleep(resp.Delay)
	}
	for _, ev := range a.events() {
		if stopping && !ev.opening && (ev.final || sent+ev.pieces > stopAt) {
			if resp.StreamError == nil {
				x.hang()
				return
			}
			if !delay() || !x.event(resp, a.streamError(resp.StreamError)) {
				return
			}
			if d == VLLM && !resp.NoDone && !x.event(resp, []byte("[DONE]")) {
				return
			}
			x.complete = true
			return
		}
		if !delay() || !x.event(resp, ev.data) {
			return
		}
		written++
		sent += ev.pieces
	}
	if !resp.NoDone {
		if !x.sleep(resp.Delay) || !x.event(resp, []byte("[DONE]")) {
			return
		}
	}
	x.complete = true
}

// event writes one SSE data event, after a comment line when asked for and
// in pieces when asked for.
func (x *exchange) event(resp Response, data []byte) bool {
	if resp.Comments && !x.write([]byte(": keep-alive\n\n")) {
		return false
	}
	ev := make([]byte, 0, len(data)+8)
	ev = append(append(append(ev, "data: "...), data...), "\n\n"...)
	if !resp.SplitEvents {
		return x.write(ev)
	}
	for _, p := range split(ev) {
		if !x.write(p) {
			return false
		}
	}
	return true
}

// split cuts an event inside "data:", in the middle of its JSON (inside a
// multi-byte UTF-8 character when there is one) and between the two
// newlines that end it.
func split(ev []byte) [][]byte {
	cuts := []int{2}
	mid := len(ev) / 2
	for i := 6; i < len(ev)-2; i++ {
		if ev[i] >= 0xC0 { // a multi-byte character starts here
			mid = i + 1
			break
		}
	}
	if mid > 2 && mid < len(ev)-1 {
		cuts = append(cuts, mid)
	}
	cuts = append(cuts, len(ev)-1)
	var out [][]byte
	prev := 0
	for _, c := range cuts {
		if c > prev {
			out = append(out, ev[prev:c])
			prev = c
		}
	}
	return append(out, ev[prev:])
}

// newAnswer fills in what the response leaves to the dialect.
func newAnswer(resp Response, d Dialect, doc map[string]any, includeUsage bool) *answer {
	a := &answer{
		d:            d,
		id:           newID(d),
		created:      time.Now().Unix(),
		model:        resp.Model,
		fingerprint:  newFingerprint(d),
		includeUsage: includeUsage,
		finish:       resp.FinishReason,
		chunks:       resp.Chunks,
	}
	if a.model == "" {
		a.model, _ = doc["model"].(string)
	}
	if d == OpenAI {
		a.obfuscate = true
		if opts, ok := doc["stream_options"].(map[string]any); ok {
			if v, ok := opts["include_obfuscation"].(bool); ok && !v {
				a.obfuscate = false
			}
		}
	}
	a.pieces = len(resp.Chunks)
	for _, tc := range resp.ToolCalls {
		if tc.ID == "" {
			tc.ID = newToolID(d)
		}
		a.tools = append(a.tools, tc)
		a.pieces += len(tc.Arguments)
	}
	if a.finish == "" {
		a.finish = "stop"
		if len(a.tools) > 0 {
			a.finish = "tool_calls"
		}
	}
	if resp.Usage != nil {
		a.usage = *resp.Usage
	} else {
		a.usage = Usage{PromptTokens: promptTokens(doc), CompletionTokens: max(a.pieces, 1)}
	}
	return a
}

// promptTokens estimates a prompt's tokens: one per four characters of
// text and three per message.
func promptTokens(doc map[string]any) int {
	msgs, _ := doc["messages"].([]any)
	chars := 0
	for _, m := range msgs {
		m, _ := m.(map[string]any)
		switch c := m["content"].(type) {
		case string:
			chars += len(c)
		case []any:
			for _, part := range c {
				if p, ok := part.(map[string]any); ok {
					t, _ := p["text"].(string)
					chars += len(t)
				}
			}
		}
	}
	return (chars+3)/4 + 3*len(msgs)
}
