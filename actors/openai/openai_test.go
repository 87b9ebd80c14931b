package openai

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/internal/openaitest"
)

// waitBudget bounds every wait for something that should happen at once.
const waitBudget = 5 * time.Second

var dialects = []openaitest.Dialect{openaitest.OpenAI, openaitest.VLLM, openaitest.LlamaCpp, openaitest.Ollama}

// newModel builds a model for the fake with the given arguments on top of
// base_url and model.
func newModel(t testing.TB, baseURL string, args actors.Args) *Model {
	t.Helper()
	all := actors.Args{"base_url": baseURL, "model": "test-model"}
	maps.Copy(all, args)
	m, err := New(all)
	if err != nil {
		t.Fatalf("New(%v): %v", all, err)
	}
	t.Cleanup(func() { _ = m.(*Model).Close() })
	return m.(*Model)
}

func userChat(text string) *actors.ChatRequest {
	return &actors.ChatRequest{ChatId: "c1", History: []*actors.Message{{Role: actors.Role_ROLE_USER, Content: text}}}
}

// outcome is what a direct call of Generate produced.
type outcome struct {
	chunks  []string
	err     error
	elapsed time.Duration
}

func (o outcome) text() string { return strings.Join(o.chunks, "") }

func generate(ctx context.Context, m actors.Model, req *actors.ChatRequest) outcome {
	var o outcome
	start := time.Now()
	o.err = m.Generate(ctx, req, func(s string) error {
		o.chunks = append(o.chunks, s)
		return nil
	})
	o.elapsed = time.Since(start)
	return o
}

func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// typedError checks that err is an *actors.Error with the code and reason.
func typedError(t *testing.T, err error, code actors.Code, reason string) *actors.Error {
	t.Helper()
	var e *actors.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T), want an *actors.Error %v %q", err, err, code, reason)
	}
	if e.Code != code || e.Reason != reason {
		t.Fatalf("error code %v reason %q, want %v %q (raw: %v)", e.Code, e.Reason, code, reason, e.Err)
	}
	return e
}

func joined(chunks []string) string { return strings.Join(chunks, "") }

// The content arrives as the server streams it, one emit per delta, in
// every dialect, with events cut across reads and keep-alive comments
// between them.
func TestStreamsContent(t *testing.T) {
	chunks := []string{"Hello", " <wörld>", " \U0001F600", " & ", "done."}
	for _, d := range dialects {
		for _, variant := range []string{"plain", "split events and comments"} {
			t.Run(d.String()+"/"+variant, func(t *testing.T) {
				r := openaitest.Response{Dialect: d, Chunks: chunks}
				if variant != "plain" {
					r.SplitEvents, r.Comments = true, true
				}
				s := openaitest.New(t, r)
				m := newModel(t, s.URL, nil)
				got := generate(withTimeout(t, waitBudget), m, userChat("hi"))
				if got.err != nil {
					t.Fatal(got.err)
				}
				if !reflect.DeepEqual(got.chunks, chunks) {
					t.Errorf("chunks %q, want %q", got.chunks, chunks)
				}
				if req := s.WaitClosed(t, 0, waitBudget); req.HungUp {
					t.Error("the client hung up on a complete answer")
				}
			})
		}
	}
}

// recorder is a proxy in front of the fake that keeps the bytes of the
// answers, to compare what the kind forwards with what the server sent.
type recorder struct {
	URL string
	mu  sync.Mutex
	buf bytes.Buffer
}

func record(t *testing.T, upstream string) *recorder {
	t.Helper()
	target, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	proxy := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(&url.URL{Scheme: target.Scheme, Host: target.Host}) },
		Transport:     tr,
		FlushInterval: -1,
		ModifyResponse: func(res *http.Response) error {
			res.Body = struct {
				io.Reader
				io.Closer
			}{io.TeeReader(res.Body, rec), res.Body}
			return nil
		},
	}
	ts := httptest.NewServer(proxy)
	t.Cleanup(ts.Close)
	rec.URL = ts.URL + target.Path
	return rec
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.Write(p)
}

