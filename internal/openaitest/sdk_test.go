package openaitest

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
)

// The answers must be what the official SDK decodes: its streaming
// decoder (packages/ssestream), its accumulator and its error type.

func sdkClient(t *testing.T, s *Server, retries int) openai.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return openai.NewClient(
		option.WithBaseURL(s.URL),
		option.WithAPIKey("sk-test"),
		option.WithMaxRetries(retries),
		option.WithHTTPClient(&http.Client{Transport: tr}),
	)
}

func sdkParams(includeUsage bool) openai.ChatCompletionNewParams {
	p := openai.ChatCompletionNewParams{
		Model:    "test-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")},
	}
	if includeUsage {
		p.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	}
	return p
}

// accumulate reads a whole stream.
func accumulate(t *testing.T, c openai.Client, ctx context.Context, includeUsage bool) (openai.ChatCompletion, error) {
	t.Helper()
	st := c.Chat.Completions.NewStreaming(ctx, sdkParams(includeUsage))
	defer st.Close()
	var acc openai.ChatCompletionAccumulator
	for st.Next() {
		if !acc.AddChunk(st.Current()) {
			t.Fatalf("the accumulator refused chunk %s", st.Current().RawJSON())
		}
	}
	return acc.ChatCompletion, st.Err()
}

func TestSDKStreaming(t *testing.T) {
	for _, d := range dialects {
		for _, variant := range []string{"plain", "split+comments"} {
			t.Run(d.String()+"/"+variant, func(t *testing.T) {
				r := Response{
					Dialect: d, Chunks: []string{"Hello", " <wörld>", " \U0001F600"},
					ToolCalls: []ToolCall{{Name: "get_weather", Arguments: []string{`{"city":`, `"Paris"}`}}},
					Usage:     &Usage{PromptTokens: 12, CompletionTokens: 5},
				}
				if variant != "plain" {
					r.SplitEvents, r.Comments = true, true
				}
				s := New(t, r)
				got, err := accumulate(t, sdkClient(t, s, 0), context.Background(), true)
				if err != nil {
					t.Fatal(err)
				}
				if len(got.Choices) != 1 {
					t.Fatalf("choices %d", len(got.Choices))
				}
				ch := got.Choices[0]
				if ch.Message.Content != "Hello <wörld> \U0001F600" || ch.FinishReason != "tool_calls" {
					t.Errorf("content %q finish %q", ch.Message.Content, ch.FinishReason)
				}
				if len(ch.Message.ToolCalls) != 1 || ch.Message.ToolCalls[0].Function.Name != "get_weather" ||
					ch.Message.ToolCalls[0].Function.Arguments != `{"city":"Paris"}` || ch.Message.ToolCalls[0].ID == "" {
					t.Errorf("tool calls %+v", ch.Message.ToolCalls)
				}
				if got.Usage.PromptTokens != 12 || got.Usage.CompletionTokens != 5 || got.Usage.TotalTokens != 17 {
					t.Errorf("usage %+v", got.Usage)
				}
				if got.Model != "test-model" {
					t.Errorf("model %q", got.Model)
				}
				req := s.WaitClosed(t, 0, waitBudget)
				if !req.Stream || !req.IncludeUsage || req.Header.Get("Authorization") != "Bearer sk-test" || req.HungUp {
					t.Errorf("request stream %v usage %v auth %q hung up %v", req.Stream, req.IncludeUsage, req.Header.Get("Authorization"), req.HungUp)
				}
			})
		}
	}
}

func TestSDKNonStreaming(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := New(t, Response{Dialect: d, Chunks: []string{"Hello", " there"}, Usage: &Usage{PromptTokens: 4, CompletionTokens: 2}})
			c := sdkClient(t, s, 0)
			got, err := c.Chat.Completions.New(context.Background(), sdkParams(false))
			if err != nil {
				t.Fatal(err)
			}
			if got.Choices[0].Message.Content != "Hello there" || got.Choices[0].FinishReason != "stop" || got.Usage.TotalTokens != 6 {
				t.Errorf("answer %s", got.RawJSON())
			}
		})
	}
}

func TestSDKMidStreamError(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := New(t, Response{Dialect: d, Chunks: []string{"a", "b", "c"}, StreamError: &APIError{Message: "model crashed"}, ErrorAfter: 2})
			got, err := accumulate(t, sdkClient(t, s, 0), context.Background(), true)
			var streamErr *ssestream.StreamError
			switch d {
			case Ollama:
				// No error event: the stream just stops short of a finish.
				if err != nil {
					t.Errorf("error %v", err)
				}
			default:
				if !errors.As(err, &streamErr) {
					t.Fatalf("error %T %v, want a stream error", err, err)
				}
			}
			if len(got.Choices) != 1 || got.Choices[0].Message.Content != "ab" || got.Choices[0].FinishReason != "" {
				t.Errorf("accumulated %+v", got.Choices)
			}
		})
	}
}

func TestSDKErrorAnswers(t *testing.T) {
	for _, d := range dialects {
		t.Run(d.String(), func(t *testing.T) {
			s := New(t, Response{Dialect: d, Status: 429, Header: map[string]string{"Retry-After": "7"}})
			c := sdkClient(t, s, 0)
			_, err := c.Chat.Completions.New(context.Background(), sdkParams(false))
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %T %v", err, err)
			}
			if apiErr.StatusCode != 429 || apiErr.Message == "" || apiErr.Response.Header.Get("Retry-After") != "7" {
				t.Errorf("status %d message %q retry-after %q", apiErr.StatusCode, apiErr.Message, apiErr.Response.Header.Get("Retry-After"))
			}
		})
	}
	t.Run("retried", func(t *testing.T) {
		s := New(t, Response{Status: 503, Header: map[string]string{"Retry-After-Ms": "1"}}, Response{Chunks: []string{"ok"}})
		c := sdkClient(t, s, 1)
		got, err := c.Chat.Completions.New(context.Background(), sdkParams(false))
		if err != nil || got.Choices[0].Message.Content != "ok" {
			t.Fatalf("answer %v %v", got, err)
		}
		if n := len(s.Requests()); n != 2 {
			t.Errorf("%d requests", n)
		}
	})
}

func TestSDKCancelWhileHanging(t *testing.T) {
	s := New(t, Response{Chunks: []string{"a", "b"}, Hang: true, HangAfter: 1})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := sdkClient(t, s, 0)
	st := c.Chat.Completions.NewStreaming(ctx, sdkParams(true))
	defer st.Close()
	for st.Next() {
		if c := st.Current(); len(c.Choices) > 0 && c.Choices[0].Delta.Content == "a" {
			break
		}
	}
	cancelled := time.Now()
	cancel()
	if st.Next() {
		t.Error("a chunk after the hang")
	}
	req := s.WaitClosed(t, 0, waitBudget)
	if !req.HungUp || req.Closed.Sub(cancelled) > 2*time.Second {
		t.Errorf("hung up %v, closed %v after the cancel", req.HungUp, req.Closed.Sub(cancelled))
	}
}
