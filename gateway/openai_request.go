package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/troupe-llm/troupe/actors"
)

// chatCompletionRequest is the body of POST /v1/chat/completions, as far as
// Troupe reads it. Fields it does not know are ignored, as OpenAI-compatible
// servers do, so that clients sending newer options still work.
type chatCompletionRequest struct {
	Model         string          `json:"model"`
	Messages      []openaiMessage `json:"messages"`
	Stream        bool            `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	N *int `json:"n"`

	// Parameters reach the model as they were sent: numbers keep their
	// spelling, JSON values their bytes.
	Temperature         json.RawMessage `json:"temperature"`
	TopP                json.RawMessage `json:"top_p"`
	MaxTokens           json.RawMessage `json:"max_tokens"`
	MaxCompletionTokens json.RawMessage `json:"max_completion_tokens"`
	Seed                json.RawMessage `json:"seed"`
	Stop                json.RawMessage `json:"stop"`
	FrequencyPenalty    json.RawMessage `json:"frequency_penalty"`
	PresencePenalty     json.RawMessage `json:"presence_penalty"`
	Tools               json.RawMessage `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	ResponseFormat      json.RawMessage `json:"response_format"`
	User                string          `json:"user"`
}

// openaiMessage is one message of an OpenAI chat. Content is a string, a
// list of content parts, or null (an assistant message with tool calls).
type openaiMessage struct {
	Role       string          `json:"role"`
	Content    json.RawMessage `json:"content"`
	Name       string          `json:"name"`
	ToolCalls  json.RawMessage `json:"tool_calls"`
	ToolCallID string          `json:"tool_call_id"`
}

// requestError is a bad request in OpenAI's terms: the message for the
// client and the parameter it is about.
type requestError struct {
	msg, param string
}

func (e *requestError) Error() string { return e.msg }

func badParam(param, format string, args ...any) *requestError {
	return &requestError{msg: fmt.Sprintf(format, args...), param: param}
}

// parseChatCompletion decodes a chat completion request into the layout
// name, the history and the model parameters.
func parseChatCompletion(body []byte) (*chatCompletionRequest, *actors.ChatRequest, error) {
	var cr chatCompletionRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&cr); err != nil {
		return nil, nil, &requestError{msg: "The body is not a JSON chat completion request (" + shortJSONError(err) + ")."}
	}
	if rest := bytes.TrimSpace(body[dec.InputOffset():]); len(rest) > 0 {
		return nil, nil, &requestError{msg: "The body holds more than one JSON value."}
	}
	if strings.TrimSpace(cr.Model) == "" {
		return nil, nil, badParam("model", "Missing model: name the LLM to chat with (GET /v1/models lists them).")
	}
	if cr.N != nil && *cr.N != 1 {
		return nil, nil, badParam("n", "Only n=1 is supported.")
	}
	if len(cr.Messages) == 0 {
		return nil, nil, badParam("messages", "The chat has no messages.")
	}
	req := &actors.ChatRequest{Layout: cr.Model, History: make([]*actors.Message, 0, len(cr.Messages))}
	for i, m := range cr.Messages {
		msg, err := toMessage(m)
		if err != nil {
			return nil, nil, badParam(fmt.Sprintf("messages[%d]", i), "Message %d: %v.", i, err)
		}
		req.History = append(req.History, msg)
	}
	if err := setParams(&cr, req); err != nil {
		return nil, nil, err
	}
	return &cr, req, nil
}

func toMessage(m openaiMessage) (*actors.Message, error) {
	msg := &actors.Message{Name: m.Name}
	switch m.Role {
	case "user":
		msg.Role = actors.Role_ROLE_USER
	case "assistant":
		msg.Role = actors.Role_ROLE_ASSISTANT
	case "system", "developer":
		msg.Role = actors.Role_ROLE_SYSTEM
	case "tool":
		msg.Role = actors.Role_ROLE_TOOL
		if m.ToolCallID == "" {
			return nil, errors.New("a tool message needs tool_call_id")
		}
		msg.ToolCallId = m.ToolCallID
	case "":
		return nil, errors.New("missing role")
	default:
		return nil, fmt.Errorf("unknown role %q (want system, developer, user, assistant or tool)", clip(m.Role))
	}
	if len(m.ToolCalls) > 0 && !isNull(m.ToolCalls) {
		if m.Role != "assistant" {
			return nil, errors.New("only assistant messages carry tool_calls")
		}
		if m.ToolCalls[0] != '[' {
			return nil, errors.New("tool_calls must be a list")
		}
		msg.ToolCalls = string(m.ToolCalls)
	}
	text, err := contentText(m.Content)
	if err != nil {
		return nil, err
	}
	if text == nil && msg.ToolCalls == "" {
		return nil, errors.New("missing content")
	}
	if text != nil {
		msg.Content = *text
	}
	return msg, nil
}

