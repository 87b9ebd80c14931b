package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/troupe-llm/troupe/internal/ollamatest"
)

// A real inference server behind a real node: Ollama (llama.cpp inside)
// with a tiny model, behind the openai kind, called with the official SDK.
// With a seed the server's answer is the same every time, so what Troupe
// relays must equal what the server gives when asked directly, byte for
// byte, on every API the node has.
func TestOllamaBehindTroupe(t *testing.T) {
	srv := ollamatest.Start(t)
	layoutFile := filepath.Join(t.TempDir(), "ollama.yaml")
	layoutYAML := fmt.Sprintf("version: 1\nllm:\n  class: openai\n  args: {base_url: %q, model: %q, concurrency: 4}\n", srv.BaseURL, srv.Model)
	if err := os.WriteFile(layoutFile, []byte(layoutYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	node := startProcess(t, nodeEnv(nil, "LAYOUT_CONFIG", layoutFile, "LLM_NAME", "tiny-llm"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	direct := openai.NewClient(option.WithBaseURL(srv.BaseURL+"/"), option.WithAPIKey("ollama"), option.WithMaxRetries(0))
	troupe := openai.NewClient(option.WithBaseURL(node.url("/v1/")), option.WithAPIKey("none"), option.WithMaxRetries(0))
	params := func(model string) openai.ChatCompletionNewParams {
		return openai.ChatCompletionNewParams{
			Model:         model,
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Tell me a story.")},
			Temperature:   openai.Float(1),
			Seed:          openai.Int(42),
			MaxTokens:     openai.Int(96),
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		}
	}
	stream := func(c openai.Client, model string) (string, openai.CompletionUsage, int) {
		t.Helper()
		s := c.Chat.Completions.NewStreaming(ctx, params(model))
		var acc openai.ChatCompletionAccumulator
		deltas := 0
		for s.Next() {
			chunk := s.Current()
			acc.AddChunk(chunk)
			if len(chunk.Choices) > 0 && chunk.Choices[0].Delta.Content != "" {
				deltas++
			}
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		return acc.Choices[0].Message.Content, acc.Usage, deltas
	}

	want, wantUsage, _ := stream(direct, srv.Model)
	if len(want) < 50 {
		t.Fatalf("the server's own answer is too short to compare: %q", want)
	}
	if again, _, _ := stream(direct, srv.Model); again != want {
		t.Fatalf("the server is not deterministic with a seed:\n%q\n%q", want, again)
	}

	got, usage, deltas := stream(troupe, "tiny-llm")
	if got != want {
		t.Errorf("streamed through Troupe:\n%q\nwant the server's\n%q", got, want)
	}
	if deltas < 10 {
		t.Errorf("the answer came in %d deltas: it was not streamed token by token", deltas)
	}
	if usage.PromptTokens != wantUsage.PromptTokens || usage.CompletionTokens != wantUsage.CompletionTokens {
		t.Errorf("usage through Troupe %+v, the server's %+v", usage, wantUsage)
	}

	whole, err := troupe.Chat.Completions.New(ctx, params("tiny-llm"))
	if err != nil {
		t.Fatal(err)
	}
	if whole.Choices[0].Message.Content != want || whole.Choices[0].FinishReason != "length" {
		t.Errorf("whole answer through Troupe %q (finish %q), want the server's", whole.Choices[0].Message.Content, whole.Choices[0].FinishReason)
	}

	// The Agent's API, with the parameters in a Kuwa modelfile.
	modelfile := `[{"name":"parameter","args":"temperature 1"},{"name":"parameter","args":"seed 42"},{"name":"parameter","args":"max_tokens 96"}]`
	status, body := node.post(t, "/v1/completion", url.Values{
		"input": {`[{"msg":"Tell me a story.","isbot":false}]`}, "name": {"tiny-llm"}, "modelfile": {modelfile}})
	if status != 200 || body != want {
		t.Errorf("through the Agent's API: status %d\n%q\nwant the server's\n%q", status, body, want)
	}

	if n := node.metric(t, `troupe_chat_tokens_total{kind="completion",layout="tiny-llm"}`); n != 3*float64(wantUsage.CompletionTokens) {
		t.Errorf("completion tokens counted %v, want %d", n, 3*wantUsage.CompletionTokens)
	}
}

// A client that hangs up ends the server's generation: Ollama logs the
// request as finished long before a full answer could have been made.
func TestOllamaHangUpStopsGeneration(t *testing.T) {
	srv := ollamatest.Start(t)
	layoutFile := filepath.Join(t.TempDir(), "ollama.yaml")
	layoutYAML := fmt.Sprintf("version: 1\nllm:\n  class: openai\n  args: {base_url: %q, model: %q}\n", srv.BaseURL, srv.Model)
	if err := os.WriteFile(layoutFile, []byte(layoutYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	node := startProcess(t, nodeEnv(nil, "LAYOUT_CONFIG", layoutFile, "LLM_NAME", "tiny-llm"))

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := openai.NewClient(option.WithBaseURL(node.url("/v1/")), option.WithAPIKey("none"), option.WithMaxRetries(0))
	// 30,000 tokens take the server tens of seconds on this machine.
	sent := time.Now()
	s := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:       "tiny-llm",
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Go on forever.")},
		Temperature: openai.Float(1),
		Seed:        openai.Int(7),
		MaxTokens:   openai.Int(30000),
	})
	for s.Next() {
		if c := s.Current(); len(c.Choices) > 0 && c.Choices[0].Delta.Content != "" {
			break
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	hungUp := time.Now()
	cancel()
	_ = s.Close()

	lines := srv.WaitRequestLog(t, "/v1/chat/completions", 1, 20*time.Second)
	took := lines[0].Duration
	t.Logf("Ollama's request took %v in all (the client hung up %v after sending it)", took, hungUp.Sub(sent))
	if took > 5*time.Second {
		t.Fatalf("the server generated for %v after a hang-up: the upstream request was not closed", took)
	}
	waitFor(t, func() bool {
		return node.metric(t, `troupe_model_cancel_seconds_count{actor="model/openai",layout="tiny-llm"}`) == 1
	}, "the cancel observed in troupe_model_cancel_seconds")
}
