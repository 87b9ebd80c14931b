package openai

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/troupe-llm/troupe/internal/openaitest"
)

// decoded is a chunk as a test compares it, its tool calls a string.
type decoded struct {
	Choices []decodedChoice
	Usage   bool
	Prompt  int
	Compl   int
	Failed  bool
}

type decodedChoice struct {
	Content, Refusal, ToolCalls, Finish string
	Reasoning, ReasoningContent         bool
}

func (c *chunk) decoded() decoded {
	d := decoded{Usage: c.usage, Prompt: c.promptTokens, Compl: c.completionTokens, Failed: c.failed}
	for _, ch := range c.choices {
		d.Choices = append(d.Choices, decodedChoice{
			Content: ch.content, Refusal: ch.refusal, ToolCalls: string(ch.toolCalls), Finish: ch.finish,
			Reasoning: ch.reasoning, ReasoningContent: ch.reasoningContent,
		})
	}
	return d
}

// referenceChunk decodes an event with encoding/json alone, as the
// definition of what decodeChunk must return: objects as maps (exact field
// names, the last of duplicates wins), each field the kind reads
// unmarshalled into its Go type.
func referenceChunk(data []byte) (decoded, error) {
	var d decoded
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return d, err
	}
	field := func(obj map[string]json.RawMessage, key string, v any) error {
		raw, ok := obj[key]
		if !ok {
			return nil
		}
		return json.Unmarshal(raw, v)
	}
	notNull := func(raw json.RawMessage) bool { return raw != nil && string(raw) != "null" }
	if raw, ok := top["choices"]; ok {
		var list []json.RawMessage
		if err := json.Unmarshal(raw, &list); err != nil {
			return d, err
		}
		for _, raw := range list {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal(raw, &obj); err != nil {
				return d, err
			}
			var index int
			var c decodedChoice
			if err := field(obj, "index", &index); err != nil {
				return d, err
			}
			if err := field(obj, "finish_reason", &c.Finish); err != nil {
				return d, err
			}
			var delta map[string]json.RawMessage
			if err := field(obj, "delta", &delta); err != nil {
				return d, err
			}
			if err := field(delta, "content", &c.Content); err != nil {
				return d, err
			}
			if err := field(delta, "refusal", &c.Refusal); err != nil {
				return d, err
			}
			if raw := delta["tool_calls"]; notNull(raw) {
				c.ToolCalls = string(raw)
			}
			c.Reasoning = notNull(delta["reasoning"]) && string(delta["reasoning"]) != `""`
			c.ReasoningContent = notNull(delta["reasoning_content"]) && string(delta["reasoning_content"]) != `""`
			if index == 0 {
				d.Choices = append(d.Choices, c)
			}
		}
	}
	if raw := top["usage"]; notNull(raw) {
		var usage map[string]json.RawMessage
		if err := json.Unmarshal(raw, &usage); err != nil {
			return d, err
		}
		var p, c float64
		if err := field(usage, "prompt_tokens", &p); err != nil {
			return d, err
		}
		if err := field(usage, "completion_tokens", &c); err != nil {
			return d, err
		}
		d.Usage = true
		d.Prompt, d.Compl = int(max(min(p, math.MaxInt32), 0)), int(max(min(c, math.MaxInt32), 0))
	}
	d.Failed = notNull(top["error"])
	return d, nil
}

