package openai

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/troupe-llm/troupe/actors"
)

// chat is one Generate call across its attempts.
type chat struct {
	m    *Model
	req  *request
	emit func(string) error
	out  *actors.Output
	// committed is set once text or a tool call has gone to the user:
	// from then on a failure ends the chat instead of a retry.
	committed bool
}

// result is how one attempt ended.
type result struct {
	err        error
	retry      bool          // the failure may pass: worth another attempt
	retryAfter time.Duration // how long the server asked us to wait
}

// attempt sends the request once and streams the answer to the user.
func (c *chat) attempt(ctx context.Context) result {
	// The attempt's own context: the watchdog cancels it when the server
	// falls silent, which closes the connection and unblocks the body
	// read, and the cause says which silence it was.
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	wd := startWatchdog(cancel, c.m.firstTokenTimeout, c.m.idleTimeout)
	defer wd.stop()

	up := &upstream{drainCancel: func() { cancel(errDrained) }}
	opts := append(slices.Clip(c.req.opts), option.WithMiddleware(up.observe))
	stream := c.m.svc.NewStreaming(actx, c.req.params, opts...)
	defer stream.Close()

	var finish string
	events := 0
	for stream.Next() {
		events++
		wd.event()
		chunk := stream.Current()
		if chunk.JSON.Usage.Valid() {
			c.out.Usage(int(chunk.Usage.PromptTokens), int(chunk.Usage.CompletionTokens))
		}
		for i := range chunk.Choices {
			choice := &chunk.Choices[i]
			if choice.Index != 0 {
				continue // n > 1 is not asked for; a chat has one answer
			}
			if err := c.delta(&choice.Delta, wd); err != nil {
				return result{err: err}
			}
			if choice.FinishReason != "" {
				finish = choice.FinishReason
			}
		}
	}
	err := stream.Err()
	if err == nil && (up.sawDone() || finish != "") {
		// Without [DONE] a finish reason still marks a whole answer:
		// older llama.cpp servers end so.
		if finish != "" {
			c.out.Finish(finish)
		}
		return result{}
	}
	return c.failure(context.Cause(actx), err, up, events)
}

// delta forwards what one delta carries to the user.
func (c *chat) delta(d *openai.ChatCompletionChunkChoiceDelta, wd *watchdog) error {
	if d.Content != "" || d.Refusal != "" || len(d.ToolCalls) > 0 || reasoning(d) {
		wd.firstToken()
	}
	if d.Content != "" {
		c.committed = true
		if err := c.emit(d.Content); err != nil {
			return err
		}
	}
	if d.Refusal != "" {
		// A refusal comes instead of content; the user reads it the same.
		c.committed = true
		if err := c.emit(d.Refusal); err != nil {
			return err
		}
	}
	if len(d.ToolCalls) > 0 {
		c.committed = true
		// As received: the client assembles the calls from the deltas.
		if err := c.out.ToolCalls(d.JSON.ToolCalls.Raw()); err != nil {
			return err
		}
	}
	return nil
}

// reasoning reports whether a delta carries a reasoning model's thoughts
// (vLLM's and DeepSeek's reasoning_content, Ollama's and OpenRouter's
// reasoning). Troupe has no channel for them yet, but they show that the
// server is working, which is what the timeouts are about.
func reasoning(d *openai.ChatCompletionChunkChoiceDelta) bool {
	for _, k := range []string{"reasoning_content", "reasoning"} {
		if f, ok := d.JSON.ExtraFields[k]; ok {
			if raw := f.Raw(); raw != "" && raw != "null" && raw != `""` {
				return true
			}
		}
	}
	return false
}

// watchdog cancels an attempt when the server is silent for too long:
// first the wait for the first delta, then the gaps between events.
type watchdog struct {
	cancel  context.CancelCauseFunc
	idle    time.Duration
	timer   *time.Timer // nil when the current phase has no timeout
	started bool        // the first delta arrived
}

func startWatchdog(cancel context.CancelCauseFunc, first, idle time.Duration) *watchdog {
	w := &watchdog{cancel: cancel, idle: idle}
	if first > 0 {
		w.timer = time.AfterFunc(first, func() { cancel(&silence{d: first, first: true}) })
	}
	return w
}

