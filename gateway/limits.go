package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/actors"
)

// Limits bound what one request, answer or connection may take of a node,
// so that no client, however slow or large, holds more than its share.
// Every limit that acts is counted in troupe_limit_hits_total.
type Limits struct {
	// MaxBodyBytes bounds a chat request's body: a larger one is refused
	// with 413 before it is read.
	MaxBodyBytes int64
	// MaxHistoryMessages and MaxHistoryBytes bound a chat's history: its
	// number of messages, and the bytes of their text (content and tool
	// calls) together. Larger histories are refused with 413.
	MaxHistoryMessages int
	MaxHistoryBytes    int64
	// MaxAnswerBytes bounds an answer: at the limit it is cut at a
	// character's boundary, ends as cut (OpenAI's finish_reason "length",
	// a note in the Agent's text), and its generation is cancelled.
	MaxAnswerBytes int64
	// MaxHeaderBytes bounds a request's head; net/http answers 431 past it.
	MaxHeaderBytes int64
	// MaxConnections bounds the HTTP connections open at once, streams
	// taken over from net/http included. At the limit, a new connection
	// takes the place of the one that has waited longest without a request
	// being served; when every connection is serving one, the new one is
	// refused with a 503.
	MaxConnections int
	// HeaderTimeout is how long a request's head may take to arrive.
	HeaderTimeout time.Duration
	// BodyTimeout is how long a whole request, head and body, may take to
	// arrive. It does not bound the answer: a chat's is bounded by the chat
	// timeout.
	BodyTimeout time.Duration
	// IdleTimeout is how long a kept-alive connection may wait for its
	// next request.
	IdleTimeout time.Duration
}

// DefaultLimits returns the limits a node runs with unless told otherwise.
// MaxHistoryBytes stays under the 4 MiB a message between nodes may take
// (gRPC's default), so that a chat accepted here can run on any node, and
// over what any model's context holds.
func DefaultLimits() Limits {
	return Limits{
		MaxBodyBytes:       8 << 20,
		MaxHistoryMessages: 1000,
		MaxHistoryBytes:    2 << 20,
		MaxAnswerBytes:     1 << 20,
		MaxHeaderBytes:     64 << 10,
		MaxConnections:     10000,
		HeaderTimeout:      10 * time.Second,
		BodyTimeout:        time.Minute,
		IdleTimeout:        2 * time.Minute,
	}
}

// withDefaults returns l with its zero fields set to the defaults.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	set := func(v *int64, def int64) {
		if *v <= 0 {
			*v = def
		}
	}
	setInt := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	setDur := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&l.MaxBodyBytes, d.MaxBodyBytes)
	set(&l.MaxHistoryBytes, d.MaxHistoryBytes)
	set(&l.MaxAnswerBytes, d.MaxAnswerBytes)
	setInt(&l.MaxHistoryMessages, d.MaxHistoryMessages)
	set(&l.MaxHeaderBytes, d.MaxHeaderBytes)
	setInt(&l.MaxConnections, d.MaxConnections)
	setDur(&l.HeaderTimeout, d.HeaderTimeout)
	setDur(&l.BodyTimeout, d.BodyTimeout)
	setDur(&l.IdleTimeout, d.IdleTimeout)
	return l
}

// The values of troupe_limit_hits_total's limit label.
const (
	limitBody            = "body"
	limitHistoryMessages = "history_messages"
	limitHistoryBytes    = "history_bytes"
	limitAnswer          = "answer"
	limitChatTimeout     = "chat_timeout"
	limitHeaderSize      = "header_size"
	limitHeaderTimeout   = "header_timeout"
	limitBodyTimeout     = "body_timeout"
	limitIdleTimeout     = "idle_timeout"
	limitConnections     = "connections"
)

var limitNames = []string{limitBody, limitHistoryMessages, limitHistoryBytes, limitAnswer, limitChatTimeout,
	limitHeaderSize, limitHeaderTimeout, limitBodyTimeout, limitIdleTimeout, limitConnections}

// limitError is a request over one of the limits: the status, the message
// for the client and the limit's name.
type limitError struct {
	status int
	limit  string
	msg    string
}

func (e *limitError) Error() string { return e.msg }