// toolCalls returns the raw tool_calls of every delta in the recorded
// streams, byte for byte.
func (r *recorder) toolCalls(t *testing.T) []string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for line := range strings.SplitSeq(r.buf.String(), "\n") {
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok || data == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					ToolCalls json.RawMessage `json:"tool_calls"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("recorded event %q: %v", data, err)
		}
		for _, c := range chunk.Choices {
			if len(c.Delta.ToolCalls) > 0 && string(c.Delta.ToolCalls) != "null" {
				out = append(out, string(c.Delta.ToolCalls))
			}
		}
	}
	return out
}

// answer is a chat's outcome as its reply saw it through a layout.
type answer struct {
	text      string
	toolCalls []string
	end       *actors.End
	failure   *actors.Failure
}

// viaLayout runs one chat through a real layout whose model is m, so that
// what the kind reports on actors.Output (tool calls, usage, finish) and
// its typed errors reach the reply as they would reach the gateway.
func viaLayout(t *testing.T, m actors.Model, req *actors.ChatRequest) answer {
	t.Helper()
	system := actors.NewActorSystem(actor.Configure())
	t.Cleanup(system.Shutdown)
	l, err := actors.StartPipeline(system, actors.PipelineSpec{
		Name:  "test",
		Model: actors.ModelSpec{Path: "model/openai", New: func() (actors.Model, error) { return m, nil }, Capacity: 4, Queue: 4},
	}, actors.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitBudget)
		defer cancel()
		_ = l.Stop(ctx)
	})
	reply := actors.NewReply(system, req.ChatId)
	defer reply.Close()
	req.ReplyTo = reply.PID()
	system.Root.Send(l.Root, req)
	ctx := withTimeout(t, waitBudget)
	var a answer
	for {
		batch, err := reply.Receive(ctx)
		if err != nil {
			t.Fatalf("no answer: %v (so far %q)", err, a.text)
		}
		for _, msg := range batch {
			switch msg := msg.(type) {
			case *actors.Chunk:
				if msg.ToolCalls != "" {
					a.toolCalls = append(a.toolCalls, msg.ToolCalls)
				} else {
					a.text += msg.Text
				}
			case *actors.End:
				a.end = msg
				return a
			case *actors.Failure:
				a.failure = msg
				return a
			}
		}
	}
}

// Tool-call deltas reach the chat exactly as the server sent them, in
// order with the text; the usage of the last chunk (which has no choices)
// and the finish reason arrive with the End.
func TestToolCallsUsageAndFinishThroughLayout(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := openaitest.New(t, openaitest.Response{
				Dialect: d, Chunks: []string{"Let me ", "look."},
				ToolCalls: []openaitest.ToolCall{
					{Name: "get_weather", Arguments: []string{`{"city":`, `"Paris"}`}},
					{Name: "get_time", Arguments: []string{`{"tz":"CET"}`}},
				},
				Usage: &openaitest.Usage{PromptTokens: 21, CompletionTokens: 9},
			})
			rec := record(t, s.URL)
			got := viaLayout(t, newModel(t, rec.URL, nil), userChat("weather?"))
			if got.failure != nil {
				t.Fatalf("failed: %v", got.failure)
			}
			if got.text != "Let me look." {
				t.Errorf("text %q", got.text)
			}
			wire := rec.toolCalls(t)
			if len(wire) == 0 || !reflect.DeepEqual(got.toolCalls, wire) {
				t.Errorf("tool calls\n%q\nwant as sent\n%q", got.toolCalls, wire)
			}
			if got.end.GetFinishReason() != "tool_calls" || got.end.GetPromptTokens() != 21 || got.end.GetCompletionTokens() != 9 {
				t.Errorf("end %+v, want finish tool_calls and usage 21/9", got.end)
			}
		})
	}
}

// A failure reaches the chat as its code, reason and Retry-After.
func TestTypedFailureThroughLayout(t *testing.T) {
	s := openaitest.New(t, openaitest.Response{Status: 429, Header: map[string]string{"Retry-After": "30"}})
	got := viaLayout(t, newModel(t, s.URL, nil), userChat("hi"))
	if got.failure == nil || got.failure.Code != actors.Code_CODE_OVERLOADED || got.failure.Reason != reasonBusy || got.failure.RetryAfterMs != 30000 {
		t.Fatalf("failure %+v, want overloaded %q with retry after 30s", got.failure, reasonBusy)
	}
}

// The request carries the history as OpenAI messages, the layout's
// arguments overridden by the chat's parameters, extra fields, and the
// chat's tools, tool_choice and response_format as they came.
func TestRequestBody(t *testing.T) {
	toolCalls := `[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"<b>\"}"}}]`
	tools := `[{"type":"function","function":{"name":"lookup","parameters":{"type":"object","properties":{"q":{"type":"string"}}}}}]`
	history := []*actors.Message{
		{Role: actors.Role_ROLE_SYSTEM, Content: "Be brief."},
		{Role: actors.Role_ROLE_USER, Content: "Find <b>.", Name: "ann"},
		{Role: actors.Role_ROLE_ASSISTANT, ToolCalls: toolCalls},
		{Role: actors.Role_ROLE_TOOL, Content: "found", ToolCallId: "call_1"},
		{Role: actors.Role_ROLE_ASSISTANT, Content: "It is found."},
		{Role: actors.Role_ROLE_USER, Content: "Thanks"},
	}
	wantMessages := `[
		{"role":"system","content":"Be brief."},
		{"role":"user","content":"Find <b>.","name":"ann"},
		{"role":"assistant","content":null,"tool_calls":` + toolCalls + `},
		{"role":"tool","content":"found","tool_call_id":"call_1"},
		{"role":"assistant","content":"It is found."},
		{"role":"user","content":"Thanks"}]`
	args := actors.Args{
		"temperature": 0.9, "top_p": 0.5, "max_tokens": 16, "seed": 1, "stop": "###",
		"extra": map[string]any{
			"top_k": 40, "chat_template_kwargs": map[string]any{"enable_thinking": false},
			"a.b*": 1, "tools": []any{"overridden by the chat"},
		},
	}
	tests := []struct {
		name   string
		params map[string]string
		want   map[string]string // body field -> JSON; "" means absent
	}{
		{"arguments only", nil, map[string]string{
			"temperature": "0.9", "top_p": "0.5", "max_tokens": "16", "seed": "1", "stop": `"###"`,
			"top_k": "40", "chat_template_kwargs": `{"enable_thinking":false}`, "a.b*": "1",
			"tools": `["overridden by the chat"]`, "tool_choice": "", "response_format": "",
		}},
		{"parameters override", map[string]string{
			"temperature": "0.25", "top_p": "1", "max_tokens": "64", "seed": "7", "stop": `["###","END"]`,
			"tools": tools, "tool_choice": "auto", "response_format": `{"type":"json_object"}`,
			"frequency_penalty": "0.5", "template": "ignored: not a parameter of this kind",
		}, map[string]string{
			"temperature": "0.25", "top_p": "1", "max_tokens": "64", "seed": "7", "stop": `["###","END"]`,
			"tools": tools, "tool_choice": `"auto"`, "response_format": `{"type":"json_object"}`,
			"frequency_penalty": "0.5", "template": "", "top_k": "40",
		}},
		{"stop as one sequence that looks like a list", map[string]string{"stop": "[INST]"}, map[string]string{"stop": `"[INST]"`}},
		{"empty stop clears the layout's", map[string]string{"stop": ""}, map[string]string{"stop": ""}},
		{"num_predict", map[string]string{"num_predict": "128"}, map[string]string{"max_tokens": "128"}},
		{"num_predict -1 is no limit", map[string]string{"num_predict": "-1"}, map[string]string{"max_tokens": ""}},
		{"max_tokens beats its aliases", map[string]string{"num_predict": "5", "max_new_tokens": "6", "max_tokens": "7"}, map[string]string{"max_tokens": "7"}},
		{"tool_choice as JSON", map[string]string{"tool_choice": `{"type":"function","function":{"name":"lookup"}}`},
			map[string]string{"tool_choice": `{"type":"function","function":{"name":"lookup"}}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openaitest.New(t)
			m := newModel(t, s.URL, args)
			req := &actors.ChatRequest{ChatId: "c1", History: history, Params: tt.params}
			if got := generate(withTimeout(t, waitBudget), m, req); got.err != nil {
				t.Fatal(got.err)
			}
			body := s.WaitClosed(t, 0, waitBudget).JSON
			jsonEqual(t, "messages", body["messages"], wantMessages)
			jsonEqual(t, "model", body["model"], `"test-model"`)
			jsonEqual(t, "stream", body["stream"], `true`)
			jsonEqual(t, "stream_options", body["stream_options"], `{"include_usage":true}`)
			for field, want := range tt.want {
				v, ok := body[field]
				if want == "" {
					if ok {
						t.Errorf("%s sent as %v, want it absent", field, v)
					}
					continue
				}
				jsonEqual(t, field, v, want)
			}
		})
	}
}

