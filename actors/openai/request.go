package openai

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/actors"
)

// sampling are the request fields with a layout default that a chat's
// parameters override.
type sampling struct {
	temperature, topP         *float64
	frequencyPen, presencePen *float64
	maxTokens, seed           *int64
	stop                      []string
	stopSet                   bool
}

func (a *Args) sampling() (sampling, error) {
	s := sampling{temperature: a.Temperature, topP: a.TopP, maxTokens: a.MaxTokens, seed: a.Seed}
	if a.Temperature != nil && *a.Temperature < 0 {
		return s, fmt.Errorf("temperature must be 0 or more, got %v", *a.Temperature)
	}
	if a.TopP != nil && (*a.TopP <= 0 || *a.TopP > 1) {
		return s, fmt.Errorf("top_p must be more than 0 and at most 1, got %v", *a.TopP)
	}
	if a.MaxTokens != nil && *a.MaxTokens < 1 {
		return s, fmt.Errorf("max_tokens must be 1 or more, got %d", *a.MaxTokens)
	}
	if a.Stop != nil {
		s.stop, s.stopSet = a.Stop, true
	}
	return s, nil
}

// rawParams are the chat parameters passed upstream as the JSON they hold.
var rawParams = [...]string{"tools", "tool_choice", "response_format"}

// request is one chat's request: its JSON body, the same for every attempt.
type request struct {
	body []byte
}

// invalid is the error of a chat the kind cannot send: the user's to fix.
func invalid(format string, args ...any) *actors.Error {
	return &actors.Error{Code: actors.Code_CODE_INVALID_ARGUMENT, Reason: fmt.Sprintf(format, args...)}
}

// newRequest maps a chat to a request body: the history to messages, the
// layout's arguments overridden by the chat's parameters. Parameters the
// kind does not know are left out: a Kuwa modelfile carries directives for
// other models too.
//
// The body is written by hand, field by field, in one buffer: the chat's
// JSON parameters (tools, tool_choice, response_format), the extra
// argument's values and the history's tool calls go upstream byte for byte
// as they came, and building it costs a few microseconds.
func (m *Model) newRequest(req *actors.ChatRequest) (*request, error) {
	history := req.GetHistory()
	if len(history) == 0 {
		return nil, invalid("the chat has no messages")
	}
	size := 512 + len(m.model)
	for _, h := range history {
		size += 64 + len(h.GetContent()) + len(h.GetName()) + len(h.GetToolCallId()) + len(h.GetToolCalls())
	}
	for _, e := range m.extra {
		size += 8 + len(e.key) + len(e.value)
	}
	b := make([]byte, 0, size)
	b = append(b, `{"model":`...)
	b = appendString(b, m.model)
	b = append(b, `,"messages":`...)
	b, err := appendMessages(b, history)
	if err != nil {
		return nil, err
	}

	params := req.GetParams()
	s, err := m.chatSampling(params)
	if err != nil {
		return nil, err
	}
	var raw [len(rawParams)]string // the chat's JSON parameters; "" when unset
	for i, name := range rawParams {
		v, ok := params[name]
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		if !json.Valid([]byte(v)) {
			if name != "tool_choice" || v == "" {
				return nil, invalid("parameter %s: want JSON", name)
			}
			// tool_choice is often a bare word ("auto", "none").
			v = string(appendString(nil, v))
		}
		raw[i] = v
	}

	b = append(b, `,"stream":true`...)
	if !m.extraStreamOptions {
		// The usage arrives in a last chunk with no choices.
		b = append(b, `,"stream_options":{"include_usage":true}`...)
	}
	for _, f := range []struct {
		name string
		v    *float64
	}{
		{"temperature", s.temperature},
		{"top_p", s.topP},
		{"frequency_penalty", s.frequencyPen},
		{"presence_penalty", s.presencePen},
	} {
		if f.v != nil {
			b = append(b, ',', '"')
			b = append(b, f.name...)
			b = append(b, '"', ':')
			b = appendFloat(b, *f.v)
		}
	}
	if s.maxTokens != nil {
		// max_tokens, not max_completion_tokens: every compatible server
		// takes it; extra can send the other to a server that wants it.
		b = append(b, `,"max_tokens":`...)
		b = strconv.AppendInt(b, *s.maxTokens, 10)
	}
	if s.seed != nil {
		b = append(b, `,"seed":`...)
		b = strconv.AppendInt(b, *s.seed, 10)
	}
	switch {
	case !s.stopSet || len(s.stop) == 0:
	case len(s.stop) == 1:
		b = append(b, `,"stop":`...)
		b = appendString(b, s.stop[0])
	default:
		b = append(b, `,"stop":[`...)
		for i, stop := range s.stop {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, stop)
		}
		b = append(b, ']')
	}
	for _, e := range m.extra {
		if _, chatSets := params[e.key]; chatSets && chatOverrides(e.key) {
			continue
		}
		b = append(b, ',')
		b = appendString(b, e.key)
		b = append(b, ':')
		b = append(b, e.value...)
	}
	for i, name := range rawParams {
		if raw[i] != "" {
			b = append(b, ',', '"')
			b = append(b, name...)
			b = append(b, '"', ':')
			b = append(b, raw[i]...)
		}
	}
	b = append(b, '}')
	return &request{body: b}, nil
}

