package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

// scripted is a model that answers with fixed pieces and reports usage,
// a finish reason and tool calls as an OpenAI upstream would, and keeps the
// last request it saw.
type scripted struct {
	pieces    []string
	toolCalls []string
	finish    string
	err       error

	mu   sync.Mutex
	last *actors.ChatRequest
}

func (m *scripted) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	m.mu.Lock()
	m.last = req
	m.mu.Unlock()
	out := actors.OutputOf(ctx)
	for _, p := range m.pieces {
		if err := emit(p); err != nil {
			return err
		}
	}
	for _, c := range m.toolCalls {
		if err := out.ToolCalls(c); err != nil {
			return err
		}
	}
	if m.err != nil {
		return m.err
	}
	out.Usage(7, len(m.pieces))
	if m.finish != "" {
		out.Finish(m.finish)
	}
	return nil
}

func (m *scripted) request() *actors.ChatRequest {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last
}

func sdkClient(n *node, opts ...option.RequestOption) openai.Client {
	return openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(n.http.URL + "/v1/"),
		option.WithAPIKey("unused"),
		option.WithMaxRetries(0),
	}, opts...)...)
}

func userMessages(text string) []openai.ChatCompletionMessageParamUnion {
	return []openai.ChatCompletionMessageParamUnion{openai.UserMessage(text)}
}

