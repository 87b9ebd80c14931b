package gateway

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/actors"
)

func TestParseHistory(t *testing.T) {
	tests := []struct {
		name, input string
		want        []*actors.Message
		err         string
	}{
		{name: "kuwa form", input: `[{"msg":"hi","isbot":false},{"msg":"hello","isbot":true},{"msg":"again","isbot":false}]`,
			want: []*actors.Message{{Content: "hi"}, {Role: actors.Role_ROLE_ASSISTANT, Content: "hello"}, {Content: "again"}}},
		{name: "openai form", input: `[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]`,
			want: []*actors.Message{{Role: actors.Role_ROLE_SYSTEM, Content: "be brief"}, {Content: "hi"}}},
		{name: "extra fields are ignored", input: `[{"msg":"hi","isbot":false,"kind":"text"}]`, want: []*actors.Message{{Content: "hi"}}},
		{name: "missing", input: "", err: "has no input"},
		{name: "blank", input: "  ", err: "has no input"},
		{name: "not json", input: "hello", err: "not a JSON list"},
		{name: "object", input: `{"msg":"hi"}`, err: "not a JSON list"},
		{name: "empty list", input: `[]`, err: "history is empty"},
		{name: "last empty", input: `[{"msg":"hi"},{"msg":"  "}]`, err: "last message of the chat is empty"},
		{name: "no text", input: `[{"isbot":true}]`, err: "message 1 has neither"},
		{name: "bad role", input: `[{"role":"tool","content":"x"}]`, err: "unknown role \"tool\""},
		{name: "content not a string", input: `[{"role":"user","content":[1]}]`, err: "wrong type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseHistory(tt.input)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d messages, want %d", len(got), len(tt.want))
			}
			for i := range got {
				if got[i].Role != tt.want[i].Role || got[i].Content != tt.want[i].Content {
					t.Errorf("message %d: got %v, want %v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestApplyModelfile(t *testing.T) {
	req := &actors.ChatRequest{History: []*actors.Message{{Content: "hi"}}}
	err := applyModelfile(`[{"name":"system","args":"be brief"},{"name":"parameter","args":"temperature 0.2"},{"name":"template","args":"x"}]`, req)
	if err != nil {
		t.Fatal(err)
	}
	if req.History[0].Role != actors.Role_ROLE_SYSTEM || req.History[0].Content != "be brief" || len(req.History) != 2 {
		t.Fatalf("history %v", req.History)
	}
	if req.Params["temperature"] != "0.2" || req.Params["template"] != "x" {
		t.Fatalf("params %v", req.Params)
	}
	for _, bad := range []string{`{}`, `[{"args":"x"}]`, `[{"name":"parameter","args":""}]`, `[1]`} {
		if err := applyModelfile(bad, &actors.ChatRequest{}); err == nil {
			t.Errorf("modelfile %s: no error", bad)
		}
	}
}

// FuzzParseHistory: any input either parses into a history whose last
// message is not blank, or fails with a short human message; it never
// panics.
func FuzzParseHistory(f *testing.F) {
	for _, seed := range []string{
		`[{"msg":"hi","isbot":false}]`,
		`[{"role":"user","content":"鼠标"}]`,
		`[]`, `{}`, `[{"msg":null}]`, `[{"role":"user","content":"x"},{"msg":""}]`, "\xff",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		history, err := parseHistory(input)
		if err != nil {
			msg := err.Error()
			if len(msg) > 200 || !utf8.ValidString(msg) {
				t.Fatalf("error message not short and readable: %q", msg)
			}
			return
		}
		if len(history) == 0 || strings.TrimSpace(history[len(history)-1].Content) == "" {
			t.Fatalf("accepted %q with an empty last message", input)
		}
		if !json.Valid([]byte(input)) {
			t.Fatalf("accepted invalid JSON %q", input)
		}
	})
}

func FuzzParseChatCompletion(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"}]}]}`,
		`{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c","content":"x"}],"tools":[],"temperature":0.5,"stop":["a"]}`,
		`{}`, `[]`, `null`, `{"model":"m","messages":[{"role":"user"}]}`, "\xff", `{"model":"m","messages":[]} {}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		cr, req, err := parseChatCompletion([]byte(body))
		if err != nil {
			var re *requestError
			if !errors.As(err, &re) {
				t.Fatalf("error %v is not a requestError", err)
			}
			if msg := re.Error(); len(msg) > 300 || !utf8.ValidString(msg) {
				t.Fatalf("error message not short and readable: %q", msg)
			}
			return
		}
		if !json.Valid([]byte(body)) {
			t.Fatalf("accepted %q, which is not one JSON value", body)
		}
		if cr.Model == "" || req.Layout != cr.Model || len(req.History) == 0 || len(req.History) != len(cr.Messages) {
			t.Fatalf("accepted %q as %+v", body, req)
		}
		for k, v := range req.Params {
			if k == "" || v == "" {
				t.Fatalf("empty parameter %q=%q from %q", k, v, body)
			}
		}
	})
}