// tooLarge is the error of a body over MaxBodyBytes.
func (l Limits) tooLarge() *limitError {
	return &limitError{http.StatusRequestEntityTooLarge, limitBody,
		fmt.Sprintf("The request is too large: at most %s are accepted.", bytesText(l.MaxBodyBytes))}
}

// bodyTooSlow is the error of a body that did not arrive within BodyTimeout.
func (l Limits) bodyTooSlow() *limitError {
	return &limitError{http.StatusRequestTimeout, limitBodyTimeout,
		fmt.Sprintf("The request did not arrive within %s.", durationText(l.BodyTimeout))}
}

// bodyError returns the limit a failed read of a request's body hit, or
// nil when it hit none.
func (l Limits) bodyError(err error) *limitError {
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		return l.tooLarge()
	case errors.Is(err, os.ErrDeadlineExceeded):
		return l.bodyTooSlow()
	}
	return nil
}

// checkHistory refuses a history over MaxHistoryMessages or MaxHistoryBytes.
func (l Limits) checkHistory(history []*actors.Message) *limitError {
	if len(history) > l.MaxHistoryMessages {
		return &limitError{http.StatusRequestEntityTooLarge, limitHistoryMessages,
			fmt.Sprintf("The chat has too many messages: %d, at most %d are accepted.", len(history), l.MaxHistoryMessages)}
	}
	var size int64
	for _, m := range history {
		size += int64(len(m.Content) + len(m.ToolCalls))
	}
	if size > l.MaxHistoryBytes {
		return &limitError{http.StatusRequestEntityTooLarge, limitHistoryBytes,
			fmt.Sprintf("The chat is too long: %s of text, at most %s are accepted.", bytesText(size), bytesText(l.MaxHistoryBytes))}
	}
	return nil
}

// limited counts a limit that acted.
func (s *Server) limited(limit string) { s.metrics.limitHits.WithLabelValues(limit).Inc() }

// countLimitOutcome counts a chat a limit ended: its time limit, or the
// size limit of its answer.
func (s *Server) countLimitOutcome(outcome string) {
	switch outcome {
	case outcomeTimedOut:
		s.limited(limitChatTimeout)
	case outcomeCut:
		s.limited(limitAnswer)
	}
}

// reachedTimeLimit reports whether a failure is the chat's own time limit,
// which the layout saw before the gateway's timer did: a deadline passed,
// and the chat's is (give or take the clocks of two nodes). A kind's own
// timeouts say the same code earlier, with their own reason.
func (c *chat) reachedTimeLimit(f *actors.Failure) bool {
	return f.Code == actors.Code_CODE_DEADLINE_EXCEEDED && time.Until(time.Unix(0, c.req.DeadlineUnixNano)) < time.Second
}

// answerRoom is what an answer may still write before MaxAnswerBytes.
type answerRoom struct {
	left, limit int64
	cut         bool // the answer reached the limit
}

// fit returns the part of s that fits, cut at a character's boundary, and
// marks the answer cut when that is not all of it.
func (r *answerRoom) fit(s string) string {
	if int64(len(s)) <= r.left {
		r.left -= int64(len(s))
		return s
	}
	r.cut = true
	n := int(r.left)
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	r.left = 0
	return s[:n]
}

// fitWhole reports whether s fits whole, taking its room if it does, and
// marks the answer cut otherwise: a tool call's delta is JSON, useless cut.
func (r *answerRoom) fitWhole(s string) bool {
	if int64(len(s)) <= r.left {
		r.left -= int64(len(s))
		return true
	}
	r.cut = true
	r.left = 0
	return false
}

// bytesText writes a size as people read it: 8 MiB, 512 KiB, 100 bytes.
func bytesText(n int64) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.FormatInt(n>>20, 10) + " MiB"
	case n >= 1<<20:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + " MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.FormatInt(n>>10, 10) + " KiB"
	case n >= 1<<10:
		return strconv.FormatFloat(float64(n)/(1<<10), 'f', 1, 64) + " KiB"
	case n == 1:
		return "1 byte"
	}
	return strconv.FormatInt(n, 10) + " bytes"
}

// durationText writes a duration without its zero parts: 1m, not 1m0s.
func durationText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