// The events of every dialect decode as encoding/json reads them, with
// the content, tool calls, finish reason and usage the fake sent.
func TestDecodeChunkDialects(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := openaitest.New(t, openaitest.Response{
				Dialect: d, Chunks: []string{"Hello", ` "<wörld>" & \u00e9 `, "\U0001F600\n"},
				ToolCalls: []openaitest.ToolCall{{Name: "f", Arguments: []string{`{"a":`, `"<b>"}`}}},
				Usage:     &openaitest.Usage{PromptTokens: 7, CompletionTokens: 5},
			})
			body := post(t, s.URL, `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
			events, err := readEvents(body, 0)
			if err != nil {
				t.Fatal(err)
			}
			var text, calls, finish string
			var c chunk
			usage := false
			for _, ev := range events {
				if ev.data == "[DONE]" {
					continue
				}
				if err := decodeChunk([]byte(ev.data), &c); err != nil {
					t.Fatalf("%s: %v", ev.data, err)
				}
				want, err := referenceChunk([]byte(ev.data))
				if err != nil {
					t.Fatalf("%s: reference: %v", ev.data, err)
				}
				if got := c.decoded(); !reflect.DeepEqual(got, want) {
					t.Fatalf("%s:\n got %+v\nwant %+v", ev.data, got, want)
				}
				for _, ch := range c.choices {
					text += ch.content
					calls += string(ch.toolCalls)
					finish += ch.finish
				}
				if c.usage {
					usage = c.promptTokens == 7 && c.completionTokens == 5
				}
			}
			if text != `Hello "<wörld>" & \u00e9 `+"\U0001F600\n" || !strings.Contains(calls, `"name":"f"`) || finish != "tool_calls" || !usage {
				t.Errorf("text %q, calls %q, finish %q, usage %v", text, calls, finish, usage)
			}
		})
	}
}

func post(tb testing.TB, url, body string) []byte {
	tb.Helper()
	res, err := http.Post(url+"/chat/completions", "application/json", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		tb.Fatalf("status %d, %v", res.StatusCode, err)
	}
	return b
}

func TestDecodeChunk(t *testing.T) {
	tests := []struct {
		name, data string
		ok         bool
	}{
		{"content", `{"choices":[{"index":0,"delta":{"content":"hi"}}]}`, true},
		{"escapes", `{"choices":[{"delta":{"content":"a\"b\\c\/d\u00e9\ud83d\ude00\n\t"}}]}`, true},
		{"a lone surrogate", `{"choices":[{"delta":{"content":"\ud83d x"}}]}`, true},
		{"invalid UTF-8", "{\"choices\":[{\"delta\":{\"content\":\"a\xffb\xc3\"}}]}", true},
		{"escaped field name", `{"ch\u006fices":[{"delta":{"c\u006fntent":"x"}}]}`, true},
		{"other choices", `{"choices":[{"index":1,"delta":{"content":"no"}},{"index":0,"delta":{"content":"yes"}}]}`, true},
		{"nulls", `{"choices":[null,{"index":null,"delta":null,"finish_reason":null}],"usage":null,"error":null}`, true},
		{"duplicates: the last wins", `{"choices":[{"delta":{"content":"a","content":"b"},"delta":{"refusal":"r"}}],"choices":[{"delta":{"content":"c"}}],"usage":{"prompt_tokens":1},"usage":null}`, true},
		{"usage", `{"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3.0,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0}}}`, true},
		{"tool calls kept raw", `{"choices":[{"delta":{"tool_calls":[ {"index":0, "function":{"arguments":"{\"a\""}} ]}}]}`, true},
		{"reasoning", `{"choices":[{"delta":{"reasoning_content":"hmm","reasoning":""}}]}`, true},
		{"error", `{"error":{"message":"boom","code":500}}`, true},
		{"null", `null`, true},
		{"whitespace", " \t\r\n{ \"choices\" : [ { \"delta\" : { \"content\" : \"x\" } } ] } \n", true},
		{"skipped values of every kind", `{"a":[1,-2.5e+3,0.0,true,false,null,"s",{"b":[[]]},{}],"choices":[]}`, true},
		{"deep but within bounds", `{"x":` + strings.Repeat("[", 1000) + strings.Repeat("]", 1000) + `}`, true},
		{"not an object", `[1]`, false},
		{"unfinished", `{"choices":[{"delta":{"content":"x"}}]`, false},
		{"trailing data", `{} {}`, false},
		{"content a number", `{"choices":[{"delta":{"content":5}}]}`, false},
		{"index a string", `{"choices":[{"index":"0"}]}`, false},
		{"index not whole", `{"choices":[{"index":1.5}]}`, false},
		{"index out of range", `{"choices":[{"index":99999999999999999999}]}`, false},
		{"usage a list", `{"usage":[1]}`, false},
		{"count out of range", `{"usage":{"prompt_tokens":1e400}}`, false},
		{"control character", "{\"a\":\"x\ny\"}", false},
		{"bad escape", `{"a":"\x"}`, false},
		{"bad unicode escape", `{"a":"\u12g4"}`, false},
		{"leading zero", `{"a":01}`, false},
		{"bare minus", `{"a":-}`, false},
		{"no fraction digits", `{"a":1.}`, false},
		{"no exponent digits", `{"a":1e}`, false},
		{"single quotes", `{'a':1}`, false},
		{"trailing comma", `{"a":1,}`, false},
		{"missing colon", `{"a" 1}`, false},
		{"bad literal", `{"a":nul}`, false},
		{"too deep", `{"x":` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `}`, false},
		{"empty", ``, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var c chunk
			err := decodeChunk([]byte(tt.data), &c)
			want, refErr := referenceChunk([]byte(tt.data))
			if (err == nil) != tt.ok || (refErr == nil) != tt.ok {
				t.Fatalf("error %v, encoding/json's %v; want ok %v", err, refErr, tt.ok)
			}
			if err != nil {
				var m *malformedError
				if !errors.As(err, &m) {
					t.Fatalf("error %T %v, want a *malformedError", err, err)
				}
				return
			}
			if got := c.decoded(); !reflect.DeepEqual(got, want) {
				t.Fatalf("\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

// The decoder agrees with encoding/json on any input: the same fields, or
// an error from both.
func FuzzDecodeChunk(f *testing.F) {
	for _, s := range []string{
		`{"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"logprobs":null,"finish_reason":null}]}`,
		`{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]},"finish_reason":"tool_calls"}]}`,
		`{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2.5}}`,
		`{"error":{"message":"\u003cb\u003e","code":500}}`,
		`{"choices":[{"delta":{"content":"\ud83d\ude00 \" \\ \/","reasoning":"x","reasoning_content":""}}]}`,
		`null`, `[]`, `{"a":[1,2,{"b":null}],"c":-0.5E-3}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c chunk
		err := decodeChunk(data, &c)
		want, refErr := referenceChunk(data)
		if (err == nil) != (refErr == nil) {
			t.Fatalf("%q: error %v, encoding/json's %v", data, err, refErr)
		}
		if err == nil {
			if got := c.decoded(); !reflect.DeepEqual(got, want) {
				t.Fatalf("%q:\n got %+v\nwant %+v", data, got, want)
			}
		}
	})
}

// stdChunk is the same fields read with json.Unmarshal into a struct, for
// BenchmarkDecodeChunk: what the kind would do without its own decoder.
type stdChunk struct {
	Choices []struct {
		Index int `json:"index"`
		Delta struct {
			Content          string          `json:"content"`
			Refusal          string          `json:"refusal"`
			ToolCalls        json.RawMessage `json:"tool_calls"`
			Reasoning        json.RawMessage `json:"reasoning"`
			ReasoningContent json.RawMessage `json:"reasoning_content"`
		} `json:"delta"`
		FinishReason string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     float64 `json:"prompt_tokens"`
		CompletionTokens float64 `json:"completion_tokens"`
	} `json:"usage"`
	Error json.RawMessage `json:"error"`
}

// BenchmarkDecodeChunk is one content delta of each dialect, decoded by the
// kind's decoder and by json.Unmarshal into a struct of the same fields.
func BenchmarkDecodeChunk(b *testing.B) {
	for _, d := range []openaitest.Dialect{openaitest.OpenAI, openaitest.VLLM, openaitest.LlamaCpp, openaitest.Ollama} {
		body := recordedStream(b, d, 3)
		events, err := readEvents(body, 0)
		if err != nil {
			b.Fatal(err)
		}
		var data []byte
		for _, ev := range events {
			if strings.Contains(ev.data, `"content":" tok1"`) {
				data = []byte(ev.data)
			}
		}
		if data == nil {
			b.Fatalf("no second content delta in %s", body)
		}
		b.Run(fmt.Sprintf("%s/decodeChunk", d), func(b *testing.B) {
			var c chunk
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if err := decodeChunk(data, &c); err != nil || c.choices[0].content != " tok1" {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("%s/json.Unmarshal", d), func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				var c stdChunk
				if err := json.Unmarshal(data, &c); err != nil || c.Choices[0].Delta.Content != " tok1" {
					b.Fatal(err)
				}
			}
		})
	}
}
