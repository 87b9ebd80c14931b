package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Retry timing. The first retry comes after about a quarter second, each
// next one waits twice as long up to backoffCap; jitter spreads the chats
// a server turned away together. A server that asks for a pause longer
// than maxRetryAfter is not waited for here: the chat fails as overloaded
// at once, with the server's Retry-After, and the gateway may try another
// node.
const (
	backoffBase   = 250 * time.Millisecond
	backoffCap    = 4 * time.Second
	maxRetryAfter = 10 * time.Second
)

// retryWait is the pause before retry number attempt+1, and whether to
// retry at all.
func retryWait(attempt int, retryAfter time.Duration) (time.Duration, bool) {
	if retryAfter > 0 {
		if retryAfter > maxRetryAfter {
			return 0, false
		}
		return retryAfter + rand.N(retryAfter/10+1), true
	}
	d := backoffCap
	if attempt < 8 {
		d = min(backoffBase<<attempt, backoffCap)
	}
	return d/2 + rand.N(d/2+1), true
}

// Reasons users read. They say what happened in the user's terms; what the
// server said goes to the log only, through Err.
const (
	reasonBusy        = "the model server is busy"
	reasonUnreachable = "cannot reach the model server"
	reasonBroken      = "the connection to the model server broke"
	reasonEndedEarly  = "the model server ended the answer early"
	reasonNotStream   = "the model server answered without streaming"
	reasonMalformed   = "the model server sent a malformed answer"
	reasonFailed      = "the model server failed"
	reasonFailedMid   = "the model server failed while answering"
	reasonRejected    = "the model server rejected the request"
	reasonTooLong     = "the chat is too long for the model"
	reasonCredentials = "the model server refused our credentials"
	reasonNoModel     = "model not found upstream"
)

// failure turns how an attempt ended into a typed error. cause is the
// attempt context's cause, err what ended the attempt (nil when the stream
// ended without [DONE] or a finish reason).
func (c *chat) failure(cause, err error, up *upstream) result {
	var quiet *silence
	if errors.As(cause, &quiet) {
		reason := fmt.Sprintf("the model server sent nothing for %s", seconds(quiet.d))
		if !quiet.first {
			reason = fmt.Sprintf("the model server went silent for %s", seconds(quiet.d))
		}
		// Not retried: the user has waited that long already.
		return result{err: &actors.Error{Code: actors.Code_CODE_DEADLINE_EXCEEDED, Reason: reason, Err: quiet}}
	}
	if up.status >= 300 {
		return c.httpFailure(up)
	}
	var malformed *malformedError
	switch {
	case errors.As(err, &malformed), errors.Is(err, errEventTooLong):
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonMalformed, err)}
	case err != nil && up.status == 0:
		// No answer at all: refused, reset, DNS, dial timeout. Safe to
		// send again.
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonUnreachable, err), retry: true}
	case err != nil:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonBroken, err), retry: true}
	case up.events == 0 && !up.sse:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonNotStream,
			fmt.Errorf("status %d, content type %q, no events", up.status, up.header.Get("Content-Type")))}
	default:
		// The body ended with neither [DONE] nor a finish reason: a
		// crash behind a proxy, or Ollama's way of failing mid-stream.
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonEndedEarly,
			fmt.Errorf("the stream ended after %d events without [DONE] or a finish reason", up.events)), retry: true}
	}
}

// httpFailure maps an error answer's status.
func (c *chat) httpFailure(up *upstream) result {
	status := up.status
	msg := errorMessage(up.body)
	raw := fmt.Errorf("upstream answered %d %s: %s", status, http.StatusText(status), strings.TrimSpace(string(up.body)))
	wait := retryAfter(up.header)
	switch {
	case status == http.StatusTooManyRequests:
		e := c.typed(actors.Code_CODE_OVERLOADED, reasonBusy, raw)
		e.RetryAfter = wait
		return result{err: e, retry: true, retryAfter: wait}
	case status == http.StatusBadRequest || status == http.StatusUnprocessableEntity || status == http.StatusRequestEntityTooLarge:
		reason := reasonRejected
		if tooLong(msg) || status == http.StatusRequestEntityTooLarge {
			reason = reasonTooLong
		}
		return result{err: c.typed(actors.Code_CODE_INVALID_ARGUMENT, reason, raw)}
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonCredentials, raw)}
	case status == http.StatusNotFound:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonNoModel,
			fmt.Errorf("model %q at %s: %w", c.m.model, c.m.baseURL, raw))}
	case status < 400:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, fmt.Sprintf("the model server answered %d", status),
			fmt.Errorf("redirected to %q: set base_url to where it points: %w", up.header.Get("Location"), raw))}
	case status >= 500:
		e := c.typed(actors.Code_CODE_UNAVAILABLE, reasonFailed, raw)
		e.RetryAfter = wait
		return result{err: e, retry: true, retryAfter: wait}
	default:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, fmt.Sprintf("the model server answered %d", status), raw)}
	}
}