// The official SDK streams an answer through the gateway: content as the
// model produced it, the finish reason, and usage in a last chunk when asked.
func TestOpenAIStreamWithSDK(t *testing.T) {
	m := &scripted{pieces: []string{"Hel", "lo, ", "wörld"}}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	client := sdkClient(n)
	stream := client.Chat.Completions.NewStreaming(ctxFor(t), openai.ChatCompletionNewParams{
		Model:         "llm",
		Messages:      userMessages("hi"),
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	var acc openai.ChatCompletionAccumulator
	var deltas []string
	for stream.Next() {
		chunk := stream.Current()
		acc.AddChunk(chunk)
		if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
			deltas = append(deltas, chunk.Choices[0].Delta.Content)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(deltas, "|"); got != "Hel|lo, |wörld" {
		t.Errorf("deltas %q, want each piece as its own chunk", got)
	}
	if got := acc.Choices[0].Message.Content; got != "Hello, wörld" {
		t.Errorf("content %q", got)
	}
	if got := acc.Choices[0].FinishReason; got != "stop" {
		t.Errorf("finish reason %q, want stop", got)
	}
	if acc.Usage.PromptTokens != 7 || acc.Usage.CompletionTokens != 3 || acc.Usage.TotalTokens != 10 {
		t.Errorf("usage %+v, want 7 + 3", acc.Usage)
	}
	if got := testutil.ToFloat64(counter(t, n.reg, "troupe_chat_tokens_total", "kind", "completion")); got != 3 {
		t.Errorf("completion tokens counted: %v, want 3", got)
	}
}

// Without include_usage there is no usage chunk, and the stream's raw form
// is what OpenAI sends: a role chunk, content chunks, a finish chunk, [DONE].
func TestOpenAIStreamWireForm(t *testing.T) {
	m := &scripted{pieces: []string{"a", "b"}}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	resp := n.postJSON(ctxFor(t), "/v1/chat/completions", `{"model":"llm","stream":true,"messages":[{"role":"user","content":"x"}]}`, "")
	body := readAll(t, resp)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := strings.Split(strings.TrimSuffix(body, "\n\n"), "\n\n")
	if len(events) != 5 {
		t.Fatalf("%d events, want role, a, b, finish, [DONE]:\n%s", len(events), body)
	}
	wantDeltas := []string{`{"role":"assistant","content":""}`, `{"content":"a"}`, `{"content":"b"}`, `{}`}
	for i, want := range wantDeltas {
		var ev struct {
			ID      string `json:"id"`
			Object  string `json:"object"`
			Model   string `json:"model"`
			Choices []struct {
				Delta        json.RawMessage `json:"delta"`
				FinishReason *string         `json:"finish_reason"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(strings.TrimPrefix(events[i], "data: ")), &ev); err != nil {
			t.Fatalf("event %d %q: %v", i, events[i], err)
		}
		if ev.Object != "chat.completion.chunk" || ev.Model != "llm" || !strings.HasPrefix(ev.ID, "chatcmpl-") {
			t.Errorf("event %d: %s", i, events[i])
		}
		if string(ev.Choices[0].Delta) != want {
			t.Errorf("event %d delta %s, want %s", i, ev.Choices[0].Delta, want)
		}
		if last := i == len(wantDeltas)-1; last != (ev.Choices[0].FinishReason != nil) {
			t.Errorf("event %d finish reason %v", i, ev.Choices[0].FinishReason)
		}
	}
	if events[4] != "data: [DONE]" {
		t.Errorf("last event %q", events[4])
	}
}

// Without stream the SDK gets one chat.completion.
func TestOpenAINonStreamWithSDK(t *testing.T) {
	m := &scripted{pieces: []string{"one ", "answer"}, finish: "length"}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	client := sdkClient(n)
	c, err := client.Chat.Completions.New(ctxFor(t), openai.ChatCompletionNewParams{Model: "llm", Messages: userMessages("hi")})
	if err != nil {
		t.Fatal(err)
	}
	if c.Object != "chat.completion" || c.Model != "llm" || len(c.Choices) != 1 {
		t.Fatalf("completion %+v", c)
	}
	if got := c.Choices[0].Message.Content; got != "one answer" {
		t.Errorf("content %q", got)
	}
	if c.Choices[0].FinishReason != "length" || c.Usage.PromptTokens != 7 || c.Usage.CompletionTokens != 2 {
		t.Errorf("finish %q usage %+v", c.Choices[0].FinishReason, c.Usage)
	}
}

// Tool calls from the model reach an SDK client unchanged: as deltas in a
// stream, merged into whole calls in one answer.
func TestOpenAIToolCallsPassThrough(t *testing.T) {
	deltas := []string{
		`[{"index":0,"id":"call_abc","type":"function","function":{"name":"get_weather","arguments":""}}]`,
		`[{"index":0,"function":{"arguments":"{\"city\":"}}]`,
		`[{"index":0,"function":{"arguments":"\"Taipei\"}"}}]`,
	}
	m := &scripted{toolCalls: deltas, finish: "tool_calls"}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	client := sdkClient(n)
	params := openai.ChatCompletionNewParams{
		Model:    "llm",
		Messages: userMessages("weather?"),
		Tools: []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
			Name:       "get_weather",
			Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"type": "string"}}},
		})},
	}

	stream := client.Chat.Completions.NewStreaming(ctxFor(t), params)
	var acc openai.ChatCompletionAccumulator
	var raw []string
	for stream.Next() {
		chunk := stream.Current()
		acc.AddChunk(chunk)
		if len(chunk.Choices) > 0 && len(chunk.Choices[0].Delta.ToolCalls) > 0 {
			raw = append(raw, chunk.Choices[0].Delta.JSON.ToolCalls.Raw())
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(raw, "\n") != strings.Join(deltas, "\n") {
		t.Errorf("tool call deltas changed on the way:\n%s\nwant\n%s", strings.Join(raw, "\n"), strings.Join(deltas, "\n"))
	}
	calls := acc.Choices[0].Message.ToolCalls
	if len(calls) != 1 || calls[0].ID != "call_abc" || calls[0].Function.Name != "get_weather" || calls[0].Function.Arguments != `{"city":"Taipei"}` {
		t.Errorf("accumulated calls %+v", calls)
	}
	if acc.Choices[0].FinishReason != "tool_calls" {
		t.Errorf("finish %q", acc.Choices[0].FinishReason)
	}
	var tools []map[string]any
	if err := json.Unmarshal([]byte(m.request().Params["tools"]), &tools); err != nil || len(tools) != 1 {
		t.Errorf("tools reached the model as %q", m.request().Params["tools"])
	}

	c, err := client.Chat.Completions.New(ctxFor(t), params)
	if err != nil {
		t.Fatal(err)
	}
	calls = c.Choices[0].Message.ToolCalls
	if len(calls) != 1 || calls[0].ID != "call_abc" || calls[0].Function.Arguments != `{"city":"Taipei"}` || c.Choices[0].FinishReason != "tool_calls" {
		t.Errorf("merged calls %+v, finish %q", calls, c.Choices[0].FinishReason)
	}
}

// Messages of every role and the request's parameters reach the model.
func TestOpenAIRequestReachesModel(t *testing.T) {
	m := &scripted{pieces: []string{"ok"}}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	body := `{"model":"llm","messages":[
		{"role":"developer","content":"be brief"},
		{"role":"user","content":[{"type":"text","text":"weather "},{"type":"text","text":"in Taipei?"}]},
		{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]},
		{"role":"tool","tool_call_id":"c1","content":"sunny"}],
		"temperature":0.25,"top_p":0.9,"max_completion_tokens":64,"seed":42,"stop":["\n\n"],
		"tool_choice":"auto","response_format":{"type":"json_object"},"user":"u1"}`
	resp := n.postJSON(ctxFor(t), "/v1/chat/completions", body, "")
	if got := readAll(t, resp); resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, got)
	}
	req := m.request()
	want := []*actors.Message{
		{Role: actors.Role_ROLE_SYSTEM, Content: "be brief"},
		{Role: actors.Role_ROLE_USER, Content: "weather in Taipei?"},
		{Role: actors.Role_ROLE_ASSISTANT, ToolCalls: `[{"id":"c1","type":"function","function":{"name":"w","arguments":"{}"}}]`},
		{Role: actors.Role_ROLE_TOOL, Content: "sunny", ToolCallId: "c1"},
	}
	if len(req.History) != len(want) {
		t.Fatalf("history %v", req.History)
	}
	for i, w := range want {
		g := req.History[i]
		if g.Role != w.Role || g.Content != w.Content || g.ToolCalls != w.ToolCalls || g.ToolCallId != w.ToolCallId {
			t.Errorf("message %d: %v, want %v", i, g, w)
		}
	}
	wantParams := map[string]string{"temperature": "0.25", "top_p": "0.9", "max_tokens": "64", "seed": "42",
		"stop": `["\n\n"]`, "tool_choice": `"auto"`, "response_format": `{"type":"json_object"}`, "user": "u1"}
	for k, v := range wantParams {
		if req.Params[k] != v {
			t.Errorf("param %s = %q, want %q", k, req.Params[k], v)
		}
	}
}

// Bad requests get OpenAI's error form with the status its SDKs expect.
func TestOpenAIErrors(t *testing.T) {
	m := &scripted{pieces: []string{"ok"}}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	tests := []struct {
		name, body string
		status     int
		param      string
		code       string
	}{
		{"not JSON", `{"model":`, 400, "", ""},
		{"no model", `{"messages":[{"role":"user","content":"x"}]}`, 400, "model", ""},
		{"unknown model", `{"model":"gpt-9","messages":[{"role":"user","content":"x"}]}`, 404, "model", "model_not_found"},
		{"no messages", `{"model":"llm","messages":[]}`, 400, "messages", ""},
		{"unknown role", `{"model":"llm","messages":[{"role":"robot","content":"x"}]}`, 400, "messages[0]", ""},
		{"image part", `{"model":"llm","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}`, 400, "messages[0]", ""},
		{"tool without id", `{"model":"llm","messages":[{"role":"tool","content":"x"}]}`, 400, "messages[0]", ""},
		{"bad temperature", `{"model":"llm","messages":[{"role":"user","content":"x"}],"temperature":"hot"}`, 400, "temperature", ""},
		{"bad max_tokens", `{"model":"llm","messages":[{"role":"user","content":"x"}],"max_tokens":1.5}`, 400, "max_tokens", ""},
		{"bad stop", `{"model":"llm","messages":[{"role":"user","content":"x"}],"stop":3}`, 400, "stop", ""},
		{"n of 2", `{"model":"llm","messages":[{"role":"user","content":"x"}],"n":2}`, 400, "n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := n.postJSON(ctxFor(t), "/v1/chat/completions", tt.body, "")
			var e struct {
				Error struct {
					Message string  `json:"message"`
					Type    string  `json:"type"`
					Param   *string `json:"param"`
					Code    *string `json:"code"`
				} `json:"error"`
			}
			body := readAll(t, resp)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("not an OpenAI error: %s", body)
			}
			if got := deref(e.Error.Param); got != tt.param {
				t.Errorf("param %q, want %q", got, tt.param)
			}
			if got := deref(e.Error.Code); got != tt.code {
				t.Errorf("code %q, want %q", got, tt.code)
			}
		})
	}
	// The SDK turns them into its error type.
	client := sdkClient(n)
	_, err := client.Chat.Completions.New(ctxFor(t), openai.ChatCompletionNewParams{Model: "gpt-9", Messages: userMessages("x")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("SDK error %v", err)
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// A model that fails before its first chunk answers with an error status; one
// that fails mid-stream ends the stream with an error event the SDK raises,
// showing the short reason, never the raw error.
func TestOpenAIModelFailure(t *testing.T) {
	t.Run("before output", func(t *testing.T) {
		m := &scripted{err: &actors.Error{Code: actors.Code_CODE_UNAVAILABLE, Reason: "the model server is unavailable", Err: errors.New("dial tcp 10.0.0.1: secret detail")}}
		n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
		client := sdkClient(n)
		_, err := client.Chat.Completions.New(ctxFor(t), openai.ChatCompletionNewParams{Model: "llm", Messages: userMessages("x")})
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 || !strings.Contains(apiErr.Message, "unavailable") || strings.Contains(apiErr.Message, "secret") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("mid-stream", func(t *testing.T) {
		m := &scripted{pieces: []string{"partial"}, err: errors.New("connection reset; api key sk-secret")}
		n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
		client := sdkClient(n)
		stream := client.Chat.Completions.NewStreaming(ctxFor(t), openai.ChatCompletionNewParams{Model: "llm", Messages: userMessages("x")})
		var text string
		for stream.Next() {
			if c := stream.Current(); len(c.Choices) > 0 {
				text += c.Choices[0].Delta.Content
			}
		}
		err := stream.Err()
		if text != "partial" || err == nil || !strings.Contains(err.Error(), "The model failed") || strings.Contains(err.Error(), "secret") {
			t.Fatalf("text %q, err %v", text, err)
		}
	})
}

// A model that reports its upstream overloaded, on a node with nowhere
// else to go, answers 429 with the upstream's Retry-After.
func TestOpenAIOverloadedRetryAfter(t *testing.T) {
	m := &scripted{err: &actors.Error{Code: actors.Code_CODE_OVERLOADED, Reason: "busy", RetryAfter: 2500 * time.Millisecond}}
	n := startNode(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)})
	resp := n.postJSON(ctxFor(t), "/v1/chat/completions", `{"model":"llm","messages":[{"role":"user","content":"x"}]}`, "")
	body := readAll(t, resp)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "3" || !strings.Contains(body, "rate_limit_exceeded") {
		t.Fatalf("status %d, Retry-After %q: %s", resp.StatusCode, resp.Header.Get("Retry-After"), body)
	}
}

// A client that hangs up cancels the chat: the model's context ends.
func TestOpenAIClientGoneCancelsChat(t *testing.T) {
	g := newGate()
	n := startNode(t, actors.PipelineSpec{Model: modelOf(g, 4, 4)})
	ctx, cancel := context.WithCancel(ctxFor(t))
	client := sdkClient(n)
	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "llm", Messages: userMessages("wait")})
	if !stream.Next() {
		t.Fatalf("no first chunk: %v", stream.Err())
	}
	<-g.started
	cancel()
	select {
	case err := <-g.ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("model ended with %v, want cancelled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the model was not cancelled")
	}
	stream.Close()
	waitFor(t, func() bool {
		return testutil.ToFloat64(counter(t, n.reg, "troupe_chats_total", "outcome", "cancelled")) == 1
	}, "the chat counted as cancelled")
}

// With API keys set, the OpenAI API wants one of them; the Agent's API,
// whose Agent sends none, stays open.
func TestOpenAIAPIKeys(t *testing.T) {
	m := &scripted{pieces: []string{"ok"}}
	n := startNodeWith(t, actors.PipelineSpec{Model: modelOf(m, 4, 4)}, func(c *gateway.Config) {
		c.APIKeys = []string{"key-one", "key-two"}
	})
	for _, tt := range []struct {
		auth   string
		status int
	}{{"", 401}, {"Bearer wrong", 401}, {"key-one", 401}, {"Bearer key-one", 200}, {"Bearer key-two", 200}} {
		resp := n.postJSON(ctxFor(t), "/v1/chat/completions", `{"model":"llm","messages":[{"role":"user","content":"x"}]}`, tt.auth)
		if body := readAll(t, resp); resp.StatusCode != tt.status {
			t.Errorf("Authorization %q: status %d, want %d: %s", tt.auth, resp.StatusCode, tt.status, body)
		}
	}
	good, bad := sdkClient(n, option.WithAPIKey("key-two")), sdkClient(n, option.WithAPIKey("nope"))
	if _, err := good.Models.List(ctxFor(t)); err != nil {
		t.Errorf("models with a key: %v", err)
	}
	_, err := bad.Models.List(ctxFor(t))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 401 {
		t.Errorf("models with a wrong key: %v", err)
	}
	if resp := n.post(ctxFor(t), "/v1/completion", form(userInput("x"))); readAll(t, resp) != "ok" {
		t.Error("the Agent API asked for a key")
	}
}

// GET /v1/models lists the layouts as models.
func TestOpenAIModels(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Name: "taide", Model: modelOf(&scripted{}, 4, 4)})
	client := sdkClient(n)
	page, err := client.Models.List(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Data) != 1 || page.Data[0].ID != "taide" || page.Data[0].Object != "model" {
		t.Fatalf("models %+v", page.Data)
	}
}

func (n *node) postJSON(ctx context.Context, path, body, auth string) *http.Response {
	n.t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.http.URL+path, strings.NewReader(body))
	if err != nil {
		n.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.t.Fatal(err)
	}
	return resp
}