// firstToken switches to the idle timeout at the first delta.
func (w *watchdog) firstToken() {
	if w.started {
		return
	}
	w.started = true
	w.stop()
	w.timer = nil
	if w.idle > 0 {
		idle := w.idle
		w.timer = time.AfterFunc(idle, func() { w.cancel(&silence{d: idle}) })
	}
}

// event restarts the idle timeout. Before the first delta events do not
// count: a server may send the role chunk at once and then take its time.
func (w *watchdog) event() {
	if w.started && w.timer != nil {
		w.timer.Reset(w.idle)
	}
}

func (w *watchdog) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}

// silence is the cause of an attempt cancelled by the watchdog.
type silence struct {
	d     time.Duration
	first bool
}

func (s *silence) Error() string {
	if s.first {
		return fmt.Sprintf("no first token within first_token_timeout %v", s.d)
	}
	return fmt.Sprintf("no event within idle_timeout %v", s.d)
}

// maxErrorBody bounds how much of an error answer is kept for the log.
const maxErrorBody = 8 << 10

// upstream is what one attempt saw of the server's answer. The SDK's error
// keeps neither the status of a non-JSON error body nor whether a stream
// ended with [DONE], so a middleware collects them. It runs on the
// attempt's goroutine, before NewStreaming returns.
type upstream struct {
	sent        bool // the request was built and handed to the transport
	status      int
	header      http.Header
	body        []byte // an error answer's start
	sse         bool   // the answer is text/event-stream
	stream      *doneSniffer
	drainCancel func()
}

func (u *upstream) observe(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	u.sent = true
	res, err := next(req)
	if err != nil || res == nil {
		return res, err
	}
	u.status, u.header = res.StatusCode, res.Header
	if res.StatusCode >= 300 {
		body, _ := io.ReadAll(io.LimitReader(res.Body, maxErrorBody))
		_ = res.Body.Close()
		u.body = body
		res.Body = io.NopCloser(bytes.NewReader(body))
		return res, nil
	}
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	u.sse = mt == "text/event-stream"
	u.stream = &doneSniffer{ReadCloser: res.Body, cancel: u.drainCancel}
	res.Body = u.stream
	return res, nil
}

func (u *upstream) sawDone() bool { return u.stream != nil && u.stream.done }

// drainWait bounds reading the end of a body after [DONE]: the SDK closes
// the body at [DONE], before the HTTP end of the body that follows it, and
// Go's transport drops a connection closed before its body's end instead
// of keeping it for the next chat.
const drainWait = 100 * time.Millisecond

// errDrained is the cause of an attempt cancelled because the end of the
// body did not follow [DONE] in time.
var errDrained = fmt.Errorf("the body did not end within %v of [DONE]", drainWait)

// doneSniffer passes a stream's body through and notes a "data: [DONE]"
// line.
type doneSniffer struct {
	io.ReadCloser
	cancel func()
	buf    [16]byte // the start of the current line
	n      int
	done   bool
	eof    bool
}

func (d *doneSniffer) Read(p []byte) (int, error) {
	n, err := d.ReadCloser.Read(p)
	d.scan(p[:n])
	if err == io.EOF {
		d.eof = true
	}
	return n, err
}

func (d *doneSniffer) scan(b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		part := b
		if i >= 0 {
			part = b[:i]
		}
		d.n += copy(d.buf[d.n:], part)
		if i < 0 {
			return
		}
		if isDone(d.buf[:d.n]) {
			d.done = true
		}
		d.n = 0
		b = b[i+1:]
	}
}

// isDone reports whether a line is the data line of [DONE], as the SDK
// reads it: "data:", an optional space, then [DONE].
func isDone(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("data:"))
	if !ok {
		return false
	}
	rest = bytes.TrimPrefix(rest, []byte(" "))
	return bytes.HasPrefix(rest, []byte("[DONE]"))
}

func (d *doneSniffer) Close() error {
	if d.done && !d.eof {
		t := time.AfterFunc(drainWait, d.cancel)
		_, _ = io.Copy(io.Discard, io.LimitReader(d.ReadCloser, maxErrorBody))
		t.Stop()
	}
	return d.ReadCloser.Close()
}
