package openaitest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var dialects = []Dialect{OpenAI, VLLM, LlamaCpp, Ollama}

const (
	chatBody   = `{"model":"test-model","messages":[{"role":"user","content":"Say hello."}],"stream":true}`
	usageBody  = `{"model":"test-model","messages":[{"role":"user","content":"Say hello."}],"stream":true,"stream_options":{"include_usage":true}}`
	plainBody  = `{"model":"test-model","messages":[{"role":"user","content":"Say hello."}]}`
	waitBudget = 10 * time.Second
)

// newClient is an HTTP client whose idle connections close with the test.
func newClient(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// post sends body to the chat route and returns the answer, read whole.
func post(t *testing.T, s *Server, body string) (*http.Response, []byte) {
	t.Helper()
	return postContext(context.Background(), t, newClient(t), s, body)
}

func postContext(ctx context.Context, t *testing.T, c *http.Client, s *Server, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/chat/completions", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer sk-test")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	return resp, b
}

// stream is a parsed SSE body.
type stream struct {
	events   []string // the data of each event, "[DONE]" included
	comments int
}

// parseSSE reads an event stream the way the SDKs do, and insists on the
// framing the servers use: "data: " lines, each event ended by a blank line.
func parseSSE(t *testing.T, body []byte) stream {
	t.Helper()
	if len(body) > 0 && !bytes.HasSuffix(body, []byte("\n\n")) {
		t.Fatalf("stream does not end with a blank line: %q", body)
	}
	var s stream
	var data []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if data != nil {
				s.events = append(s.events, strings.Join(data, "\n"))
				data = nil
			}
		case strings.HasPrefix(line, ":"):
			s.comments++
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: "))
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	if data != nil {
		t.Fatalf("unterminated event %q", data)
	}
	return s
}