// contentText reads a message's content: a string, or a list of parts of
// which Troupe takes the text ones (models here are text models). It returns
// nil for a missing or null content.
func contentText(raw json.RawMessage) (*string, error) {
	if len(raw) == 0 || isNull(raw) {
		return nil, nil
	}
	var s string
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, errors.New("content is not a valid string")
		}
		return &s, nil
	}
	var parts []struct {
		Type string  `json:"type"`
		Text *string `json:"text"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return nil, errors.New("content must be a string or a list of content parts")
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type != "text" || p.Text == nil {
			return nil, fmt.Errorf("content part of type %q is not supported: send text", clip(p.Type))
		}
		b.WriteString(*p.Text)
	}
	s = b.String()
	return &s, nil
}

// clip shortens a client's value quoted in an error message.
func clip(s string) string {
	if len(s) <= 40 {
		return s
	}
	return strings.ToValidUTF8(s[:40], "") + "…"
}

func isNull(raw json.RawMessage) bool { return string(bytes.TrimSpace(raw)) == "null" }

// setParams copies the request's parameters into the chat's, checking the
// ones Troupe can check, so that a bad value is a 400 here rather than a
// failure upstream.
func setParams(cr *chatCompletionRequest, req *actors.ChatRequest) error {
	number := func(name string, raw json.RawMessage, integer bool) error {
		if len(raw) == 0 || isNull(raw) {
			return nil
		}
		s := string(raw)
		var err error
		if integer {
			_, err = strconv.ParseInt(s, 10, 64)
		} else {
			_, err = strconv.ParseFloat(s, 64)
		}
		if err != nil {
			want := "a number"
			if integer {
				want = "a whole number"
			}
			return badParam(name, "%s must be %s.", name, want)
		}
		setParam(req, name, s)
		return nil
	}
	for _, p := range []struct {
		name    string
		raw     json.RawMessage
		integer bool
	}{
		{"temperature", cr.Temperature, false},
		{"top_p", cr.TopP, false},
		{"max_tokens", cr.MaxTokens, true},
		{"seed", cr.Seed, true},
		{"frequency_penalty", cr.FrequencyPenalty, false},
		{"presence_penalty", cr.PresencePenalty, false},
	} {
		if err := number(p.name, p.raw, p.integer); err != nil {
			return err
		}
	}
	// max_completion_tokens is the newer name of max_tokens.
	if len(cr.MaxCompletionTokens) > 0 && !isNull(cr.MaxCompletionTokens) {
		if err := number("max_completion_tokens", cr.MaxCompletionTokens, true); err != nil {
			return err
		}
		req.Params["max_tokens"] = req.Params["max_completion_tokens"]
		delete(req.Params, "max_completion_tokens")
	}
	if len(cr.Stop) > 0 && !isNull(cr.Stop) {
		var one string
		var many []string
		if json.Unmarshal(cr.Stop, &one) != nil && json.Unmarshal(cr.Stop, &many) != nil {
			return badParam("stop", "stop must be a string or a list of strings.")
		}
		setParam(req, "stop", string(cr.Stop))
	}
	for _, p := range []struct {
		name  string
		raw   json.RawMessage
		first byte // what the value must start with; 0 for anything
	}{
		{"tools", cr.Tools, '['},
		{"tool_choice", cr.ToolChoice, 0},
		{"response_format", cr.ResponseFormat, '{'},
	} {
		if len(p.raw) == 0 || isNull(p.raw) {
			continue
		}
		if p.first != 0 && p.raw[0] != p.first {
			return badParam(p.name, "%s has the wrong type.", p.name)
		}
		setParam(req, p.name, string(p.raw))
	}
	if cr.User != "" {
		setParam(req, "user", cr.User)
	}
	return nil
}
