package gateway

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/julienschmidt/httprouter"

	"github.com/troupe-llm/troupe/actors"
)

// The OpenAI-compatible API: POST /v1/chat/completions and GET /v1/models,
// so that OpenAI's SDKs and every tool built on them can use any node. A
// chat runs exactly as one from the Agent does (routing, admission,
// cancellation, metrics); only the wire form differs.

const (
	chatCompletionsPath = "/v1/chat/completions"
	modelsPath          = "/v1/models"
)

// apiKeys holds the hashes of the keys clients must present as Bearer
// tokens; empty means the API is open. Hashes compared in constant time
// leak neither a key nor its length through timing.
type apiKeys [][sha256.Size]byte

func newAPIKeys(keys []string) apiKeys {
	var out apiKeys
	for _, k := range keys {
		if k = strings.TrimSpace(k); k != "" {
			out = append(out, sha256.Sum256([]byte(k)))
		}
	}
	return out
}

func (k apiKeys) allow(r *http.Request) bool {
	if len(k) == 0 {
		return true
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(token)))
	match := 0
	for _, want := range k {
		match |= subtle.ConstantTimeCompare(sum[:], want[:])
	}
	return match == 1
}

// openaiError writes an error in OpenAI's form, with the type its SDKs map
// to an exception class.
func openaiError(w http.ResponseWriter, status int, msg, param, code string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody(status, msg, param, code))
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

func errorBody(status int, msg, param, code string) map[string]errorDetail {
	d := errorDetail{Message: msg, Type: errorType(status)}
	if param != "" {
		d.Param = &param
	}
	if code != "" {
		d.Code = &code
	}
	return map[string]errorDetail{"error": d}
}

func errorType(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return "server_error"
	}
	if status >= 500 {
		return "server_error"
	}
	return "invalid_request_error"
}

func (s *Server) handleModels(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	if !s.apiKeys.allow(r) {
		s.unauthorized(w)
		return
	}
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	list := struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{Object: "list", Data: []model{}}
	for _, name := range s.cfg.Router.Layouts() {
		list.Data = append(list.Data, model{ID: name, Object: "model", Created: s.started.Unix(), OwnedBy: "troupe"})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(list)
}

func (s *Server) unauthorized(w http.ResponseWriter) {
	s.metrics.badRequests.WithLabelValues("api_key").Inc()
	w.Header().Set("WWW-Authenticate", `Bearer realm="troupe"`)
	openaiError(w, http.StatusUnauthorized, "Missing or wrong API key: send it as \"Authorization: Bearer KEY\".", "", "invalid_api_key")
}

func (s *Server) handleChatCompletions(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	if !s.apiKeys.allow(r) {
		s.unauthorized(w)
		return
	}
	conn := connOf(r)
	conn.receiving()
	limits := s.cfg.Limits
	if r.ContentLength > limits.MaxBodyBytes {
		s.overLimitOpenAI(w, limits.tooLarge())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limits.MaxBodyBytes))
	if err != nil {
		if le := limits.bodyError(err); le != nil {
			s.overLimitOpenAI(w, le)
			return
		}
		s.metrics.badRequests.WithLabelValues("body").Inc()
		openaiError(w, http.StatusBadRequest, "The request body could not be read.", "", "")
		return
	}
	cr, req, err := parseChatCompletion(body)
	if err != nil {
		var re *requestError
		errors.As(err, &re)
		s.metrics.badRequests.WithLabelValues("openai_request").Inc()
		openaiError(w, http.StatusBadRequest, re.msg, re.param, "")
		return
	}
	if _, local := s.layouts.Get(req.Layout); !local && !s.cfg.Router.Serves(req.Layout) {
		s.metrics.badRequests.WithLabelValues("name").Inc()
		openaiError(w, http.StatusNotFound, fmt.Sprintf("The model %q does not exist here (GET /v1/models lists them).", req.Layout), "model", "model_not_found")
		return
	}
	if le := limits.checkHistory(req.History); le != nil {
		s.overLimitOpenAI(w, le)
		return
	}
	req.ChatId = s.newChatID()
	var key string
	if cr.User != "" {
		key = "user\x00" + cr.User
	}
	out := &openaiAnswer{
		answerState: answerState{chatID: req.ChatId, room: answerRoom{left: limits.MaxAnswerBytes, limit: limits.MaxAnswerBytes}},
		stream:      cr.Stream,
		usage:       cr.StreamOptions != nil && cr.StreamOptions.IncludeUsage,
		model:       cr.Model,
		id:          "chatcmpl-" + req.ChatId,
		created:     time.Now().Unix(),
	}
	out.tw.init(w, r)
	out.w, out.flusher = &out.tw, &out.tw
	if out.tw.able && cr.Stream {
		// A stream may run for minutes: it goes on without its handler,
		// as the Agent API's do. A whole answer is written at once.
		out.conn = &out.tw
	}
	conn.serveChat(s.cfg.ChatTimeout)
	defer conn.rest()
	s.serveChat(r, req, key, openaiSlot, out)
}

