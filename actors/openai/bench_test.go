package openai

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"testing"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/internal/openaitest"
)

// recordedStream is the body of a streamed answer of n content deltas as
// the fake upstream writes it in dialect d, with the usage chunk.
func recordedStream(tb testing.TB, d openaitest.Dialect, n int) []byte {
	tb.Helper()
	chunks := make([]string, n)
	for i := range chunks {
		chunks[i] = fmt.Sprintf(" tok%d", i)
	}
	chunks[0] = `"Hello" <wörld> \u00e9`
	s := openaitest.New(tb, openaitest.Response{Dialect: d, Chunks: chunks, Usage: &openaitest.Usage{PromptTokens: 12, CompletionTokens: n}})
	return post(tb, s.URL, `{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}`)
}

// replay answers every request with the same recorded stream, in memory.
type replay struct{ body []byte }

func (r replay) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_, _ = io.Copy(io.Discard, req.Body)
		_ = req.Body.Close()
	}
	return &http.Response{
		Status: "200 OK", StatusCode: 200, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"text/event-stream; charset=utf-8"}},
		Body:          io.NopCloser(bytes.NewReader(r.body)),
		ContentLength: -1,
		Request:       req,
	}, nil
}

// BenchmarkGenerate is one whole chat through Generate against an
// in-memory upstream: the request built and sent, a stream of n content
// deltas decoded and emitted, the usage and finish read. No network, so
// what it measures is the kind's own CPU and allocations.
func BenchmarkGenerate(b *testing.B) {
	for _, d := range []openaitest.Dialect{openaitest.OpenAI, openaitest.Ollama} {
		for _, n := range []int{1, 256} {
			b.Run(fmt.Sprintf("%s/events=%d", d, n), func(b *testing.B) {
				body := recordedStream(b, d, n)
				m := newModel(b, "http://upstream.invalid/v1", actors.Args{"temperature": 0.7, "max_tokens": 512})
				m.transport.RegisterProtocol("http", replay{body: body})
				req := &actors.ChatRequest{ChatId: "c1", History: []*actors.Message{
					{Role: actors.Role_ROLE_SYSTEM, Content: "You are a helpful assistant."},
					{Role: actors.Role_ROLE_USER, Content: "Tell me a story about <b>bold</b> \"quotes\"."},
				}, Params: map[string]string{"temperature": "0.5"}}
				ctx := context.Background()
				var emitted int
				emit := func(s string) error { emitted++; return nil }
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					if err := m.Generate(ctx, req, emit); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				if emitted != b.N*n {
					b.Fatalf("%d emits over %d chats of %d deltas", emitted, b.N, n)
				}
				events := bytes.Count(body, []byte("\ndata:")) + 1
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*events), "ns/event")
			})
		}
	}
}