func jsonEqual(t *testing.T, what string, got any, want string) {
	t.Helper()
	var w any
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("%s: bad want %s: %v", what, want, err)
	}
	if !reflect.DeepEqual(got, w) {
		g, _ := json.Marshal(got)
		t.Errorf("%s = %s, want %s", what, g, want)
	}
}

// A parameter or a history the kind cannot send fails the chat with a
// reason for the user, and nothing goes upstream.
func TestBadChat(t *testing.T) {
	tests := []struct {
		name   string
		params map[string]string
		change func(*actors.ChatRequest)
		reason string
	}{
		{"temperature", map[string]string{"temperature": "hot"}, nil, "parameter temperature: want a number"},
		{"temperature NaN", map[string]string{"temperature": "NaN"}, nil, "parameter temperature: want a number"},
		{"top_p", map[string]string{"top_p": ""}, nil, "parameter top_p: want a number"},
		{"max_tokens", map[string]string{"max_tokens": "ten"}, nil, "parameter max_tokens: want a whole number"},
		{"max_tokens 0", map[string]string{"max_tokens": "0"}, nil, "parameter max_tokens: want a whole number of 1 or more"},
		{"seed", map[string]string{"seed": "1.5"}, nil, "parameter seed: want a whole number"},
		{"tools", map[string]string{"tools": `[{"type":`}, nil, "parameter tools: want JSON"},
		{"response_format", map[string]string{"response_format": "json"}, nil, "parameter response_format: want JSON"},
		{"no history", nil, func(r *actors.ChatRequest) { r.History = nil }, "the chat has no messages"},
		{"tool_calls not a list", nil, func(r *actors.ChatRequest) {
			r.History = append(r.History, &actors.Message{Role: actors.Role_ROLE_ASSISTANT, ToolCalls: `{"id":1}`})
		}, "message 2: tool_calls is not a JSON list"},
		{"unknown role", nil, func(r *actors.ChatRequest) { r.History[0].Role = 42 }, "message 1 has an unknown role"},
	}
	s := openaitest.New(t)
	m := newModel(t, s.URL, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := userChat("hi")
			req.Params = tt.params
			if tt.change != nil {
				tt.change(req)
			}
			got := generate(withTimeout(t, waitBudget), m, req)
			typedError(t, got.err, actors.Code_CODE_INVALID_ARGUMENT, tt.reason)
		})
	}
	if n := len(s.Requests()); n != 0 {
		t.Fatalf("%d requests went upstream", n)
	}
}

const testKey = "sk-troupe-test-0123456789abcdef"