// chunk is the part of a chunk or body the tests look at.
type chunk struct {
	Object  string `json:"object"`
	Model   string `json:"model"`
	Choices []struct {
		Delta struct {
			Role      string     `json:"role"`
			Content   *string    `json:"content"`
			ToolCalls []toolCall `json:"tool_calls"`
		} `json:"delta"`
		Message struct {
			Role      string     `json:"role"`
			Content   *string    `json:"content"`
			ToolCalls []toolCall `json:"tool_calls"`
		} `json:"message"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Param   any    `json:"param"`
		Code    any    `json:"code"`
	} `json:"error"`
}

type toolCall struct {
	Index    int    `json:"index"`
	ID       string `json:"id"`
	Type     string `json:"type"`
	Function struct {
		Name      string `json:"name"`
		Arguments string `json:"arguments"`
	} `json:"function"`
}

func decode(t *testing.T, data string) chunk {
	t.Helper()
	var c chunk
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		t.Fatalf("decode %q: %v", data, err)
	}
	return c
}

// summary is what a client makes of a stream.
type summary struct {
	role, content string
	finishes      []string
	usage         int // number of usage chunks (with "choices":[])
	total         int
	args          map[int]string // tool call index → arguments
	names         map[int]string
	errors        []string
	done          bool
}

func summarize(t *testing.T, events []string) summary {
	t.Helper()
	sum := summary{args: map[int]string{}, names: map[int]string{}}
	for i, ev := range events {
		if ev == "[DONE]" {
			if i != len(events)-1 {
				t.Fatalf("[DONE] is not last: %q", events)
			}
			sum.done = true
			continue
		}
		c := decode(t, ev)
		if c.Error != nil {
			sum.errors = append(sum.errors, c.Error.Message)
			continue
		}
		if c.Object != "chat.completion.chunk" {
			t.Errorf("event %d: object %q", i, c.Object)
		}
		if c.Usage != nil {
			if len(c.Choices) != 0 {
				t.Errorf("usage on a chunk with choices: %s", ev)
			}
			sum.usage++
			sum.total = c.Usage.TotalTokens
		}
		for _, ch := range c.Choices {
			if ch.Delta.Role != "" && sum.role == "" {
				sum.role = ch.Delta.Role
			}
			if ch.Delta.Content != nil {
				sum.content += *ch.Delta.Content
			}
			for _, tc := range ch.Delta.ToolCalls {
				sum.args[tc.Index] += tc.Function.Arguments
				if tc.Function.Name != "" {
					sum.names[tc.Index] = tc.Function.Name
				}
			}
			if ch.FinishReason != nil {
				sum.finishes = append(sum.finishes, *ch.FinishReason)
			}
		}
	}
	return sum
}

func TestStreamedAnswer(t *testing.T) {
	for _, d := range dialects {
		for _, withUsage := range []bool{false, true} {
			name := d.String()
			body := chatBody
			if withUsage {
				name += "/include_usage"
				body = usageBody
			}
			t.Run(name, func(t *testing.T) {
				s := New(t, Response{Dialect: d, Chunks: []string{"Hel", "lo ", "<wörld> & \U0001F600"}, Usage: &Usage{PromptTokens: 11, CompletionTokens: 3}})
				resp, raw := post(t, s, body)
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("status %d: %s", resp.StatusCode, raw)
				}
				if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
					t.Errorf("Content-Type %q", ct)
				}
				if bytes.Contains(raw, []byte("\r")) || bytes.Contains(raw, []byte("\n\n\n")) {
					t.Errorf("framing: %q", raw)
				}
				sse := parseSSE(t, raw)
				if sse.comments != 0 {
					t.Errorf("%d comments without Comments", sse.comments)
				}
				sum := summarize(t, sse.events)
				if sum.role != "assistant" || sum.content != "Hello <wörld> & \U0001F600" {
					t.Errorf("role %q content %q", sum.role, sum.content)
				}
				if len(sum.finishes) != 1 || sum.finishes[0] != "stop" {
					t.Errorf("finish reasons %q", sum.finishes)
				}
				if !sum.done {
					t.Error("no [DONE]")
				}
				wantUsage := 0
				if withUsage {
					wantUsage = 1
					if sum.total != 14 {
						t.Errorf("total_tokens %d, want 14", sum.total)
					}
				}
				if sum.usage != wantUsage {
					t.Errorf("%d usage chunks, want %d", sum.usage, wantUsage)
				}
				// The usage chunk, when there is one, is the last before [DONE].
				if withUsage && !strings.Contains(sse.events[len(sse.events)-2], `"choices":[]`) {
					t.Errorf("last chunk %s", sse.events[len(sse.events)-2])
				}
				if !withUsage && bytes.Contains(raw, []byte(`"usage"`)) {
					t.Errorf("usage sent without include_usage: %s", raw)
				}
				first := sse.events[0]
				for _, want := range []string{`"object":"chat.completion.chunk"`, `"id":"chatcmpl-`, `"model":"test-model"`} {
					if !strings.Contains(first, want) {
						t.Errorf("first chunk %s lacks %s", first, want)
					}
				}
			})
		}
	}
}

// normalize replaces what is random or time-dependent in an answer.
var normalizers = []struct {
	re   *regexp.Regexp
	repl string
}{
	{regexp.MustCompile(`"id":( ?)"chatcmpl-[^"]*"`), `"id":${1}"chatcmpl-ID"`},
	{regexp.MustCompile(`"created":( ?)\d+`), `"created":${1}0`},
	{regexp.MustCompile(`"system_fingerprint":( ?)"(fp_[0-9a-f]{10}|b6097-[0-9a-f]{8})"`), `"system_fingerprint":${1}"FP"`},
	{regexp.MustCompile(`"obfuscation":"[^"]*"`), `"obfuscation":"X"`},
}

func normalize(b []byte) string {
	s := string(b)
	for _, n := range normalizers {
		s = n.re.ReplaceAllString(s, n.repl)
	}
	return s
}

