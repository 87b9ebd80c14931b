package kuwa

import (
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/actors"
)

// maxErrorBody bounds how much of an error answer is read for the log.
const maxErrorBody = 4 << 10

// busyText is in the body of the Python framework's 503 ("Processing
// another request") and of newer executors' 429 ("Processing another
// request.").
const busyText = "processing another request"

// statusError maps an error answer of the executor to an *actors.Error.
// The body, which may say anything, goes only into Err, for the log.
func statusError(resp *http.Response, where string) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	text := strings.TrimSpace(strings.ToValidUTF8(string(body), string(utf8.RuneError)))
	raw := fmt.Errorf("POST %s: %s: %s", where, resp.Status, text)
	retryAfter, hasRetryAfter := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	code := resp.StatusCode
	e := &actors.Error{Err: raw}
	switch {
	case code == http.StatusTooManyRequests,
		code == http.StatusServiceUnavailable && (hasRetryAfter || strings.Contains(strings.ToLower(text), busyText)):
		// The executor serves another chat; the gateway may try another
		// node, after Retry-After if the executor gave one.
		e.Code, e.Reason, e.RetryAfter = actors.Code_CODE_OVERLOADED, "the Kuwa executor is busy", retryAfter
	case code >= 500:
		e.Code, e.Reason = actors.Code_CODE_UNAVAILABLE, "the Kuwa executor failed"
	case code == http.StatusBadRequest:
		e.Code, e.Reason = actors.Code_CODE_INVALID_ARGUMENT, "the Kuwa executor rejected the chat"
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		e.Code, e.Reason = actors.Code_CODE_INVALID_ARGUMENT, "the Kuwa executor refused access"
	case code == http.StatusNotFound || code == http.StatusMethodNotAllowed:
		e.Code, e.Reason = actors.Code_CODE_INVALID_ARGUMENT, "the Kuwa executor has no chat endpoint at the configured URL"
	case code >= 400:
		e.Code, e.Reason = actors.Code_CODE_INVALID_ARGUMENT, fmt.Sprintf("the Kuwa executor rejected the request (status %d)", code)
	default:
		// 1xx and 3xx: redirects are not followed, since a redirected POST
		// would arrive without the chat.
		e.Code, e.Reason = actors.Code_CODE_UNAVAILABLE, fmt.Sprintf("the Kuwa executor answered with status %d", code)
	}
	return e
}

// maxRetryAfter bounds the wait an executor can ask for.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs < 0 {
			return 0, false
		}
		return time.Duration(min(secs, int64(maxRetryAfter/time.Second))) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return min(max(t.Sub(now), 0), maxRetryAfter), true
	}
	return 0, false
}