// The key goes as a Bearer token and nowhere else: not in the reason or
// the raw error of any failure (even when the server echoes it), not in
// the model's formatted or logged forms.
func TestAPIKey(t *testing.T) {
	t.Setenv("TROUPE_TEST_OPENAI_KEY", "  "+testKey+"\n")
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("\n"+testKey+"  \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	echo := &openaitest.APIError{Message: "Incorrect API key provided: " + testKey}
	s := openaitest.New(t,
		openaitest.Response{},
		openaitest.Response{},
		openaitest.Response{Status: 401, Error: echo},
		openaitest.Response{Status: 400, Error: echo},
		openaitest.Response{Status: 500, Error: echo},
		openaitest.Response{Chunks: []string{"a"}, StreamError: echo, ErrorAfter: 1},
		openaitest.Response{Dialect: openaitest.VLLM, Chunks: []string{"a"}, StreamError: echo, ErrorAfter: 1},
	)
	fromEnv := newModel(t, s.URL, actors.Args{"api_key_env": "TROUPE_TEST_OPENAI_KEY", "retries": 0})
	fromFile := newModel(t, s.URL, actors.Args{"api_key_file": keyFile, "retries": 0})
	for _, m := range []*Model{fromEnv, fromFile} {
		if got := generate(withTimeout(t, waitBudget), m, userChat("hi")); got.err != nil {
			t.Fatal(got.err)
		}
	}
	for i, r := range s.WaitRequests(t, 2, waitBudget) {
		if got := r.Header.Get("Authorization"); got != "Bearer "+testKey {
			t.Errorf("request %d: Authorization %q, want the Bearer key", i, got)
		}
	}
	for i := range 5 {
		got := generate(withTimeout(t, waitBudget), fromEnv, userChat("hi"))
		var e *actors.Error
		if !errors.As(got.err, &e) {
			t.Fatalf("failure %d: %v, want an *actors.Error", i, got.err)
		}
		for _, text := range []string{got.err.Error(), fmt.Sprintf("%+v", got.err), e.Reason} {
			if strings.Contains(text, testKey) {
				t.Errorf("failure %d shows the key: %s", i, text)
			}
		}
		if !strings.Contains(got.err.Error(), "[redacted]") {
			t.Errorf("failure %d: the echoed key is not marked as cut out: %v", i, got.err)
		}
	}
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("model", "m", fromEnv)
	for _, text := range []string{
		fmt.Sprint(fromEnv), fmt.Sprintf("%+v", fromEnv), fmt.Sprintf("%#v", fromEnv),
		fmt.Sprintf("%+v", *fromEnv), fmt.Sprintf("%#v", *fromEnv), logged.String(),
	} {
		if strings.Contains(text, testKey) {
			t.Errorf("a formatted model shows the key: %s", text)
		}
	}
}

// Without a key no Authorization header goes, even when the process has
// OPENAI_API_KEY for something else (the SDK's client would send it to
// whatever server a layout names), and nothing else of the environment.
func TestNoKeyNoAuthorization(t *testing.T) {
	t.Setenv("OPENAI_API_KEY", testKey)
	t.Setenv("OPENAI_ORG_ID", "org-test")
	t.Setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
	s := openaitest.New(t)
	if got := generate(withTimeout(t, waitBudget), newModel(t, s.URL, nil), userChat("hi")); got.err != nil {
		t.Fatal(got.err)
	}
	r := s.WaitClosed(t, 0, waitBudget)
	for k, v := range r.Header {
		if strings.EqualFold(k, "Authorization") || strings.Contains(strings.Join(v, ","), testKey) || strings.Contains(strings.Join(v, ","), "org-test") {
			t.Errorf("header %s: %v sent without a configured key", k, v)
		}
	}
}

// Failures before the first token are retried when they may pass (a
// refused connection, 429, 5xx), as Retry-After asks, at most retries
// times and never past the chat's deadline; others fail at once with a
// code the gateway acts on.
func TestRetriesAndErrorMapping(t *testing.T) {
	retryAfter := func(v string) map[string]string { return map[string]string{"Retry-After": v} }
	soon := func() string { return time.Now().Add(2 * time.Second).UTC().Format(http.TimeFormat) }
	mid := &openaitest.APIError{Message: "the engine died"}
	tests := []struct {
		name     string
		script   func() []openaitest.Response
		args     actors.Args
		deadline time.Duration
		// Either the text of a success, or a failure's code and reason.
		text       string
		code       actors.Code
		reason     string
		retryAfter time.Duration
		requests   int
		minTime    time.Duration
		maxTime    time.Duration
	}{
		{name: "429 with Retry-After seconds, then success",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 429, Header: retryAfter("1")}} },
			text:   "Hello from the fake upstream.", requests: 2, minTime: time.Second},
		{name: "429 with Retry-After as an HTTP date, then success",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 429, Header: retryAfter(soon())}} },
			text:   "Hello from the fake upstream.", requests: 2, minTime: 900 * time.Millisecond},
		{name: "500 twice, then success",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 500}, {Status: 502}} },
			text:   "Hello from the fake upstream.", requests: 3, minTime: 125 * time.Millisecond},
		{name: "error event before the first token (vLLM, code 500), then success",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Dialect: openaitest.VLLM, Chunks: []string{"x"}, StreamError: mid}}
			},
			text: "Hello from the fake upstream.", requests: 2},
		{name: "stream cut before the first token (Ollama), then success",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Dialect: openaitest.Ollama, Chunks: []string{"x"}, StreamError: mid}}
			},
			text: "Hello from the fake upstream.", requests: 2},
		{name: "ends after a finish reason without [DONE]",
			script: func() []openaitest.Response { return []openaitest.Response{{Chunks: []string{"ok"}, NoDone: true}} },
			text:   "ok", requests: 1},
		{name: "429 until retries run out",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Status: 429, Header: retryAfter("1")}, {Status: 429, Header: retryAfter("1")}}
			},
			args: actors.Args{"retries": 1},
			code: actors.Code_CODE_OVERLOADED, reason: reasonBusy, retryAfter: time.Second, requests: 2, minTime: time.Second},
		{name: "429 asking for a longer pause than a chat waits",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 429, Header: retryAfter("60")}} },
			code:   actors.Code_CODE_OVERLOADED, reason: reasonBusy, retryAfter: time.Minute, requests: 1, maxTime: time.Second},
		{name: "503 until retries run out",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Status: 503}, {Status: 503}, {Status: 503}}
			},
			code: actors.Code_CODE_UNAVAILABLE, reason: reasonFailed, requests: 3},
		{name: "retries 0",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 500}} },
			args:   actors.Args{"retries": 0},
			code:   actors.Code_CODE_UNAVAILABLE, reason: reasonFailed, requests: 1},
		{name: "no wait beyond the chat's deadline",
			script:   func() []openaitest.Response { return []openaitest.Response{{Status: 503, Header: retryAfter("5")}} },
			deadline: 500 * time.Millisecond,
			code:     actors.Code_CODE_UNAVAILABLE, reason: reasonFailed, retryAfter: 5 * time.Second, requests: 1, maxTime: 400 * time.Millisecond},
		{name: "400",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 400}} },
			code:   actors.Code_CODE_INVALID_ARGUMENT, reason: reasonRejected, requests: 1},
		{name: "400 context length (vLLM)",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Dialect: openaitest.VLLM, Status: 400, Error: &openaitest.APIError{
					Message: "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."}}}
			},
			code: actors.Code_CODE_INVALID_ARGUMENT, reason: reasonTooLong, requests: 1},
		{name: "422",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 422}} },
			code:   actors.Code_CODE_INVALID_ARGUMENT, reason: reasonRejected, requests: 1},
		{name: "401",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 401}} },
			code:   actors.Code_CODE_UNAVAILABLE, reason: reasonCredentials, requests: 1},
		{name: "403 (llama.cpp)",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Dialect: openaitest.LlamaCpp, Status: 403}}
			},
			code: actors.Code_CODE_UNAVAILABLE, reason: reasonCredentials, requests: 1},
		{name: "404",
			script: func() []openaitest.Response { return []openaitest.Response{{Status: 404}} },
			code:   actors.Code_CODE_UNAVAILABLE, reason: reasonNoModel, requests: 1},
	}
	for _, d := range dialects {
		reason := reasonFailedMid
		if d == openaitest.Ollama {
			reason = reasonEndedEarly // Ollama has no error event
		}
		tests = append(tests, struct {
			name       string
			script     func() []openaitest.Response
			args       actors.Args
			deadline   time.Duration
			text       string
			code       actors.Code
			reason     string
			retryAfter time.Duration
			requests   int
			minTime    time.Duration
			maxTime    time.Duration
		}{
			name: "error mid-stream after the first token (" + d.String() + ")",
			script: func() []openaitest.Response {
				return []openaitest.Response{{Dialect: d, Chunks: []string{"a", "b", "c"}, StreamError: mid, ErrorAfter: 2}}
			},
			text: "ab", code: actors.Code_CODE_UNAVAILABLE, reason: reason, requests: 1,
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openaitest.New(t, tt.script()...)
			m := newModel(t, s.URL, tt.args)
			ctx := withTimeout(t, 10*time.Second)
			if tt.deadline > 0 {
				ctx = withTimeout(t, tt.deadline)
			}
			got := generate(ctx, m, userChat("hi"))
			if tt.reason == "" {
				if got.err != nil {
					t.Fatalf("failed: %v", got.err)
				}
			} else {
				e := typedError(t, got.err, tt.code, tt.reason)
				if e.RetryAfter != tt.retryAfter {
					t.Errorf("RetryAfter %v, want %v", e.RetryAfter, tt.retryAfter)
				}
			}
			if got.text() != tt.text {
				t.Errorf("text %q, want %q", got.text(), tt.text)
			}
			// Every request the fake saw has ended by the time Generate
			// returns: wait for the last to be sure no other follows.
			s.WaitClosed(t, tt.requests-1, waitBudget)
			if n := len(s.Requests()); n != tt.requests {
				t.Errorf("%d requests, want %d", n, tt.requests)
			}
			if got.elapsed < tt.minTime || (tt.maxTime > 0 && got.elapsed > tt.maxTime) {
				t.Errorf("took %v, want between %v and %v", got.elapsed, tt.minTime, tt.maxTime)
			}
		})
	}
}