func TestGolden(t *testing.T) {
	script := Response{
		Chunks:    []string{"Hi", " <é>"},
		ToolCalls: []ToolCall{{ID: "call_1", Name: "get_weather", Arguments: []string{`{"city":`, `"Paris"}`}}},
		Usage:     &Usage{PromptTokens: 9, CompletionTokens: 4},
	}
	for _, g := range golden {
		t.Run(g.name, func(t *testing.T) {
			r := script
			r.Dialect = g.dialect
			if g.status != 0 {
				r = Response{Dialect: g.dialect, Status: g.status}
			}
			s := New(t, r)
			resp, raw := post(t, s, g.body)
			if got := normalize(raw); got != g.want {
				t.Errorf("body:\n%s\nwant:\n%s", got, g.want)
			}
			if got := resp.Header.Get("Content-Type"); got != g.contentType {
				t.Errorf("Content-Type %q, want %q", got, g.contentType)
			}
		})
	}
}

func TestSplitEvents(t *testing.T) {
	t.Run("cuts", func(t *testing.T) {
		for _, ev := range []string{
			"data: {\"content\":\"ascii only\"}\n\n",
			"data: {\"content\":\"caf\u00e9 \U0001F600\"}\n\n",
			"data: [DONE]\n\n",
		} {
			pieces := split([]byte(ev))
			if len(pieces) < 3 {
				t.Errorf("%q cut in %d pieces", ev, len(pieces))
			}
			if got := string(bytes.Join(pieces, nil)); got != ev {
				t.Errorf("pieces join to %q, want %q", got, ev)
			}
			if string(pieces[len(pieces)-1]) != "\n" {
				t.Errorf("%q: last piece %q, want the second newline alone", ev, pieces[len(pieces)-1])
			}
			if strings.ContainsRune(ev, 'é') {
				cutRune := false
				for _, p := range pieces {
					cutRune = cutRune || !utf8.Valid(p)
				}
				if !cutRune {
					t.Errorf("%q: no piece ends inside a character: %q", ev, pieces)
				}
			}
		}
	})
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			r := Response{Dialect: d, Chunks: []string{"un ", "café ", "\U0001F600"}, Usage: &Usage{PromptTokens: 1, CompletionTokens: 3}}
			split := r
			split.SplitEvents = true
			s := New(t, r, split)
			_, whole := post(t, s, usageBody)
			_, pieces := post(t, s, usageBody)
			if normalize(pieces) != normalize(whole) {
				t.Errorf("split stream differs:\n%s\nwhole:\n%s", pieces, whole)
			}
			if got := summarize(t, parseSSE(t, pieces).events).content; got != "un café \U0001F600" {
				t.Errorf("content %q", got)
			}
		})
	}
}

func TestComments(t *testing.T) {
	s := New(t, Response{Chunks: []string{"a", "b"}, Comments: true})
	_, raw := post(t, s, chatBody)
	sse := parseSSE(t, raw)
	// One before each event: opening, a, b, finish, [DONE].
	if sse.comments != 5 || len(sse.events) != 5 {
		t.Errorf("%d comments, %d events: %q", sse.comments, len(sse.events), raw)
	}
	if !bytes.HasPrefix(raw, []byte(": keep-alive\n\ndata: ")) {
		t.Errorf("stream starts %q", raw[:min(len(raw), 30)])
	}
	if got := summarize(t, sse.events).content; got != "ab" {
		t.Errorf("content %q", got)
	}
}

