package openaitest

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
)

// answer is one successful answer, ready to be written in a dialect.
type answer struct {
	d            Dialect
	id           string
	created      int64
	model        string
	fingerprint  string // system_fingerprint (OpenAI, llama.cpp)
	includeUsage bool   // stream_options.include_usage
	obfuscate    bool   // OpenAI's "obfuscation" field on chunks
	usage        Usage
	finish       string
	chunks       []string
	tools        []ToolCall // ids filled in
	pieces       int        // content chunks and argument pieces
}

// event is one SSE data event of a stream.
type event struct {
	data    []byte // what follows "data: "
	pieces  int    // content chunks and argument pieces it carries
	opening bool   // the role chunk that starts a stream
	final   bool   // the finish chunk or later
}

const (
	alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	lower = "abcdefghijklmnopqrstuvwxyz0123456789"
	hex   = "0123456789abcdef"
)

func random(n int, from string) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = from[rand.IntN(len(from))]
	}
	return string(b)
}

// newID is a completion id of the dialect's form.
func newID(d Dialect) string {
	switch d {
	case VLLM:
		return "chatcmpl-" + random(32, hex)
	case LlamaCpp:
		return "chatcmpl-" + random(32, alnum)
	case Ollama:
		return "chatcmpl-" + strconv.Itoa(rand.IntN(999))
	}
	return "chatcmpl-" + random(29, alnum)
}

func newFingerprint(d Dialect) string {
	switch d {
	case OpenAI:
		return "fp_" + random(10, hex)
	case LlamaCpp:
		return "b6097-" + random(8, hex)
	}
	return ""
}

func newToolID(d Dialect) string {
	switch d {
	case VLLM:
		return "chatcmpl-tool-" + random(32, hex)
	case LlamaCpp:
		return random(32, alnum)
	case Ollama:
		return "call_" + random(8, lower)
	}
	return "call_" + random(24, alnum)
}

func (a *answer) style() style {
	if a.d == Ollama {
		return goStyle
	}
	return compactStyle
}

func (a *answer) text() string { return strings.Join(a.chunks, "") }

func pieces(tc ToolCall) int { return len(tc.Arguments) }

// events is the stream up to and including the usage chunk (not [DONE]).
func (a *answer) events() []event {
	var evs []event
	add := func(e event, v object) {
		e.data = a.style().encode(v)
		evs = append(evs, e)
	}
	switch a.d {
	case VLLM:
		// The opening delta, then one per piece; the last one rides on
		// the finish chunk.
		add(event{opening: true}, a.vllmChunk(object{{"role", "assistant"}, {"content", ""}}, nil))
		deltas, counts := a.deltas()
		last, lastCount := object{{"content", ""}}, 0
		if n := len(deltas); n > 0 {
			last, lastCount = deltas[n-1], counts[n-1]
			deltas, counts = deltas[:n-1], counts[:n-1]
		}
		for i, d := range deltas {
			add(event{pieces: counts[i]}, a.vllmChunk(d, nil))
		}
		add(event{pieces: lastCount, final: true}, a.vllmChunk(last, a.finish))
	case LlamaCpp:
		add(event{opening: true}, a.llamaChunk(object{{"role", "assistant"}, {"content", nil}}, nil, false))
		deltas, counts := a.deltas()
		for i, d := range deltas {
			add(event{pieces: counts[i]}, a.llamaChunk(d, nil, false))
		}
		add(event{final: true}, a.llamaChunk(object{}, a.finish, !a.includeUsage))
	case Ollama:
		// No opening chunk: every chunk repeats the role.
		for _, c := range a.chunks {
			add(event{pieces: 1}, a.ollamaChunk(c, nil, nil, a.model))
		}
		for i, tc := range a.tools {
			call := object{
				{"id", tc.ID}, {"index", i}, {"type", "function"},
				{"function", object{{"name", tc.Name}, {"arguments", strings.Join(tc.Arguments, "")}}},
			}
			add(event{pieces: pieces(tc)}, a.ollamaChunk("", array{call}, nil, a.model))
		}
		add(event{final: true}, a.ollamaChunk("", nil, a.finish, a.model))
	default: // OpenAI
		deltas, counts := a.deltas()
		opening := object{{"role", "assistant"}, {"content", ""}, {"refusal", nil}}
		if len(a.chunks) == 0 && len(a.tools) > 0 {
			// A call with no text opens with the first call's header.
			opening = object{{"role", "assistant"}, {"content", nil}, deltas[0][0], {"refusal", nil}}
			deltas, counts = deltas[1:], counts[1:]
		}
		add(event{opening: true}, a.openaiChunk(opening, nil))
		for i, d := range deltas {
			add(event{pieces: counts[i]}, a.openaiChunk(d, nil))
		}
		add(event{final: true}, a.openaiChunk(object{}, a.finish))
	}
	if a.includeUsage {
		add(event{final: true}, a.usageChunk())
	}
	return evs
}