// Error answers of every shape keep their status, even those that are not
// OpenAI's JSON (TGI's {"error":"text"}, an HTML page from a proxy).
func TestErrorBodiesOfEveryShape(t *testing.T) {
	tests := []struct {
		name, ctype, body string
		status            int
		code              actors.Code
		reason            string
	}{
		{"TGI validation", "application/json", `{"error":"Input validation error: inputs tokens + max_new_tokens must be <= 2048","error_type":"validation"}`, 422, actors.Code_CODE_INVALID_ARGUMENT, reasonRejected},
		{"TGI overloaded", "application/json", `{"error":"Model is overloaded","error_type":"overloaded"}`, 429, actors.Code_CODE_OVERLOADED, reasonBusy},
		{"HTML from a proxy", "text/html", "<html><body>502 Bad Gateway</body></html>", 502, actors.Code_CODE_UNAVAILABLE, reasonFailed},
		{"old vLLM", "application/json", `{"object":"error","message":"maximum context length is 2048 tokens","type":"BadRequestError","param":null,"code":400}`, 400, actors.Code_CODE_INVALID_ARGUMENT, reasonTooLong},
		{"FastAPI", "application/json", `{"detail":"Not Found"}`, 404, actors.Code_CODE_UNAVAILABLE, reasonNoModel},
		{"empty", "", "", 500, actors.Code_CODE_UNAVAILABLE, reasonFailed},
		{"other 4xx", "application/json", `{}`, 405, actors.Code_CODE_UNAVAILABLE, "the model server answered 405"},
		{"redirect", "text/html", `<a href="https://elsewhere/v1/chat/completions">Moved</a>`, 301, actors.Code_CODE_UNAVAILABLE, "the model server answered 301"},
		{"200 without a stream", "application/json", `{"id":"x","choices":[]}`, 200, actors.Code_CODE_UNAVAILABLE, reasonNotStream},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				if tt.status == 301 {
					w.Header().Set("Location", "https://elsewhere/v1/chat/completions")
				}
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			t.Cleanup(ts.Close)
			got := generate(withTimeout(t, waitBudget), newModel(t, ts.URL+"/v1", actors.Args{"retries": 0}), userChat("hi"))
			e := typedError(t, got.err, tt.code, tt.reason)
			if tt.status >= 400 && tt.body != "" && !strings.Contains(e.Err.Error(), tt.body) {
				t.Errorf("raw error %q does not keep the body for the log", e.Err)
			}
		})
	}
}