func TestErrorAnswers(t *testing.T) {
	tests := []struct {
		name       string
		dialect    Dialect
		resp       Response
		body       string
		wantStatus int
		wantHeader map[string]string
		wantType   string
		wantCode   any
		wantParam  any
	}{
		{name: "openai 429 with Retry-After", dialect: OpenAI, body: chatBody,
			resp:       Response{Status: 429, Header: map[string]string{"Retry-After": "3"}},
			wantStatus: 429, wantHeader: map[string]string{"Retry-After": "3", "Content-Type": "application/json"},
			wantType: "requests", wantCode: "rate_limit_exceeded"},
		{name: "openai 500", dialect: OpenAI, body: plainBody,
			resp: Response{Error: &APIError{Message: "boom"}}, wantStatus: 500, wantType: "server_error"},
		{name: "openai 400 with param", dialect: OpenAI, body: chatBody,
			resp:       Response{Status: 400, Error: &APIError{Message: "bad temperature", Param: "temperature", Code: "invalid_value"}},
			wantStatus: 400, wantType: "invalid_request_error", wantCode: "invalid_value", wantParam: "temperature"},
		{name: "vllm 500", dialect: VLLM, body: chatBody,
			resp: Response{Status: 500}, wantStatus: 500, wantType: "InternalServerError", wantCode: float64(500)},
		{name: "llama.cpp 503", dialect: LlamaCpp, body: chatBody,
			resp:       Response{Status: 503, Error: &APIError{Message: "Loading model"}},
			wantStatus: 503, wantType: "unavailable_error", wantCode: float64(503),
			wantHeader: map[string]string{"Content-Type": "application/json; charset=utf-8"}},
		{name: "ollama 404", dialect: Ollama, body: chatBody,
			resp:       Response{Status: 404, Error: &APIError{Message: `model "x" not found, try pulling it first`}},
			wantStatus: 404, wantType: "not_found_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.resp.Dialect = tt.dialect
			s := New(t, tt.resp)
			resp, raw := post(t, s, tt.body)
			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantStatus)
			}
			for k, v := range tt.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			c := decode(t, string(raw))
			if c.Error == nil {
				t.Fatalf("no error object: %s", raw)
			}
			if c.Error.Type != tt.wantType || c.Error.Code != tt.wantCode || (tt.dialect != LlamaCpp && c.Error.Param != tt.wantParam) {
				t.Errorf("error %+v, want type %q code %v param %v", *c.Error, tt.wantType, tt.wantCode, tt.wantParam)
			}
			if c.Error.Message == "" || (tt.resp.Error != nil && c.Error.Message != tt.resp.Error.Message) {
				t.Errorf("message %q", c.Error.Message)
			}
			// Every error object has the four fields but llama.cpp's.
			var fields struct{ Error map[string]any }
			_ = json.Unmarshal(raw, &fields)
			want := 4
			if tt.dialect == LlamaCpp {
				want = 3
			}
			if len(fields.Error) != want {
				t.Errorf("error fields %v", fields.Error)
			}
		})
	}
}

func TestMidStreamError(t *testing.T) {
	tests := []struct {
		dialect    Dialect
		errorAfter int
		wantText   string
		wantError  bool // an error event (Ollama has none)
		wantDone   bool
	}{
		{OpenAI, 2, "ab", true, false},
		{OpenAI, 0, "", true, false},
		{VLLM, 1, "a", true, true},
		{LlamaCpp, 2, "ab", true, false},
		{Ollama, 1, "a", false, false},
		{OpenAI, 99, "abc", true, false},
	}
	for _, tt := range tests {
		t.Run(tt.dialect.String(), func(t *testing.T) {
			s := New(t, Response{Dialect: tt.dialect, Chunks: []string{"a", "b", "c"},
				StreamError: &APIError{Message: "upstream overloaded"}, ErrorAfter: tt.errorAfter})
			resp, raw := post(t, s, usageBody)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			sse := parseSSE(t, raw)
			sum := summarize(t, sse.events)
			if sum.content != tt.wantText || len(sum.finishes) != 0 || sum.usage != 0 || sum.done != tt.wantDone {
				t.Errorf("content %q finishes %q usage %d done %v: %s", sum.content, sum.finishes, sum.usage, sum.done, raw)
			}
			if tt.wantError {
				if len(sum.errors) != 1 || sum.errors[0] != "upstream overloaded" {
					t.Errorf("errors %q", sum.errors)
				}
				last := sse.events[len(sse.events)-1]
				if tt.wantDone {
					last = sse.events[len(sse.events)-2]
				}
				if !strings.HasPrefix(last, `{"error":`) {
					t.Errorf("error event is not where the stream stops: %q", sse.events)
				}
			} else if len(sum.errors) != 0 {
				t.Errorf("errors %q", sum.errors)
			}
			if r := s.WaitClosed(t, 0, waitBudget); r.HungUp {
				t.Error("recorded as a hang-up")
			}
		})
	}
	t.Run("non-streaming request", func(t *testing.T) {
		s := New(t, Response{Chunks: []string{"a"}, StreamError: &APIError{Message: "boom"}})
		resp, raw := post(t, s, plainBody)
		if resp.StatusCode != 500 || decode(t, string(raw)).Error == nil {
			t.Errorf("status %d: %s", resp.StatusCode, raw)
		}
	})
}