// chatSampling is the layout's sampling defaults overridden by a chat's
// parameters.
func (m *Model) chatSampling(params map[string]string) (sampling, error) {
	s := m.defaults
	for _, p := range []struct {
		name string
		dst  **float64
	}{
		{"temperature", &s.temperature},
		{"top_p", &s.topP},
		{"frequency_penalty", &s.frequencyPen},
		{"presence_penalty", &s.presencePen},
	} {
		if v, ok := params[p.name]; ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
				return s, invalid("parameter %s: want a number", p.name)
			}
			*p.dst = &f
		}
	}
	// Kuwa modelfiles and Ollama call the answer's limit num_predict, TGI
	// max_new_tokens; max_tokens wins when several are given.
	for _, name := range []string{"num_predict", "max_new_tokens", "max_tokens"} {
		v, ok := params[name]
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch {
		case err != nil:
			return s, invalid("parameter %s: want a whole number", name)
		case n < 0 && name == "num_predict":
			s.maxTokens = nil // Ollama's "no limit"
		case n < 1:
			return s, invalid("parameter %s: want a whole number of 1 or more", name)
		default:
			s.maxTokens = &n
		}
	}
	if v, ok := params["seed"]; ok {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return s, invalid("parameter seed: want a whole number")
		}
		s.seed = &n
	}
	if v, ok := params["stop"]; ok {
		s.stop, s.stopSet = parseStop(v), true
	}
	return s, nil
}

// chatOverrides reports whether a chat parameter of this name replaces the
// extra field of the same name.
func chatOverrides(key string) bool {
	switch key {
	case "frequency_penalty", "presence_penalty", "tools", "tool_choice", "response_format":
		return true
	}
	return false
}

// parseStop reads a stop parameter: a JSON list of strings, or else one
// stop sequence as it is ("[INST]" is a common one, and no JSON list).
// An empty value clears the layout's stop.
func parseStop(v string) []string {
	if v == "" {
		return nil
	}
	if strings.HasPrefix(strings.TrimSpace(v), "[") {
		var list []string
		if json.Unmarshal([]byte(v), &list) == nil {
			return list
		}
	}
	return []string{v}
}

// appendMessages writes a history as the API's messages. A modelfile's
// system prompt is already a system message at the front: the gateway puts
// it there. Content is null only in an assistant message that holds tool
// calls and no text, as OpenAI's own clients send it.
func appendMessages(b []byte, history []*actors.Message) ([]byte, error) {
	b = append(b, '[')
	for i, h := range history {
		var role string
		switch h.GetRole() {
		case actors.Role_ROLE_USER:
			role = "user"
		case actors.Role_ROLE_ASSISTANT:
			role = "assistant"
		case actors.Role_ROLE_SYSTEM:
			role = "system"
		case actors.Role_ROLE_TOOL:
			role = "tool"
		default:
			return nil, invalid("message %d has an unknown role", i+1)
		}
		tc := strings.TrimSpace(h.GetToolCalls())
		if tc != "" && (!strings.HasPrefix(tc, "[") || !json.Valid([]byte(tc))) {
			return nil, invalid("message %d: tool_calls is not a JSON list", i+1)
		}
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"role":"`...)
		b = append(b, role...)
		b = append(b, `","content":`...)
		if content := h.GetContent(); content != "" || tc == "" {
			b = appendString(b, content)
		} else {
			b = append(b, "null"...)
		}
		if name := h.GetName(); name != "" {
			b = append(b, `,"name":`...)
			b = appendString(b, name)
		}
		if id := h.GetToolCallId(); id != "" {
			b = append(b, `,"tool_call_id":`...)
			b = appendString(b, id)
		}
		if tc != "" {
			b = append(b, `,"tool_calls":`...)
			b = append(b, tc...)
		}
		b = append(b, '}')
	}
	return append(b, ']'), nil
}

const hexDigits = "0123456789abcdef"

// appendString writes s as a JSON string, as encoding/json does with HTML
// escaping off: quotes, backslashes and control characters escaped,
// invalid UTF-8 as U+FFFD, U+2028 and U+2029 escaped for JavaScript.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendFloat writes f as encoding/json does: the shortest decimal that
// reads back as f, in exponent form only for very small or large values.
// f is finite: the arguments and parameters are checked.
func appendFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// 1e-07 as 1e-7.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