// A server that cannot be reached is unavailable, after the retries.
func TestUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	m := newModel(t, "http://"+addr+"/v1", actors.Args{"retries": 1})
	got := generate(withTimeout(t, waitBudget), m, userChat("hi"))
	typedError(t, got.err, actors.Code_CODE_UNAVAILABLE, reasonUnreachable)
	if got.elapsed < backoffBase/2 {
		t.Errorf("took %v: no pause before the retry", got.elapsed)
	}
}

// A server that says nothing is given up on after first_token_timeout, one
// that stops mid-answer after idle_timeout, and in both cases the request
// is closed.
func TestTimeouts(t *testing.T) {
	tests := []struct {
		name   string
		resp   openaitest.Response
		args   actors.Args
		text   string
		reason string // "" for success
	}{
		{"no headers", openaitest.Response{Hang: true, HangAfter: openaitest.BeforeHeaders},
			actors.Args{"first_token_timeout": "300ms"}, "", "the model server sent nothing for 300ms"},
		{"role chunk only", openaitest.Response{Chunks: []string{"a"}, Hang: true, HangAfter: 0},
			actors.Args{"first_token_timeout": "300ms", "idle_timeout": "50ms"}, "", "the model server sent nothing for 300ms"},
		{"silent mid-answer", openaitest.Response{Chunks: []string{"a", "b"}, Hang: true, HangAfter: 1},
			actors.Args{"first_token_timeout": "5s", "idle_timeout": "300ms"}, "a", "the model server went silent for 300ms"},
		{"slow first token within bounds, idle not yet armed", openaitest.Response{Chunks: []string{"a", "b"}, FirstDelay: 400 * time.Millisecond},
			actors.Args{"first_token_timeout": "3s", "idle_timeout": "100ms"}, "ab", ""},
		{"slow events within idle_timeout", openaitest.Response{Chunks: []string{"a", "b", "c"}, Delay: 150 * time.Millisecond},
			actors.Args{"first_token_timeout": "3s", "idle_timeout": "1s"}, "abc", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openaitest.New(t, tt.resp)
			got := generate(withTimeout(t, 10*time.Second), newModel(t, s.URL, tt.args), userChat("hi"))
			if got.text() != tt.text {
				t.Errorf("text %q, want %q", got.text(), tt.text)
			}
			if tt.reason == "" {
				if got.err != nil {
					t.Fatal(got.err)
				}
				return
			}
			typedError(t, got.err, actors.Code_CODE_DEADLINE_EXCEEDED, tt.reason)
			r := s.WaitClosed(t, 0, waitBudget)
			if !r.HungUp {
				t.Error("the request was not closed")
			}
			if n := len(s.Requests()); n != 1 {
				t.Errorf("%d requests: a timeout is not retried", n)
			}
			t.Logf("gave up after %v", got.elapsed)
		})
	}
}

// A cancelled chat closes its upstream request at once, whatever it was
// waiting for, so the server stops generating; Generate returns at once.
func TestCancelClosesUpstream(t *testing.T) {
	many := make([]string, 200)
	for i := range many {
		many[i] = fmt.Sprintf("tok%d ", i)
	}
	tests := []struct {
		name     string
		resp     openaitest.Response
		args     actors.Args
		afterTok bool // cancel after the first token, or once the request arrived
	}{
		{"while streaming", openaitest.Response{Chunks: many, Delay: 20 * time.Millisecond}, nil, true},
		{"while the server holds the headers", openaitest.Response{Hang: true, HangAfter: openaitest.BeforeHeaders}, nil, false},
		{"while waiting for the first token", openaitest.Response{Chunks: many, FirstDelay: time.Minute}, nil, false},
		{"during a retry's pause", openaitest.Response{Status: 429, Header: map[string]string{"Retry-After": "8"}}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := openaitest.New(t, tt.resp)
			m := newModel(t, s.URL, tt.args)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			first := make(chan struct{})
			var once sync.Once
			done := make(chan error, 1)
			go func() {
				done <- m.Generate(ctx, userChat("hi"), func(string) error {
					once.Do(func() { close(first) })
					return nil
				})
			}()
			if tt.afterTok {
				select {
				case <-first:
				case <-time.After(waitBudget):
					t.Fatal("no first token")
				}
			} else {
				s.WaitRequests(t, 1, waitBudget)
				if tt.resp.Status != 0 {
					s.WaitClosed(t, 0, waitBudget) // the 429 is answered: now in the pause
				}
			}
			cancelled := time.Now()
			cancel()
			var err error
			select {
			case err = <-done:
			case <-time.After(waitBudget):
				t.Fatal("Generate did not return after the cancel")
			}
			returned := time.Since(cancelled)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Generate returned %v, want context.Canceled", err)
			}
			r := s.WaitClosed(t, 0, waitBudget)
			if tt.resp.Status == 0 {
				if !r.HungUp {
					t.Error("the server did not see the client go away")
				}
				closed := r.Closed.Sub(cancelled)
				t.Logf("cancel -> Generate returned %v, -> upstream saw the hang-up %v", returned, closed)
				if closed > time.Second {
					t.Errorf("the upstream request was closed %v after the cancel", closed)
				}
			} else {
				t.Logf("cancel -> Generate returned %v", returned)
			}
			if returned > time.Second {
				t.Errorf("Generate returned %v after the cancel", returned)
			}
			if n := len(s.Requests()); n != 1 {
				t.Errorf("%d requests after the cancel", n)
			}
		})
	}
}