func TestNonStreamingAnswer(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := New(t,
				Response{Dialect: d, Chunks: []string{"Hello", " there"}, Usage: &Usage{PromptTokens: 7, CompletionTokens: 2}},
				Response{Dialect: d, ToolCalls: []ToolCall{{Name: "lookup", Arguments: []string{`{"q":`, `"x"}`}}}},
			)
			resp, raw := post(t, s, plainBody)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
				t.Errorf("Content-Type %q", ct)
			}
			c := decode(t, string(raw))
			if c.Object != "chat.completion" || c.Model != "test-model" || len(c.Choices) != 1 {
				t.Fatalf("answer %s", raw)
			}
			ch := c.Choices[0]
			if ch.Message.Role != "assistant" || ch.Message.Content == nil || *ch.Message.Content != "Hello there" {
				t.Errorf("message %s", raw)
			}
			if ch.FinishReason == nil || *ch.FinishReason != "stop" {
				t.Errorf("finish_reason %v", ch.FinishReason)
			}
			if c.Usage == nil || c.Usage.PromptTokens != 7 || c.Usage.CompletionTokens != 2 || c.Usage.TotalTokens != 9 {
				t.Errorf("usage %+v", c.Usage)
			}

			_, raw = post(t, s, plainBody)
			c = decode(t, string(raw))
			ch = c.Choices[0]
			if len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Name != "lookup" ||
				ch.Message.ToolCalls[0].Function.Arguments != `{"q":"x"}` || ch.Message.ToolCalls[0].ID == "" ||
				ch.Message.ToolCalls[0].Type != "function" {
				t.Errorf("tool calls %s", raw)
			}
			if *ch.FinishReason != "tool_calls" {
				t.Errorf("finish_reason %q", *ch.FinishReason)
			}
			if c.Usage == nil || c.Usage.CompletionTokens != 2 || c.Usage.PromptTokens != 6 {
				t.Errorf("estimated usage %+v", c.Usage) // 10 chars → 3, one message → 3
			}
		})
	}
}

func TestStreamedToolCalls(t *testing.T) {
	calls := []ToolCall{
		{Name: "get_weather", Arguments: []string{`{"ci`, `ty":"Par`, `is"}`}},
		{Name: "get_time", Arguments: []string{`{}`}},
	}
	for _, d := range dialects {
		for _, text := range []bool{false, true} {
			name := d.String()
			r := Response{Dialect: d, ToolCalls: calls}
			if text {
				name += "/after text"
				r.Chunks = []string{"Let me look."}
			}
			t.Run(name, func(t *testing.T) {
				s := New(t, r)
				_, raw := post(t, s, chatBody)
				sum := summarize(t, parseSSE(t, raw).events)
				if sum.args[0] != `{"city":"Paris"}` || sum.args[1] != `{}` ||
					sum.names[0] != "get_weather" || sum.names[1] != "get_time" {
					t.Errorf("names %v args %v: %s", sum.names, sum.args, raw)
				}
				if len(sum.finishes) != 1 || sum.finishes[0] != "tool_calls" {
					t.Errorf("finish reasons %q", sum.finishes)
				}
				if text && sum.content != "Let me look." {
					t.Errorf("content %q", sum.content)
				}
			})
		}
	}
}