// deltas are the content and tool-call deltas after the opening one, with
// the number of pieces each carries. Tool calls start with a header delta
// (id, type, name) and go on with one delta per argument piece.
func (a *answer) deltas() ([]object, []int) {
	var ds []object
	var counts []int
	for _, c := range a.chunks {
		ds = append(ds, object{{"content", c}})
		counts = append(counts, 1)
	}
	for i, tc := range a.tools {
		var header object
		switch a.d {
		case VLLM:
			header = object{{"id", tc.ID}, {"type", "function"}, {"index", i}, {"function", object{{"name", tc.Name}}}}
		default: // OpenAI, llama.cpp
			header = object{{"index", i}, {"id", tc.ID}, {"type", "function"}, {"function", object{{"name", tc.Name}, {"arguments", ""}}}}
		}
		ds = append(ds, object{{"tool_calls", array{header}}})
		counts = append(counts, 0)
		for _, p := range tc.Arguments {
			ds = append(ds, object{{"tool_calls", array{object{{"index", i}, {"function", object{{"arguments", p}}}}}}})
			counts = append(counts, 1)
		}
	}
	return ds, counts
}

// finishValue is nil (JSON null) or the reason.
func finishValue(reason any) any {
	if s, ok := reason.(string); ok {
		return s
	}
	return nil
}

func (a *answer) openaiHead() object {
	return object{
		{"id", a.id}, {"object", "chat.completion.chunk"}, {"created", a.created}, {"model", a.model},
		{"service_tier", "default"}, {"system_fingerprint", a.fingerprint},
	}
}

func (a *answer) openaiTail(o object) object {
	if a.includeUsage {
		o = append(o, field{"usage", nil})
	}
	if a.obfuscate {
		o = append(o, field{"obfuscation", random(1+rand.IntN(12), alnum)})
	}
	return o
}

func (a *answer) openaiChunk(delta object, finish any) object {
	choice := object{{"index", 0}, {"delta", delta}, {"logprobs", nil}, {"finish_reason", finishValue(finish)}}
	return a.openaiTail(append(a.openaiHead(), field{"choices", array{choice}}))
}

func (a *answer) vllmChunk(delta object, finish any) object {
	choice := object{{"index", 0}, {"delta", delta}, {"logprobs", nil}, {"finish_reason", finishValue(finish)}}
	if finish != nil {
		choice = append(choice, field{"stop_reason", nil})
	}
	return object{
		{"id", a.id}, {"object", "chat.completion.chunk"}, {"created", a.created}, {"model", a.model},
		{"choices", array{choice}},
	}
}

func (a *answer) llamaChunk(delta object, finish any, timings bool) object {
	choice := object{{"finish_reason", finishValue(finish)}, {"index", 0}, {"delta", delta}}
	o := append(object{{"choices", array{choice}}}, a.llamaTail("chat.completion.chunk")...)
	if timings {
		o = append(o, field{"timings", a.timings()})
	}
	return o
}

func (a *answer) llamaTail(kind string) object {
	return object{{"created", a.created}, {"id", a.id}, {"model", a.model}, {"system_fingerprint", a.fingerprint}, {"object", kind}}
}

// timings is llama-server's per-request timing report.
func (a *answer) timings() object {
	p, c := a.usage.PromptTokens, a.usage.CompletionTokens
	promptMS, predictedMS := float64(p)*0.25+1, float64(c)*12.5+1
	return object{
		{"cache_n", 0},
		{"prompt_n", p}, {"prompt_ms", promptMS},
		{"prompt_per_token_ms", promptMS / float64(max(p, 1))}, {"prompt_per_second", 1e3 * float64(p) / promptMS},
		{"predicted_n", c}, {"predicted_ms", predictedMS},
		{"predicted_per_token_ms", predictedMS / float64(max(c, 1))}, {"predicted_per_second", 1e3 * float64(c) / predictedMS},
	}
}

func (a *answer) ollamaChunk(content string, calls array, finish any, model string) object {
	delta := object{{"role", "assistant"}, {"content", content}}
	if calls != nil {
		delta = append(delta, field{"tool_calls", calls})
	}
	return object{
		{"id", a.id}, {"object", "chat.completion.chunk"}, {"created", a.created}, {"model", model},
		{"system_fingerprint", "fp_ollama"},
		{"choices", array{object{{"index", 0}, {"delta", delta}, {"finish_reason", finishValue(finish)}}}},
	}
}