// An emit that fails (the chat was cancelled) ends Generate and closes the
// request at once.
func TestEmitErrorStops(t *testing.T) {
	s := openaitest.New(t, openaitest.Response{Chunks: []string{"a", "b", "c"}, Hang: true, HangAfter: 1})
	m := newModel(t, s.URL, nil)
	stop := errors.New("chat cancelled")
	err := m.Generate(withTimeout(t, waitBudget), userChat("hi"), func(string) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("Generate returned %v, want the emit's error", err)
	}
	if r := s.WaitClosed(t, 0, waitBudget); !r.HungUp {
		t.Error("the server did not see the client go away")
	}
}

// Chats one after the other share one connection (the kind reads the end
// of the body that follows [DONE], without which Go's transport would drop
// the connection), and Close closes it.
func TestConnectionReuseAndClose(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := openaitest.New(t)
			s.SetDialect(d)
			m := newModel(t, s.URL, nil)
			var dials atomic.Int32
			dial := m.transport.DialContext
			m.transport.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				return dial(ctx, network, addr)
			}
			for range 3 {
				if got := generate(withTimeout(t, waitBudget), m, userChat("hi")); got.err != nil {
					t.Fatal(got.err)
				}
			}
			if n := dials.Load(); n != 1 {
				t.Errorf("%d connections for 3 chats in a row, want 1", n)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			s.Wait(t, waitBudget, func(rs []openaitest.Request) bool {
				return len(rs) == 3 && !rs[2].ConnClosed.IsZero()
			})
		})
	}
}

// Chats run at once on one instance, each on its own connection.
func TestConcurrentChats(t *testing.T) {
	const n = 8
	s := openaitest.New(t)
	for range n {
		s.Enqueue(openaitest.Response{Chunks: []string{"a", "b", "c"}, Delay: 20 * time.Millisecond})
	}
	m := newModel(t, s.URL, actors.Args{"concurrency": n})
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			got := generate(withTimeout(t, waitBudget), m, userChat("hi"))
			if got.err == nil && got.text() != "abc" {
				got.err = fmt.Errorf("text %q", got.text())
			}
			errs <- got.err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// Arguments are checked at New, each mistake named.
func TestArguments(t *testing.T) {
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("TROUPE_TEST_EMPTY_KEY", "")
	base := actors.Args{"base_url": "http://127.0.0.1:8000/v1", "model": "m"}
	with := func(kv ...any) actors.Args {
		a := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(a, kv[i].(string))
			} else {
				a[kv[i].(string)] = kv[i+1]
			}
		}
		return a
	}
	bad := []struct {
		name string
		args actors.Args
		want string
	}{
		{"missing base_url", with("base_url", nil), "base_url is required"},
		{"base_url not http", with("base_url", "ftp://host/v1"), `base_url: want an http or https URL such as http://127.0.0.1:8000/v1, got "ftp://host/v1"`},
		{"base_url without host", with("base_url", "http:///v1"), "base_url: want an http or https URL"},
		{"base_url with credentials", with("base_url", "http://u:p@host/v1"), "base_url: must not hold credentials"},
		{"base_url with a query", with("base_url", "http://host/v1?key=x"), "base_url: must not have a query"},
		{"missing model", with("model", nil), "model is required"},
		{"both key options", with("api_key_env", "X", "api_key_file", keyFile), "api_key_env and api_key_file: give one, not both"},
		{"missing key env", with("api_key_env", "TROUPE_TEST_NO_SUCH_KEY"), "api_key_env: environment variable TROUPE_TEST_NO_SUCH_KEY is not set"},
		{"empty key env", with("api_key_env", "TROUPE_TEST_EMPTY_KEY"), "api_key_env: environment variable TROUPE_TEST_EMPTY_KEY is empty"},
		{"missing key file", with("api_key_file", "/nonexistent/key"), "api_key_file: cannot read /nonexistent/key: no such file or directory"},
		{"empty key file", with("api_key_file", keyFile), "api_key_file: " + keyFile + " is empty"},
		{"unknown argument", with("temprature", 0.5), `unknown field "temprature"`},
		{"bad duration", with("connect_timeout", "5"), `connect_timeout: want a positive Go duration such as "5s", got "5"`},
		{"zero connect_timeout", with("connect_timeout", "0"), "connect_timeout: want a positive Go duration"},
		{"negative idle_timeout", with("idle_timeout", "-1s"), `idle_timeout: want a Go duration such as "30s", or "0" for none, got "-1s"`},
		{"duration not a string", with("first_token_timeout", 30), "first_token_timeout: want a string, got a number"},
		{"temperature not a number", with("temperature", "hot"), "temperature: want a number, got a string"},
		{"negative temperature", with("temperature", -1), "temperature must be 0 or more, got -1"},
		{"top_p above 1", with("top_p", 2), "top_p must be more than 0 and at most 1, got 2"},
		{"max_tokens 0", with("max_tokens", 0), "max_tokens must be 1 or more, got 0"},
		{"max_tokens not whole", with("max_tokens", 1.5), "max_tokens: want a whole number, got a number 1.5"},
		{"stop a number", with("stop", 5), "stop: want a string or a list of strings"},
		{"extra owns model", with("extra", map[string]any{"model": "x"}), `extra: "model" is the model argument`},
		{"extra owns temperature", with("extra", map[string]any{"temperature": 1}), `extra: "temperature" has its own argument`},
		{"extra not a map", with("extra", "x"), "extra: want a map, got a string"},
		{"negative concurrency", with("concurrency", -1), "concurrency must be 1 or more, got -1"},
		{"too many retries", with("retries", 11), "retries must be between 0 and 10, got 11"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(tt.args)
			if err == nil {
				_ = m.(*Model).Close()
				t.Fatalf("New accepted %v", tt.args)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q, want it to say %q", err, tt.want)
			}
		})
	}

	t.Run("defaults", func(t *testing.T) {
		m := newModel(t, "https://api.example.com/v1", nil)
		if m.Capacity() != DefaultConcurrency || m.retries != DefaultRetries || m.firstTokenTimeout != DefaultFirstTokenTimeout ||
			m.idleTimeout != DefaultIdleTimeout || *m.key != "" {
			t.Errorf("defaults: capacity %d retries %d first %v idle %v", m.Capacity(), m.retries, m.firstTokenTimeout, m.idleTimeout)
		}
		if m.transport.MaxIdleConnsPerHost < m.Capacity() {
			t.Errorf("MaxIdleConnsPerHost %d below the capacity", m.transport.MaxIdleConnsPerHost)
		}
	})
	t.Run("set", func(t *testing.T) {
		m := newModel(t, "http://h/v1", actors.Args{
			"concurrency": 100, "retries": 0, "first_token_timeout": "0", "idle_timeout": "2m", "connect_timeout": "1s",
			"stop": []any{"a", "b"}, "extra": map[string]any{"top_k": 5},
		})
		if m.Capacity() != 100 || m.retries != 0 || m.firstTokenTimeout != 0 || m.idleTimeout != 2*time.Minute ||
			m.transport.MaxIdleConnsPerHost < 100 || len(m.defaults.stop) != 2 {
			t.Errorf("capacity %d retries %d first %v idle %v", m.Capacity(), m.retries, m.firstTokenTimeout, m.idleTimeout)
		}
	})
	t.Run("registered", func(t *testing.T) {
		k, err := actors.DefaultRegistry.Model("openai")
		if err != nil || k.Capacity != DefaultConcurrency {
			t.Fatalf("kind %+v, %v", k, err)
		}
	})
}

