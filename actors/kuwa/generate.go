package kuwa

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Causes of the request's context ending early, told apart from the chat's
// own cancellation.
var (
	errFirstToken = errors.New("no answer from the Kuwa executor within first_token_timeout")
	errIdle       = errors.New("the Kuwa executor went silent for longer than idle_timeout")
)

// readSize is the read buffer: a read returns what has arrived, so this
// only bounds how much one emit carries.
const readSize = 32 << 10

// Generate implements actors.Model. It sends the chat to the executor and
// emits every read of the answer as it arrives. A read may end inside a
// UTF-8 sequence; the model host joins such pieces, so no bytes are held
// back here.
//
// Failures are *actors.Error values: 429, or 503 for "busy", are
// CODE_OVERLOADED; other 5xx, a redirect, a refused or broken connection
// are CODE_UNAVAILABLE; 4xx are CODE_INVALID_ARGUMENT; the first-token and
// idle timeouts are CODE_DEADLINE_EXCEEDED, as a gateway timing out an
// upstream is. Any 2xx is success, whatever the body says: Kuwa workers
// stream their errors as text with status 200.
//
// When the chat stops early (cancelled, emit failing, or a timeout), the
// request is closed and GET {url}/abort is called, within abortTimeout,
// before Generate returns, so the executor is free for the next chat.
func (m *Model) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	select {
	case m.slots <- struct{}{}:
		defer func() { <-m.slots }()
	default:
		return &actors.Error{
			Code:   actors.Code_CODE_OVERLOADED,
			Reason: "the Kuwa executor is busy with other chats",
			Err:    errors.New("all concurrency slots of " + m.where + " are in use"),
		}
	}

	c := &call{m: m, chatID: req.GetChatId()}
	err := c.run(ctx, req, emit)
	if c.shouldAbort() {
		m.abort(ctx, c.chatID)
	}
	return err
}

// call is one chat's request to the executor.
type call struct {
	m      *Model
	chatID string
	// sent is set once the request has a connection to the executor: from
	// then on the executor may be generating for this chat. (WroteRequest
	// would be later than the executor can see the chat, so a chat
	// cancelled in between would not be aborted.)
	sent atomic.Bool
	// answered is set when the executor answered with an error status: it
	// did not take the chat, and an abort could stop someone else's.
	answered bool
	// done is set when the answer was read to its end.
	done bool
}

func (c *call) shouldAbort() bool {
	return c.sent.Load() && !c.answered && !c.done
}

func (c *call) run(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	m := c.m
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	trace := &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) { c.sent.Store(true) }}
	hreq, err := http.NewRequestWithContext(httptrace.WithClientTrace(reqCtx, trace),
		http.MethodPost, m.endpoint, strings.NewReader(m.form(req)))
	if err != nil {
		return &actors.Error{Code: actors.Code_CODE_INTERNAL, Reason: "the chat could not be sent to the Kuwa executor", Err: err}
	}
	m.setHeaders(hreq)
	hreq.Header.Set("Content-Type", "application/x-www-form-urlencoded")

	w := startWatchdog(cancel, m.firstToken, m.idle)
	defer w.stop()

	resp, err := m.client.Do(hreq)
	if err != nil {
		return c.failed(ctx, reqCtx, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		c.answered = true
		return statusError(resp, m.where)
	}

	buf := make([]byte, readSize)
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 {
			w.got()
			if err := emit(string(buf[:n])); err != nil {
				return err
			}
		}
		if errors.Is(rerr, io.EOF) {
			c.done = true
			actors.OutputOf(ctx).Finish("stop")
			return nil
		}
		if rerr != nil {
			return c.failed(ctx, reqCtx, rerr)
		}
	}
}

// failed classifies an error of sending the chat or reading the answer.
func (c *call) failed(ctx, reqCtx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	switch cause := context.Cause(reqCtx); {
	case errors.Is(cause, errFirstToken):
		return &actors.Error{Code: actors.Code_CODE_DEADLINE_EXCEEDED,
			Reason: "the Kuwa executor did not start answering in time", Err: cause}
	case errors.Is(cause, errIdle):
		return &actors.Error{Code: actors.Code_CODE_DEADLINE_EXCEEDED,
			Reason: "the Kuwa executor stopped answering", Err: cause}
	}
	reason := "the Kuwa executor cannot be reached"
	if c.sent.Load() {
		reason = "the Kuwa executor broke off the connection"
	}
	return &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: reason, Err: c.m.plain(err)}
}

// plain is an error of net/http without the configured URL, which may hold
// credentials or a token in its query.
func (m *Model) plain(err error) error {
	var uerr *url.Error
	if errors.As(err, &uerr) {
		return fmt.Errorf("%s %s: %w", uerr.Op, m.where, uerr.Err)
	}
	return fmt.Errorf("%s: %w", m.where, err)
}

func (m *Model) setHeaders(r *http.Request) {
	for k, v := range m.header {
		r.Header[k] = v
	}
	if m.host != "" {
		r.Host = m.host
	}
}

// abort asks the executor to stop generating, as the Agent's chat/abort
// does. It runs on Generate's goroutine, bounded by abortTimeout, with a
// context that outlives the chat's but keeps its values.
func (m *Model) abort(ctx context.Context, chatID string) {
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), abortTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(actx, http.MethodGet, m.abortURL, nil)
	if err != nil {
		return
	}
	m.setHeaders(req)
	resp, err := m.client.Do(req)
	if err != nil {
		slog.Warn("kuwa: abort failed", "chat", chatID, "err", m.plain(err))
		return
	}
	// The answer, {"msg": ...}, says nothing to act on; it is read so the
	// connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		slog.Debug("kuwa: abort not done", "chat", chatID, "endpoint", m.where, "status", resp.StatusCode)
	}
}

// watchdog ends the request when the executor is silent for too long:
// first until the answer's first byte, then between reads. It is used from
// Generate's goroutine only; its timers' functions just cancel.
type watchdog struct {
	cancel  context.CancelCauseFunc
	idle    time.Duration
	timer   *time.Timer
	started bool
}

func startWatchdog(cancel context.CancelCauseFunc, firstToken, idle time.Duration) *watchdog {
	w := &watchdog{cancel: cancel, idle: idle}
	if firstToken > 0 {
		w.timer = time.AfterFunc(firstToken, func() { cancel(errFirstToken) })
	}
	return w
}

// got notes that bytes of the answer arrived.
func (w *watchdog) got() {
	if w.started {
		if w.timer != nil {
			w.timer.Reset(w.idle)
		}
		return
	}
	w.started = true
	w.stop()
	w.timer = nil
	if w.idle > 0 {
		w.timer = time.AfterFunc(w.idle, func() { w.cancel(errIdle) })
	}
}

func (w *watchdog) stop() {
	if w.timer != nil {
		w.timer.Stop()
	}
}
