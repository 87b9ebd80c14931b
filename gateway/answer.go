package gateway

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/actors"
)

// answer writes one chat's answer in the form of the API the chat came in
// through. The chat's serving goroutine is its only writer; only wrote is
// read from other goroutines.
type answer interface {
	// text and toolCalls write a piece of output.
	text(s string)
	toolCalls(delta string)
	// flush sends what was written to the client.
	flush()
	// end finishes a completed answer.
	end(e *actors.End)
	// fail finishes the answer with an error: a status while nothing was
	// written, a short note in the stream after.
	fail(status int, reason string)
	// abort finishes an answer stopped through the abort endpoint: what was
	// written stands as the answer.
	abort()
	// cut finishes an answer that reached MaxAnswerBytes: what was written
	// stands, marked as cut.
	cut()
	// reject answers a chat that never reached a layout.
	reject(status int, msg string, retryAfter time.Duration)
	state() *answerState
}

// answerState is what every form of answer tracks.
type answerState struct {
	chatID  string
	node    string // the node that runs the chat, for the X-Troupe-Node header
	started bool
	// written mirrors started for other goroutines: a silent node's chat
	// may move elsewhere only while nothing went to the client.
	written atomic.Bool
	runes   int
	room    answerRoom
	// conn, when not nil, can take the connection over from net/http, so
	// that the chat streams on without its HTTP handler.
	conn *takeoverWriter
}

func (a *answerState) state() *answerState { return a }

func (a *answerState) markStarted() bool {
	if a.started {
		return false
	}
	a.started = true
	a.written.Store(true)
	return true
}

// setChatHeaders sets the headers every answer carries.
func (a *answerState) setChatHeaders(h http.Header) {
	h.Set("X-Chat-Id", a.chatID)
	if a.node != "" {
		h.Set("X-Troupe-Node", a.node)
	}
}

// interrupted ends the answer of a chat whose context ended and returns the
// outcome that names why.
func interrupted(out answer, cause error) string {
	switch {
	case errors.Is(cause, errAborted):
		out.abort()
		return outcomeAborted
	case errors.Is(cause, errChatTimeout):
		out.fail(http.StatusGatewayTimeout, cause.Error())
		return outcomeTimedOut
	case errors.Is(cause, errLayoutFailed), errors.Is(cause, errShutdown), errors.Is(cause, errNodeGone):
		out.fail(http.StatusServiceUnavailable, cause.Error())
		return outcomeFailed
	default: // the client went away; nobody is left to read an answer
		return outcomeCancelled
	}
}

// textAnswer is the Agent API's answer: plain text, flushed as it comes. Its
// status is sent with the first chunk, so that a chat that fails before any
// output gets an error status, while one that fails later ends its body with
// a short note instead.
type textAnswer struct {
	answerState
	w       http.ResponseWriter
	flusher http.Flusher
	tw      takeoverWriter
}

func newTextAnswer(w http.ResponseWriter, r *http.Request, chatID string, maxBytes int64) *textAnswer {
	a := &textAnswer{answerState: answerState{chatID: chatID, room: answerRoom{left: maxBytes, limit: maxBytes}}}
	a.tw.init(w, r)
	a.w, a.flusher = &a.tw, &a.tw
	if a.tw.able {
		a.conn = &a.tw
	}
	return a
}

func (c *textAnswer) start(status int) {
	if !c.markStarted() {
		return
	}
	h := c.w.Header()
	// Shared values instead of Set, which allocates a slice per header per
	// chat: net/http copies them when it writes the header, and an Add
	// appends to a full slice, which copies it too.
	h["Content-Type"] = textPlain
	h["Cache-Control"] = noCache
	h["X-Content-Type-Options"] = noSniff
	h["X-Accel-Buffering"] = no
	c.setChatHeaders(h)
	c.w.WriteHeader(status)
}

var (
	textPlain = []string{"text/plain; charset=utf-8"}
	noCache   = []string{"no-cache"}
	noSniff   = []string{"nosniff"}
	no        = []string{"no"}
)

func (c *textAnswer) text(text string) {
	c.start(http.StatusOK)
	text = c.room.fit(text)
	c.runes += utf8.RuneCountInString(text)
	_, _ = io.WriteString(c.w, text)
}

// toolCalls drops tool calls: the Agent's protocol is text only, and a
// client of it never offered tools.
func (c *textAnswer) toolCalls(string) {}

func (c *textAnswer) flush() {
	if c.started && c.flusher != nil {
		c.flusher.Flush()
	}
}

func (c *textAnswer) end(*actors.End) { c.start(http.StatusOK) }

func (c *textAnswer) abort() { c.start(http.StatusOK) }

func (c *textAnswer) cut() {
	c.start(http.StatusOK)
	_, _ = fmt.Fprintf(c.w, "\n\n[The answer was cut here: it reached the limit of %s.]\n", bytesText(c.room.limit))
}

func (c *textAnswer) fail(status int, reason string) {
	if !c.started {
		c.start(status)
		_, _ = fmt.Fprintf(c.w, "Error: %s.\n", reason)
		return
	}
	_, _ = fmt.Fprintf(c.w, "\n\n[Error: %s.]\n", reason)
}

func (c *textAnswer) reject(status int, msg string, retryAfter time.Duration) {
	setRetryAfter(c.w.Header(), status, retryAfter)
	http.Error(c.w, msg, status)
}

// setRetryAfter tells a client refused for load when to come back, in whole
// seconds rounded up (at least 1).
func setRetryAfter(h http.Header, status int, retryAfter time.Duration) {
	if status != http.StatusTooManyRequests && status != http.StatusServiceUnavailable {
		return
	}
	secs := int((retryAfter + time.Second - 1) / time.Second)
	h.Set("Retry-After", fmt.Sprint(max(secs, 1)))
}