func TestRetryAfterHeader(t *testing.T) {
	tests := []struct {
		header map[string]string
		min    time.Duration
		max    time.Duration
	}{
		{nil, 0, 0},
		{map[string]string{"Retry-After": "3"}, 3 * time.Second, 3 * time.Second},
		{map[string]string{"Retry-After": "0.5"}, 500 * time.Millisecond, 500 * time.Millisecond},
		{map[string]string{"Retry-After": "-1"}, 0, 0},
		{map[string]string{"Retry-After": "soon"}, 0, 0},
		{map[string]string{"Retry-After": time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)}, 88 * time.Second, 90 * time.Second},
		{map[string]string{"Retry-After": time.Now().Add(-time.Hour).UTC().Format(http.TimeFormat)}, 0, 0},
		{map[string]string{"Retry-After-Ms": "250", "Retry-After": "9"}, 250 * time.Millisecond, 250 * time.Millisecond},
	}
	for _, tt := range tests {
		h := http.Header{}
		for k, v := range tt.header {
			h.Set(k, v)
		}
		if got := retryAfter(h); got < tt.min || got > tt.max {
			t.Errorf("retryAfter(%v) = %v, want %v..%v", tt.header, got, tt.min, tt.max)
		}
	}
}

func TestRetryWait(t *testing.T) {
	for attempt := range 12 {
		d := min(backoffBase<<min(attempt, 8), backoffCap)
		for range 50 {
			got, ok := retryWait(attempt, 0)
			if !ok || got < d/2 || got > d {
				t.Fatalf("attempt %d: wait %v, want %v..%v", attempt, got, d/2, d)
			}
		}
	}
	if got, ok := retryWait(0, 2*time.Second); !ok || got < 2*time.Second || got > 2200*time.Millisecond {
		t.Errorf("Retry-After 2s: wait %v", got)
	}
	if _, ok := retryWait(0, maxRetryAfter+time.Second); ok {
		t.Error("a Retry-After beyond the cap is waited for")
	}
}

// Error bodies from a server are outside input: any of them maps to a
// status or to none, without a panic.
func FuzzAPIError(f *testing.F) {
	for _, s := range []string{
		`{"error":{"message":"m","type":"server_error","code":null}}`, `{"error":"text","error_type":"validation"}`,
		`{"object":"error","message":"m","code":400}`, `{"detail":[{"loc":["body"]}]}`, `{"error":{"code":"429"}}`, `<html>`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		if st := parseAPIError(body).status(); st != 0 && (st < 400 || st >= 600) {
			t.Fatalf("status %d for %q", st, body)
		}
	})
}