// usageJSON is the usage object as the dialect writes it.
func (a *answer) usageJSON(streaming bool) object {
	p, c := a.usage.PromptTokens, a.usage.CompletionTokens
	switch a.d {
	case VLLM:
		u := object{{"prompt_tokens", p}, {"total_tokens", p + c}, {"completion_tokens", c}}
		if !streaming { // the stream's usage chunk drops nulls
			u = append(u, field{"prompt_tokens_details", nil})
		}
		return u
	case LlamaCpp:
		return object{{"completion_tokens", c}, {"prompt_tokens", p}, {"total_tokens", p + c}, {"prompt_tokens_details", object{{"cached_tokens", 0}}}}
	case Ollama:
		return object{{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c}}
	}
	return object{
		{"prompt_tokens", p}, {"completion_tokens", c}, {"total_tokens", p + c},
		{"prompt_tokens_details", object{{"cached_tokens", 0}, {"audio_tokens", 0}}},
		{"completion_tokens_details", object{{"reasoning_tokens", 0}, {"audio_tokens", 0}, {"accepted_prediction_tokens", 0}, {"rejected_prediction_tokens", 0}}},
	}
}

// usageChunk is the chunk with "choices":[] that carries the usage.
func (a *answer) usageChunk() object {
	u := a.usageJSON(true)
	switch a.d {
	case VLLM:
		return object{{"id", a.id}, {"object", "chat.completion.chunk"}, {"created", a.created}, {"model", a.model}, {"choices", array{}}, {"usage", u}}
	case LlamaCpp:
		o := append(object{{"choices", array{}}}, a.llamaTail("chat.completion.chunk")...)
		return append(o, field{"usage", u}, field{"timings", a.timings()})
	case Ollama:
		return object{
			{"id", a.id}, {"object", "chat.completion.chunk"}, {"created", a.created}, {"model", a.model},
			{"system_fingerprint", "fp_ollama"}, {"choices", array{}}, {"usage", u},
		}
	}
	o := append(a.openaiHead(), field{"choices", array{}}, field{"usage", u})
	if a.obfuscate {
		o = append(o, field{"obfuscation", random(1+rand.IntN(12), alnum)})
	}
	return o
}

// streamError is the data of a dialect's error event mid-stream (for
// Ollama, the empty chunk its middleware makes of the error line).
func (a *answer) streamError(e *APIError) []byte {
	switch a.d {
	case VLLM:
		return pythonStyle.encode(errorObject(a.d, http.StatusInternalServerError, e))
	case Ollama:
		return goStyle.encode(a.ollamaChunk("", nil, nil, ""))
	}
	return compactStyle.encode(errorObject(a.d, http.StatusInternalServerError, e))
}

// body is the non-streaming answer.
func (a *answer) body() []byte {
	text := a.text()
	var content any = text
	if text == "" && len(a.tools) > 0 && a.d != Ollama {
		content = nil
	}
	var calls array
	for i, tc := range a.tools {
		fn := object{{"name", tc.Name}, {"arguments", strings.Join(tc.Arguments, "")}}
		switch a.d {
		case LlamaCpp:
			calls = append(calls, object{{"type", "function"}, {"function", fn}, {"id", tc.ID}})
		case Ollama:
			calls = append(calls, object{{"id", tc.ID}, {"index", i}, {"type", "function"}, {"function", fn}})
		default:
			calls = append(calls, object{{"id", tc.ID}, {"type", "function"}, {"function", fn}})
		}
	}
	switch a.d {
	case VLLM:
		if calls == nil {
			calls = array{}
		}
		msg := object{{"role", "assistant"}, {"reasoning_content", nil}, {"content", content}, {"tool_calls", calls}}
		choice := object{{"index", 0}, {"message", msg}, {"logprobs", nil}, {"finish_reason", a.finish}, {"stop_reason", nil}}
		return compactStyle.encode(object{
			{"id", a.id}, {"object", "chat.completion"}, {"created", a.created}, {"model", a.model},
			{"choices", array{choice}}, {"usage", a.usageJSON(false)}, {"prompt_logprobs", nil},
		})
	case LlamaCpp:
		msg := object{{"role", "assistant"}, {"content", content}}
		if calls != nil {
			msg = append(msg, field{"tool_calls", calls})
		}
		choice := object{{"finish_reason", a.finish}, {"index", 0}, {"message", msg}}
		o := object{
			{"choices", array{choice}}, {"created", a.created}, {"model", a.model},
			{"system_fingerprint", a.fingerprint}, {"object", "chat.completion"},
			{"usage", a.usageJSON(false)}, {"id", a.id}, {"timings", a.timings()},
		}
		return compactStyle.encode(o)
	case Ollama:
		msg := object{{"role", "assistant"}, {"content", content}}
		if calls != nil {
			msg = append(msg, field{"tool_calls", calls})
		}
		choice := object{{"index", 0}, {"message", msg}, {"finish_reason", a.finish}}
		o := object{
			{"id", a.id}, {"object", "chat.completion"}, {"created", a.created}, {"model", a.model},
			{"system_fingerprint", "fp_ollama"}, {"choices", array{choice}}, {"usage", a.usageJSON(false)},
		}
		return append(goStyle.encode(o), '\n')
	}
	msg := object{{"role", "assistant"}, {"content", content}}
	if calls != nil {
		msg = append(msg, field{"tool_calls", calls})
	}
	msg = append(msg, field{"refusal", nil}, field{"annotations", array{}})
	choice := object{{"index", 0}, {"message", msg}, {"logprobs", nil}, {"finish_reason", a.finish}}
	o := object{
		{"id", a.id}, {"object", "chat.completion"}, {"created", a.created}, {"model", a.model},
		{"choices", array{choice}}, {"usage", a.usageJSON(false)},
		{"service_tier", "default"}, {"system_fingerprint", a.fingerprint},
	}
	return append(indent(compactStyle.encode(o), "  "), '\n')
}

