package openai

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// userAgent names the kind to the server, in its logs.
const userAgent = "troupe-openai"

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

// upstream is what one attempt saw of the server's answer.
type upstream struct {
	status int // 0: no answer
	header http.Header
	body   []byte // an error answer's start
	sse    bool   // the answer is text/event-stream
	events int    // events read, [DONE] not counted
}

// maxErrorBody bounds how much of an error answer is kept for the log.
const maxErrorBody = 8 << 10

// attempt sends the request once and streams the answer to the user.
func (c *chat) attempt(ctx context.Context) result {
	// The attempt's own context: the watchdog cancels it when the server
	// falls silent, which closes the connection and unblocks the body
	// read, and the cause says which silence it was.
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	wd := startWatchdog(cancel, c.m.firstTokenTimeout, c.m.idleTimeout)
	defer wd.stop()

	req, err := http.NewRequestWithContext(actx, http.MethodPost, c.m.endpoint, bytes.NewReader(c.req.body))
	if err != nil { // base_url was checked at New: not expected
		return result{err: &actors.Error{Code: actors.Code_CODE_INTERNAL, Reason: "the request to the model server could not be built", Err: err}}
	}
	req.Header = http.Header{
		"Content-Type": {"application/json"},
		"Accept":       {"text/event-stream, application/json"},
		"User-Agent":   {userAgent},
	}
	if key := *c.m.key; key != "" {
		req.Header["Authorization"] = []string{"Bearer " + string(key)}
	}
	up := &upstream{}
	res, err := c.m.client.Do(req)
	if err != nil {
		return c.failure(context.Cause(actx), err, up)
	}
	// Closing a body before its end closes the connection: on a failure,
	// an emit error and a cancel that is what stops the server.
	defer res.Body.Close()
	up.status, up.header = res.StatusCode, res.Header
	if res.StatusCode >= 300 {
		// The status says what happened; the body, what there is of it,
		// is for recognising the cause and for the log.
		up.body, _ = io.ReadAll(io.LimitReader(res.Body, maxErrorBody))
		return c.failure(context.Cause(actx), nil, up)
	}
	mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type"))
	up.sse = mt == "text/event-stream"

	sr := newSSEReader(res.Body)
	defer sr.release()
	var (
		ch     chunk
		finish string
		done   bool
	)
	for {
		typ, data, err := sr.next()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return c.failure(context.Cause(actx), err, up)
			}
			break
		}
		if isDone(data) {
			done = true
			break
		}
		up.events++
		wd.event()
		if string(typ) == "error" {
			return c.eventFailure(data)
		}
		if err := decodeChunk(data, &ch); err != nil {
			return c.failure(context.Cause(actx), err, up)
		}
		if ch.failed {
			return c.eventFailure(data)
		}
		if ch.usage {
			c.out.Usage(ch.promptTokens, ch.completionTokens)
		}
		for i := range ch.choices {
			choice := &ch.choices[i]
			if err := c.delta(choice, wd); err != nil {
				return result{err: err}
			}
			if choice.finish != "" {
				finish = choice.finish
			}
		}
	}
	if !done && finish == "" {
		// The body ended with neither [DONE] nor a finish reason.
		return c.failure(context.Cause(actx), nil, up)
	}
	if done {
		// Read the body to its end, so that the connection goes back to
		// the pool for the next chat: closed before its end, Go's
		// transport drops it. Only what follows [DONE] at once: a server
		// that holds the body open is not waited for.
		t := time.AfterFunc(drainWait, func() { cancel(errDrained) })
		_, _ = io.Copy(io.Discard, io.LimitReader(sr.r, maxErrorBody))
		t.Stop()
	}
	// Without [DONE] a finish reason still marks a whole answer: older
	// llama.cpp servers end so.
	if finish != "" {
		c.out.Finish(finish)
	}
	return result{}
}

// delta forwards what one delta carries to the user.
func (c *chat) delta(d *choice, wd *watchdog) error {
	if d.working() {
		wd.firstToken()
	}
	if d.content != "" {
		c.committed = true
		if err := c.emit(d.content); err != nil {
			return err
		}
	}
	if d.refusal != "" {
		// A refusal comes instead of content; the user reads it the same.
		c.committed = true
		if err := c.emit(d.refusal); err != nil {
			return err
		}
	}
	if hasToolCalls(d.toolCalls) {
		c.committed = true
		// As received: the client assembles the calls from the deltas.
		if err := c.out.ToolCalls(string(d.toolCalls)); err != nil {
			return err
		}
	}
	return nil
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

// drainWait bounds reading the end of a body after [DONE].
const drainWait = 100 * time.Millisecond

// errDrained is the cause of an attempt cancelled because the end of the
// body did not follow [DONE] in time.
var errDrained = fmt.Errorf("the body did not end within %v of [DONE]", drainWait)