func TestHangUntilClientGoesAway(t *testing.T) {
	tests := []struct {
		name string
		resp Response
		body string
		// chunks the client reads before it gives up (-1: it gets no
		// answer at all)
		read int
	}{
		{name: "before headers", resp: Response{Chunks: []string{"a"}, Hang: true, HangAfter: BeforeHeaders}, body: chatBody, read: -1},
		{name: "non-streaming", resp: Response{Chunks: []string{"a"}, Hang: true}, body: plainBody, read: -1},
		{name: "after the role chunk", resp: Response{Chunks: []string{"a", "b"}, Hang: true}, body: chatBody, read: 1},
		{name: "mid-stream", resp: Response{Chunks: []string{"a", "b", "c"}, Hang: true, HangAfter: 2}, body: chatBody, read: 3},
		{name: "mid-stream, ollama", resp: Response{Dialect: Ollama, Chunks: []string{"a", "b"}, Hang: true, HangAfter: 1}, body: chatBody, read: 1},
		{name: "in a delay", resp: Response{Chunks: []string{"a", "b"}, FirstDelay: time.Hour}, body: chatBody, read: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(t, tt.resp)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/chat/completions", strings.NewReader(tt.body))
			type result struct {
				resp *http.Response
				err  error
			}
			done := make(chan result, 1)
			go func() {
				resp, err := newClient(t).Do(req)
				done <- result{resp, err}
			}()
			var cancelled time.Time
			if tt.read < 0 {
				s.WaitRequests(t, 1, waitBudget)
				select {
				case r := <-done:
					t.Fatalf("answered while hanging: %v %v", r.resp, r.err)
				default:
				}
				cancelled = time.Now()
				cancel()
				if r := <-done; r.err == nil {
					r.resp.Body.Close()
					t.Fatal("request succeeded")
				}
			} else {
				r := <-done
				if r.err != nil {
					t.Fatal(r.err)
				}
				br := bufio.NewReader(r.resp.Body)
				for n := 0; n < tt.read; {
					line, err := br.ReadString('\n')
					if err != nil {
						t.Fatalf("after %d events: %v", n, err)
					}
					if strings.HasPrefix(line, "data: ") {
						n++
					}
				}
				cancelled = time.Now()
				cancel()
				r.resp.Body.Close()
			}
			got := s.WaitClosed(t, 0, waitBudget)
			if !got.HungUp {
				t.Error("HungUp not recorded")
			}
			if got.Closed.Before(cancelled) || got.Closed.Sub(cancelled) > 2*time.Second {
				t.Errorf("closed %v after the cancel", got.Closed.Sub(cancelled))
			}
			s.Wait(t, waitBudget, func(rs []Request) bool { return !rs[0].ConnClosed.IsZero() })
		})
	}
}

func TestRequestsRecorded(t *testing.T) {
	s := New(t)
	c := newClient(t)
	postContext(context.Background(), t, c, s, usageBody)
	postContext(context.Background(), t, c, s, plainBody)
	rs := s.WaitRequests(t, 2, waitBudget)
	if len(rs) != 2 {
		t.Fatalf("%d requests", len(rs))
	}
	first, second := rs[0], rs[1]
	if first.Method != http.MethodPost || first.Path != ChatPath || first.Header.Get("Authorization") != "Bearer sk-test" {
		t.Errorf("request %+v", first)
	}
	if string(first.Body) != usageBody || first.JSON["model"] != "test-model" || !first.Stream || !first.IncludeUsage {
		t.Errorf("body %q json %v stream %v usage %v", first.Body, first.JSON, first.Stream, first.IncludeUsage)
	}
	if second.Stream || second.IncludeUsage {
		t.Errorf("second: stream %v usage %v", second.Stream, second.IncludeUsage)
	}
	for i, r := range rs {
		if !r.Done() || r.HungUp || r.Closed.Before(r.Arrived) {
			t.Errorf("request %d: arrived %v closed %v hung up %v", i, r.Arrived, r.Closed, r.HungUp)
		}
		if !r.ConnClosed.IsZero() {
			t.Errorf("request %d: connection closed while idle in the pool", i)
		}
	}
	c.CloseIdleConnections()
	rs = s.Wait(t, waitBudget, func(rs []Request) bool { return !rs[1].ConnClosed.IsZero() })
	if rs[0].ConnClosed != rs[1].ConnClosed {
		t.Errorf("one connection, two close times: %v %v", rs[0].ConnClosed, rs[1].ConnClosed)
	}
}

