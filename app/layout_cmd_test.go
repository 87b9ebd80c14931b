package app

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/troupe-llm/troupe/actors/command"
	_ "github.com/troupe-llm/troupe/actors/dummy"
	_ "github.com/troupe-llm/troupe/actors/kuwa"
	_ "github.com/troupe-llm/troupe/actors/openai"
	_ "github.com/troupe-llm/troupe/actors/opencc"
	_ "github.com/troupe-llm/troupe/actors/reflect"
)

// `troupe layout check` reports every mistake at once with its place and
// fails; a good file lists its layouts. `troupe layout graph` draws it.
func TestLayoutCommands(t *testing.T) {
	bad := writeFile(t, "version: 2\nlayouts:\n  a: {model: gpt9}\n  b: {route: [{when: {last_message: \"(\"}, then: {model: reflect}}]}\n  c: {layout: c}\n")
	tests := []struct {
		name    string
		args    []string
		wantErr error
		stdout  []string
		stderr  []string
	}{
		{"check good", []string{"layout", "check", "../examples/local-trees.yaml"}, nil,
			[]string{"layout echo: 64 chats at once", "layout replicas: 24 chats at once"}, nil},
		{"check version 1", []string{"layout", "check", "../examples/layout.yaml"}, nil, []string{"layout Unnamed_LLM: 64 chats at once"}, nil},
		{"check bad", []string{"layout", "check", bad}, errLayoutInvalid, nil,
			[]string{bad + ":3:14: unknown kind: model \"gpt9\"", bad + ":4:37: last_message: not a valid regular expression", bad + ":5:15: layouts refer to each other in a cycle: c → c"}},
		{"check missing", []string{"layout", "check", "/nonexistent.yaml"}, errLayoutInvalid, nil, []string{"no such file"}},
		{"graph dot", []string{"layout", "graph", "../examples/trees.yaml"}, nil, []string{"digraph layouts {", `"pool × 4"`}, nil},
		{"graph mermaid", []string{"layout", "graph", "--format", "mermaid", "../examples/trees.yaml"}, nil, []string{"flowchart LR", `"fanout (first)"`}, nil},
		{"graph bad format", []string{"layout", "graph", "--format", "png", "../examples/trees.yaml"}, errors.New("unknown graph format"), nil, nil},
		{"no file", []string{"layout", "check"}, errors.New("usage"), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := Run(context.Background(), tt.args, func(string) string { return "" }, &stdout, &stderr)
			switch {
			case tt.wantErr == nil && err != nil:
				t.Fatalf("err %v; stderr %s", err, stderr.String())
			case tt.wantErr != nil && (err == nil || !strings.Contains(err.Error(), tt.wantErr.Error())):
				t.Fatalf("err %v, want %v", err, tt.wantErr)
			}
			for _, w := range tt.stdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, stdout.String())
				}
			}
			for _, w := range tt.stderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
				}
			}
		})
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "layout.yaml")
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