// openaiSlot is the endpoint slot the OpenAI API's chats are tracked under.
// They come through none of the Agent's endpoints, so the Agent's abort must
// never name it: "" is the first endpoint's, and slots are numbers.
const openaiSlot = "openai"

// overLimit refuses a request over a limit in OpenAI's form, with a code
// a program can act on.
func (s *Server) overLimitOpenAI(w http.ResponseWriter, le *limitError) {
	s.countOverLimit(le)
	param, code := "", ""
	switch le.limit {
	case limitBody:
		code = "request_too_large"
	case limitBodyTimeout:
		code = "request_timeout"
		w.Header().Set("Connection", "close")
	case limitHistoryMessages:
		param, code = "messages", "too_many_messages"
	case limitHistoryBytes:
		param, code = "messages", "history_too_long"
	}
	openaiError(w, le.status, le.msg, param, code)
}

// openaiAnswer writes a chat's answer as OpenAI does: a stream of
// chat.completion.chunk events, or one chat.completion at the end.
type openaiAnswer struct {
	answerState
	w       http.ResponseWriter
	flusher http.Flusher
	tw      takeoverWriter
	stream  bool
	usage   bool // stream_options.include_usage
	model   string
	id      string
	created int64

	// The whole answer, for a client that did not ask for a stream.
	content strings.Builder
	calls   toolCallMerger
	buf     []byte
}

func (a *openaiAnswer) startStream() {
	if !a.markStarted() {
		return
	}
	h := a.w.Header()
	h["Content-Type"] = eventStream
	h["Cache-Control"] = noCache
	h["X-Accel-Buffering"] = no
	a.setChatHeaders(h)
	a.w.WriteHeader(http.StatusOK)
	// The role comes first, alone, as OpenAI sends it.
	a.event(`{"role":"assistant","content":""}`, "")
}

var eventStream = []string{"text/event-stream; charset=utf-8"}

// event writes one chat.completion.chunk with the given delta (JSON) and
// finish reason ("" for none).
func (a *openaiAnswer) event(delta, finish string) {
	b := append(a.buf[:0], `data: {"id":`...)
	b = appendJSONString(b, a.id)
	b = append(b, `,"object":"chat.completion.chunk","created":`...)
	b = strconv.AppendInt(b, a.created, 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, a.model)
	b = append(b, `,"choices":[{"index":0,"delta":`...)
	b = append(b, delta...)
	b = append(b, `,"logprobs":null,"finish_reason":`...)
	if finish == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, finish)
	}
	b = append(b, "}]}\n\n"...)
	a.buf = b
	_, _ = a.w.Write(b)
}

func appendJSONString(b []byte, s string) []byte {
	out, _ := json.Marshal(s)
	return append(b, out...)
}

func (a *openaiAnswer) text(s string) {
	if s = a.room.fit(s); s == "" && a.room.cut {
		return
	}
	a.runes += utf8.RuneCountInString(s)
	if !a.stream {
		a.markStarted()
		a.content.WriteString(s)
		return
	}
	a.startStream()
	a.event(`{"content":`+string(appendJSONString(nil, s))+`}`, "")
}

func (a *openaiAnswer) toolCalls(delta string) {
	if !a.room.fitWhole(delta) {
		return
	}
	if !a.stream {
		a.markStarted()
		a.calls.add(delta)
		return
	}
	a.startStream()
	a.event(`{"tool_calls":`+delta+`}`, "")
}

func (a *openaiAnswer) flush() {
	if a.stream && a.started && a.flusher != nil {
		a.flusher.Flush()
	}
}

type usageBody struct {
	PromptTokens     uint32 `json:"prompt_tokens"`
	CompletionTokens uint32 `json:"completion_tokens"`
	TotalTokens      uint32 `json:"total_tokens"`
}

func usageOf(e *actors.End) usageBody {
	return usageBody{e.GetPromptTokens(), e.GetCompletionTokens(), e.GetPromptTokens() + e.GetCompletionTokens()}
}

