package openai

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

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
var rawParams = []string{"tools", "tool_choice", "response_format"}

// request is one chat's request, the same for every attempt.
type request struct {
	params openai.ChatCompletionNewParams
	opts   []option.RequestOption
}

// invalid is the error of a chat the kind cannot send: the user's to fix.
func invalid(format string, args ...any) *actors.Error {
	return &actors.Error{Code: actors.Code_CODE_INVALID_ARGUMENT, Reason: fmt.Sprintf(format, args...)}
}

// newRequest maps a chat to a request: the history to messages, the
// layout's arguments overridden by the chat's parameters. Parameters the
// kind does not know are left out: a Kuwa modelfile carries directives for
// other models too.
func (m *Model) newRequest(req *actors.ChatRequest) (*request, error) {
	msgs, err := messages(req.GetHistory())
	if err != nil {
		return nil, err
	}
	s := m.defaults
	params := req.GetParams()
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
				return nil, invalid("parameter %s: want a number", p.name)
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
			return nil, invalid("parameter %s: want a whole number", name)
		case n < 0 && name == "num_predict":
			s.maxTokens = nil // Ollama's "no limit"
		case n < 1:
			return nil, invalid("parameter %s: want a whole number of 1 or more", name)
		default:
			s.maxTokens = &n
		}
	}
	if v, ok := params["seed"]; ok {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return nil, invalid("parameter seed: want a whole number")
		}
		s.seed = &n
	}
	if v, ok := params["stop"]; ok {
		s.stop, s.stopSet = parseStop(v), true
	}

	r := &request{params: openai.ChatCompletionNewParams{
		Model: m.model,
		// The usage arrives in a last chunk with no choices.
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	}}
	p := &r.params
	if s.temperature != nil {
		p.Temperature = openai.Float(*s.temperature)
	}
	if s.topP != nil {
		p.TopP = openai.Float(*s.topP)
	}
	if s.frequencyPen != nil {
		p.FrequencyPenalty = openai.Float(*s.frequencyPen)
	}
	if s.presencePen != nil {
		p.PresencePenalty = openai.Float(*s.presencePen)
	}
	if s.maxTokens != nil {
		// max_tokens, not max_completion_tokens: every compatible server
		// takes it; extra can send the other to a server that wants it.
		p.MaxTokens = openai.Int(*s.maxTokens)
	}
	if s.seed != nil {
		p.Seed = openai.Int(*s.seed)
	}
	switch {
	case !s.stopSet || len(s.stop) == 0:
	case len(s.stop) == 1:
		p.Stop = openai.ChatCompletionNewParamsStopUnion{OfString: openai.String(s.stop[0])}
	default:
		p.Stop = openai.ChatCompletionNewParamsStopUnion{OfStringArray: s.stop}
	}

	// The messages go as built: the SDK's typed messages would drop what
	// they have no field for (a tool call's extra keys).
	r.opts = append(r.opts, option.WithJSONSet("messages", msgs))
	raw := map[string]json.RawMessage{}
	for _, name := range rawParams {
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
			b, _ := json.Marshal(v)
			v = string(b)
		}
		raw[name] = json.RawMessage(v)
	}
	for _, e := range m.extra {
		if _, chatSets := params[e.key]; chatSets && chatOverrides(e.key) {
			continue
		}
		r.opts = append(r.opts, option.WithJSONSet(e.path, e.value))
	}
	for _, name := range rawParams {
		if v, ok := raw[name]; ok {
			r.opts = append(r.opts, option.WithJSONSet(name, v))
		}
	}
	return r, nil
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

// wireMessage is a chat message as the API takes it.
type wireMessage struct {
	Role string `json:"role"`
	// Content is null only in an assistant message that holds tool
	// calls and no text, as OpenAI's own clients send it.
	Content    *string         `json:"content"`
	Name       string          `json:"name,omitempty"`
	ToolCallID string          `json:"tool_call_id,omitempty"`
	ToolCalls  json.RawMessage `json:"tool_calls,omitempty"`
}

// messages maps a history to the request's messages. A modelfile's system
// prompt is already a system message at the front: the gateway puts it
// there.
func messages(history []*actors.Message) (json.RawMessage, error) {
	if len(history) == 0 {
		return nil, invalid("the chat has no messages")
	}
	out := make([]wireMessage, len(history))
	for i, h := range history {
		w := wireMessage{Name: h.GetName(), ToolCallID: h.GetToolCallId()}
		content := h.GetContent()
		w.Content = &content
		switch h.GetRole() {
		case actors.Role_ROLE_USER:
			w.Role = "user"
		case actors.Role_ROLE_ASSISTANT:
			w.Role = "assistant"
		case actors.Role_ROLE_SYSTEM:
			w.Role = "system"
		case actors.Role_ROLE_TOOL:
			w.Role = "tool"
		default:
			return nil, invalid("message %d has an unknown role", i+1)
		}
		if tc := strings.TrimSpace(h.GetToolCalls()); tc != "" {
			if !strings.HasPrefix(tc, "[") || !json.Valid([]byte(tc)) {
				return nil, invalid("message %d: tool_calls is not a JSON list", i+1)
			}
			w.ToolCalls = json.RawMessage(tc)
			if content == "" {
				w.Content = nil
			}
		}
		out[i] = w
	}
	b, err := json.Marshal(out)
	if err != nil { // the parts were checked: not expected
		return nil, &actors.Error{Code: actors.Code_CODE_INTERNAL, Reason: "the chat cannot be sent", Err: err}
	}
	return b, nil
}