// errorObject is {"error":{...}} in the dialect's field order, with the
// defaults filled in for the status.
func errorObject(d Dialect, status int, e *APIError) object {
	if e == nil {
		e = &APIError{}
	}
	msg, typ, code := e.Message, e.Type, e.Code
	if msg == "" {
		msg = defaultMessage(d, status)
	}
	if typ == "" {
		typ = defaultType(d, status)
	}
	if code == nil {
		switch d {
		case VLLM, LlamaCpp:
			code = status
		case OpenAI:
			switch status {
			case http.StatusTooManyRequests:
				code = "rate_limit_exceeded"
			case http.StatusUnauthorized:
				code = "invalid_api_key"
			}
		}
	}
	var param any
	if e.Param != "" {
		param = e.Param
	}
	if d == LlamaCpp {
		return object{{"error", object{{"code", code}, {"message", msg}, {"type", typ}}}}
	}
	return object{{"error", object{{"message", msg}, {"type", typ}, {"param", param}, {"code", code}}}}
}

// errorBody is a whole error answer's body.
func errorBody(d Dialect, status int, e *APIError) []byte {
	o := errorObject(d, status, e)
	switch d {
	case OpenAI:
		return append(indent(compactStyle.encode(o), "    "), '\n')
	case Ollama:
		return append(goStyle.encode(o), '\n')
	}
	return compactStyle.encode(o)
}

func defaultMessage(d Dialect, status int) string {
	if d == OpenAI {
		switch status {
		case http.StatusUnauthorized:
			return "Incorrect API key provided: sk-fake. You can find your API key at https://platform.openai.com/account/api-keys."
		case http.StatusTooManyRequests:
			return "Rate limit reached for requests. Please try again in 1s."
		case http.StatusInternalServerError:
			return "The server had an error while processing your request. Sorry about that!"
		case http.StatusServiceUnavailable:
			return "The engine is currently overloaded, please try again later"
		}
	}
	if t := http.StatusText(status); t != "" {
		return t
	}
	return "error " + strconv.Itoa(status)
}

func defaultType(d Dialect, status int) string {
	switch d {
	case VLLM:
		switch status {
		case http.StatusBadRequest:
			return "BadRequestError"
		case http.StatusNotFound:
			return "NotFoundError"
		case http.StatusNotImplemented:
			return "NotImplementedError"
		case http.StatusInternalServerError:
			return "InternalServerError"
		}
		return strings.ReplaceAll(http.StatusText(status), " ", "") + "Error"
	case LlamaCpp:
		switch status {
		case http.StatusBadRequest:
			return "invalid_request_error"
		case http.StatusUnauthorized:
			return "authentication_error"
		case http.StatusForbidden:
			return "permission_error"
		case http.StatusNotFound:
			return "not_found_error"
		case http.StatusNotImplemented:
			return "not_supported_error"
		case http.StatusServiceUnavailable:
			return "unavailable_error"
		}
		return "server_error"
	case Ollama:
		switch status {
		case http.StatusBadRequest:
			return "invalid_request_error"
		case http.StatusNotFound:
			return "not_found_error"
		}
		return "api_error"
	}
	switch {
	case status == http.StatusTooManyRequests:
		return "requests"
	case status >= 500:
		return "server_error"
	}
	return "invalid_request_error"
}

// contentType is the dialect's Content-Type for a stream or a JSON body.
func contentType(d Dialect, stream bool) string {
	switch {
	case stream && (d == OpenAI || d == VLLM):
		return "text/event-stream; charset=utf-8"
	case stream:
		return "text/event-stream"
	case d == LlamaCpp:
		return "application/json; charset=utf-8"
	}
	return "application/json"
}