func (a *openaiAnswer) end(e *actors.End) {
	finish := e.GetFinishReason()
	if finish == "" {
		finish = "stop"
	}
	if !a.stream {
		a.writeCompletion(finish, usageOf(e))
		return
	}
	a.startStream()
	a.event("{}", finish)
	if a.usage {
		u, _ := json.Marshal(usageOf(e))
		fmt.Fprintf(a.w, `data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[],"usage":%s}`+"\n\n",
			appendJSONString(nil, a.id), a.created, appendJSONString(nil, a.model), u)
	}
	_, _ = io.WriteString(a.w, "data: [DONE]\n\n")
}

func (a *openaiAnswer) writeCompletion(finish string, usage usageBody) {
	a.markStarted()
	type message struct {
		Role      string          `json:"role"`
		Content   *string         `json:"content"`
		ToolCalls json.RawMessage `json:"tool_calls,omitempty"`
		Refusal   *string         `json:"refusal"`
	}
	type choice struct {
		Index        int     `json:"index"`
		Message      message `json:"message"`
		Logprobs     *string `json:"logprobs"`
		FinishReason string  `json:"finish_reason"`
	}
	msg := message{Role: "assistant"}
	if content := a.content.String(); content != "" || a.calls.empty() {
		msg.Content = &content
	}
	if !a.calls.empty() {
		msg.ToolCalls = a.calls.json()
	}
	body := struct {
		ID      string    `json:"id"`
		Object  string    `json:"object"`
		Created int64     `json:"created"`
		Model   string    `json:"model"`
		Choices []choice  `json:"choices"`
		Usage   usageBody `json:"usage"`
	}{a.id, "chat.completion", a.created, a.model, []choice{{Message: msg, FinishReason: finish}}, usage}
	h := a.w.Header()
	h.Set("Content-Type", "application/json")
	a.setChatHeaders(h)
	a.w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(a.w).Encode(body)
}

// abort cannot happen here (the OpenAI API has no abort endpoint), but a
// stopped stream still ends as a stream should.
func (a *openaiAnswer) abort() {
	if !a.stream {
		a.writeCompletion("stop", usageBody{})
		return
	}
	a.startStream()
	a.event("{}", "stop")
	_, _ = io.WriteString(a.w, "data: [DONE]\n\n")
}

// cut ends an answer that reached its limit as OpenAI ends one that
// reached max_tokens.
func (a *openaiAnswer) cut() { a.end(&actors.End{FinishReason: "length"}) }

func (a *openaiAnswer) fail(status int, reason string) {
	msg := capitalize(reason) + "."
	// A whole answer is written only at its end, so until then, and until a
	// stream's first event, the error can still be a status.
	if !a.stream || !a.started {
		a.markStarted()
		a.setChatHeaders(a.w.Header())
		openaiError(a.w, status, msg, "", "")
		return
	}
	// Mid-stream, OpenAI sends an error event and ends the stream without
	// [DONE]; its SDKs raise it as an error.
	b, _ := json.Marshal(errorBody(status, msg, "", ""))
	fmt.Fprintf(a.w, "data: %s\n\n", b)
}

func (a *openaiAnswer) reject(status int, msg string, retryAfter time.Duration) {
	setRetryAfter(a.w.Header(), status, retryAfter)
	code := ""
	if status == http.StatusTooManyRequests {
		code = "rate_limit_exceeded"
	}
	openaiError(a.w, status, msg, "", code)
}

// toolCallMerger joins the tool_calls deltas of a stream into whole calls,
// for a client that asked for one answer: deltas of one call share its
// index, the first carries id, type and name, and the arguments come in
// pieces.
type toolCallMerger struct {
	calls []*toolCall
}

type toolCall struct {
	Index    int    `json:"-"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

func (m *toolCallMerger) empty() bool { return len(m.calls) == 0 }

func (m *toolCallMerger) add(delta string) {
	var parts []struct {
		Index    int    `json:"index"`
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	}
	if json.Unmarshal([]byte(delta), &parts) != nil {
		return
	}
	for _, p := range parts {
		var c *toolCall
		for _, have := range m.calls {
			if have.Index == p.Index {
				c = have
			}
		}
		if c == nil {
			c = &toolCall{Index: p.Index, Type: "function"}
			m.calls = append(m.calls, c)
		}
		if p.ID != "" {
			c.ID = p.ID
		}
		if p.Type != "" {
			c.Type = p.Type
		}
		c.Function.Name += p.Function.Name
		c.Function.Arguments += p.Function.Arguments
	}
}

func (m *toolCallMerger) json() json.RawMessage {
	b, _ := json.Marshal(m.calls)
	return b
}