func TestDefaultAndScriptOrder(t *testing.T) {
	s := New(t, Response{Chunks: []string{"one"}})
	s.Enqueue(Response{Chunks: []string{"two"}})
	var got []string
	for range 3 {
		_, raw := post(t, s, chatBody)
		got = append(got, summarize(t, parseSSE(t, raw).events).content)
	}
	want := []string{"one", "two", "Hello from the fake upstream."}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("answers %q, want %q", got, want)
	}
	if s.Pending() != 0 {
		t.Errorf("%d pending", s.Pending())
	}
}

func TestBadRequests(t *testing.T) {
	tests := []struct {
		name, path, body string
		status           int
		param            any
	}{
		{name: "not JSON", path: "/chat/completions", body: `{"model":`, status: 400},
		{name: "no messages", path: "/chat/completions", body: `{"model":"m"}`, status: 400, param: "messages"},
		{name: "empty messages", path: "/chat/completions", body: `{"model":"m","messages":[]}`, status: 400, param: "messages"},
		{name: "stream_options without stream", path: "/chat/completions",
			body: `{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}`, status: 400, param: "stream_options"},
		{name: "unknown route", path: "/completions", body: plainBody, status: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(t, Response{Chunks: []string{"kept"}})
			resp, err := newClient(t).Post(s.URL+tt.path, "application/json", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if e := decode(t, string(raw)).Error; e == nil || e.Type != "invalid_request_error" || e.Param != tt.param {
				t.Errorf("answer %s", raw)
			}
			if s.Pending() != 1 {
				t.Error("a bad request took the scripted response")
			}
		})
	}
}

func TestDelays(t *testing.T) {
	const first, each = 250 * time.Millisecond, 20 * time.Millisecond
	s := New(t, Response{Chunks: []string{"a", "b"}, FirstDelay: first, Delay: each})
	start := time.Now()
	resp, err := newClient(t).Post(s.URL+"/chat/completions", "application/json", strings.NewReader(chatBody))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	headers := time.Since(start)
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	firstEvent := time.Since(start)
	if _, err := io.ReadAll(br); err != nil {
		t.Fatal(err)
	}
	all := time.Since(start)
	if headers >= first {
		t.Errorf("headers after %v: they should not wait for the first token", headers)
	}
	if firstEvent < first {
		t.Errorf("first event after %v, want at least %v", firstEvent, first)
	}
	if all < first+4*each { // a, b, finish, [DONE]
		t.Errorf("whole stream in %v, want at least %v", all, first+4*each)
	}
}

func TestServerCloseEndsHangs(t *testing.T) {
	var s *Server
	drained := make(chan struct{})
	t.Run("inner", func(t *testing.T) {
		var body io.Closer
		// Cleanups run last first: the server closes before the client.
		t.Cleanup(func() {
			if body != nil {
				body.Close()
			}
		})
		s = New(t, Response{Hang: true, HangAfter: 1, Chunks: []string{"a", "b"}})
		resp, err := newClient(t).Post(s.URL+"/chat/completions", "application/json", strings.NewReader(chatBody))
		if err != nil {
			t.Fatal(err)
		}
		body = resp.Body
		go func() {
			defer close(drained)
			_, _ = io.Copy(io.Discard, resp.Body)
		}()
		s.WaitRequests(t, 1, waitBudget)
	})
	<-drained
	r := s.Requests()[0]
	if !r.Done() || r.HungUp {
		t.Errorf("closed %v hung up %v", r.Closed, r.HungUp)
	}
}