// eventFailure maps an error event in a stream: a data: {"error":...}
// event, or one named "error". Its code is an HTTP status for vLLM and
// llama.cpp; OpenAI names a type instead.
func (c *chat) eventFailure(data []byte) result {
	raw := fmt.Errorf("error event: %s", strings.TrimSpace(string(data)))
	e := parseAPIError(data)
	status := e.status()
	switch {
	case status == http.StatusTooManyRequests:
		return result{err: c.typed(actors.Code_CODE_OVERLOADED, reasonBusy, raw), retry: true}
	case status == http.StatusBadRequest || status == http.StatusUnprocessableEntity || status == http.StatusRequestEntityTooLarge:
		reason := reasonRejected
		if tooLong(e.Message) {
			reason = reasonTooLong
		}
		return result{err: c.typed(actors.Code_CODE_INVALID_ARGUMENT, reason, raw)}
	default:
		return result{err: c.typed(actors.Code_CODE_UNAVAILABLE, reasonFailedMid, raw), retry: status >= 500}
	}
}

// typed builds an *actors.Error. The raw error is for the log; should the
// server echo the API key in it, the key is cut out.
func (c *chat) typed(code actors.Code, reason string, raw error) *actors.Error {
	if key := string(*c.m.key); key != "" && raw != nil && strings.Contains(raw.Error(), key) {
		raw = errors.New(strings.ReplaceAll(raw.Error(), key, "[redacted]"))
	}
	return &actors.Error{Code: code, Reason: reason, Err: raw}
}

// apiError is an error as the servers write it, in any of their shapes:
// {"error":{"message","type","code"}} (OpenAI, llama.cpp, Ollama, newer
// vLLM), {"error":"text","error_type":"..."} (TGI), {"object":"error",
// "message",...,"code":400} (older vLLM), {"detail":...} (FastAPI).
type apiError struct {
	Message string
	Type    string
	Code    json.RawMessage
}

func parseAPIError(body []byte) apiError {
	var doc struct {
		Error     json.RawMessage `json:"error"`
		ErrorType string          `json:"error_type"`
		Message   string          `json:"message"`
		Type      string          `json:"type"`
		Code      json.RawMessage `json:"code"`
		Detail    json.RawMessage `json:"detail"`
	}
	if json.Unmarshal(body, &doc) != nil {
		return apiError{Message: string(body)}
	}
	var text string
	if json.Unmarshal(doc.Error, &text) == nil {
		return apiError{Message: text, Type: doc.ErrorType}
	}
	var inner struct {
		Message string          `json:"message"`
		Type    string          `json:"type"`
		Code    json.RawMessage `json:"code"`
	}
	if json.Unmarshal(doc.Error, &inner) == nil && (inner.Message != "" || inner.Type != "" || len(inner.Code) > 0) {
		return apiError{Message: inner.Message, Type: inner.Type, Code: inner.Code}
	}
	if doc.Message == "" && len(doc.Detail) > 0 {
		doc.Message = string(doc.Detail)
	}
	return apiError{Message: doc.Message, Type: doc.Type, Code: doc.Code}
}

// status is the HTTP status an error stands for: its code when that is a
// status, or else what its type says.
func (e apiError) status() int {
	var n float64
	if json.Unmarshal(e.Code, &n) == nil && n >= 400 && n < 600 {
		return int(n)
	}
	var s string
	if json.Unmarshal(e.Code, &s) == nil {
		if n, err := strconv.Atoi(s); err == nil && n >= 400 && n < 600 {
			return n
		}
		if strings.Contains(s, "rate_limit") {
			return http.StatusTooManyRequests
		}
		if s == "context_length_exceeded" {
			return http.StatusBadRequest
		}
	}
	t := strings.ToLower(e.Type)
	switch {
	case strings.Contains(t, "rate_limit"), t == "requests", t == "overloaded":
		return http.StatusTooManyRequests
	case strings.Contains(t, "invalid_request"), strings.Contains(t, "badrequest"), t == "validation":
		return http.StatusBadRequest
	case strings.Contains(t, "server_error"), strings.Contains(t, "internalserver"), t == "generation":
		return http.StatusInternalServerError
	}
	return 0
}

// errorMessage is the message of an error answer, for recognising it.
func errorMessage(body []byte) string {
	e := parseAPIError(body)
	return e.Message + " " + string(e.Code)
}

// tooLong recognises the servers' ways of saying that the prompt does not
// fit the model's context.
func tooLong(msg string) bool {
	m := strings.ToLower(msg)
	for _, s := range []string{"context_length_exceeded", "maximum context length", "context length", "context size", "context window", "too many tokens", "prompt is too long", "input is too long"} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// retryAfter reads how long a server asked callers to wait: OpenAI's
// retry-after-ms, or Retry-After in seconds or as an HTTP date. 0 when it
// said nothing usable.
func retryAfter(h http.Header) time.Duration {
	if h == nil {
		return 0
	}
	if v := h.Get("Retry-After-Ms"); v != "" {
		if ms, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil && ms > 0 && ms < math.MaxInt32 {
			return time.Duration(ms * float64(time.Millisecond))
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseFloat(v, 64); err == nil {
		if s > 0 && s < math.MaxInt32 {
			return time.Duration(s * float64(time.Second))
		}
		return 0
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// seconds writes a timeout as users read it: "30s", "90s", "1.5s".
func seconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}
