package openai

import (
	"bytes"
	"encoding/json"
	"math"
	"strings"
	"testing"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/internal/openaitest"
)

// The chat's JSON parameters, the extra argument's values and the
// history's tool calls reach the server byte for byte; the body is one
// JSON object with no field twice; extra's stream_options replaces the
// kind's.
func TestRequestBodyBytes(t *testing.T) {
	tools := "[ {\"type\": \"function\",\n  \"function\": {\"parameters\": {\"type\": \"object\"}, \"name\": \"f\", \"x-vendor\": 1.50}} ]"
	choice := `{ "function": {"name": "f"}, "type": "function" }`
	format := `{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object","properties":{"a":{"type":"number","minimum":1e-3}}}}}`
	calls := `[{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": \"<b>\"}"}, "x-vendor": [1, 2.0]}]`
	s := openaitest.New(t)
	m := newModel(t, s.URL, actors.Args{
		"extra": map[string]any{"stream_options": nil, "top_k": 40, "chat_template_kwargs": map[string]any{"enable_thinking": false}},
	})
	req := &actors.ChatRequest{ChatId: "c1", History: []*actors.Message{
		{Role: actors.Role_ROLE_USER, Content: "call f \u2028 \x01 \xff"},
		{Role: actors.Role_ROLE_ASSISTANT, ToolCalls: "  " + calls + "\n"},
		{Role: actors.Role_ROLE_TOOL, Content: `{"ok":true}`, ToolCallId: "c1"},
	}, Params: map[string]string{"tools": tools, "tool_choice": choice, "response_format": format}}
	if got := generate(withTimeout(t, waitBudget), m, req); got.err != nil {
		t.Fatal(got.err)
	}
	body := s.WaitClosed(t, 0, waitBudget).Body
	for _, want := range []string{
		`"tools":` + tools, `"tool_choice":` + choice, `"response_format":` + format, `"tool_calls":` + calls,
		`"stream_options":null`, `"top_k":40`, `"chat_template_kwargs":{"enable_thinking":false}`,
		`"content":"call f \u2028 \u0001 \ufffd"`, `"content":null`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("the body lacks %s\nbody: %s", want, body)
		}
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("body %s: not an object", body)
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("body %s: %v", body, err)
		}
		key := tok.(string)
		if seen[key] {
			t.Errorf("field %s twice in %s", key, body)
		}
		seen[key] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("body %s: %v", body, err)
		}
	}
	if _, err := dec.Token(); err != nil {
		t.Fatal(err)
	}
	if dec.More() || !json.Valid(body) {
		t.Errorf("body %s: more after the object, or not valid", body)
	}
}

// Numbers are written as encoding/json writes them.
func TestAppendFloat(t *testing.T) {
	for _, f := range []float64{
		0, math.Copysign(0, -1), 0.5, 1, 0.1, 0.7, 1.0 / 3, 2, 100, 1e-6, 9.99e-7, 1e-7, 1.5e-300,
		1e20, 1e21, 1.2345e22, -2.5e-9, 123456789.125, math.SmallestNonzeroFloat64, math.MaxFloat64,
	} {
		want, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendFloat(nil, f); string(got) != string(want) {
			t.Errorf("appendFloat(%v) = %s, want %s", f, got, want)
		}
	}
}

// Strings are written as encoding/json writes them without HTML escaping.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `"quoted" \ back`, "<b>&</b>", "\x00\x01\x08\x0c\n\r\t\x1f\x7f", "\u2028\u2029", "é\U0001F600", "\xff\xc3(", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		if got := appendString(nil, s); string(got) != strings.TrimSuffix(want.String(), "\n") {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want.String())
		}
	})
}
