package ollamatest_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/internal/ollamatest"
)

const chatPath = "/v1/chat/completions"

// chatBody is a chat request for the tiny model. Temperature 1 with a seed:
// greedy decoding of random weights loops on one token, which Ollama cuts
// short; sampling with a seed gives the same answer on every run.
func chatBody(t *testing.T, s *ollamatest.Server, prompt string, maxTokens int, stream bool) []byte {
	t.Helper()
	b, err := json.Marshal(map[string]any{
		"model":       s.Model,
		"messages":    []map[string]string{{"role": "user", "content": prompt}},
		"temperature": 1,
		"seed":        42,
		"max_tokens":  maxTokens,
		"stream":      stream,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func post(ctx context.Context, t *testing.T, url string, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("POST %s: %s: %s", url, resp.Status, b)
	}
	return resp
}

// sse reads a stream of chat completion chunks.
type sse struct {
	sc   *bufio.Scanner
	done bool // "data: [DONE]" was read
}

func newSSE(r io.Reader) *sse {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &sse{sc: sc}
}

// next returns the content of the next chunk with any, or false at the end
// of the stream.
func (e *sse) next(t *testing.T) (string, bool) {
	t.Helper()
	for e.sc.Scan() {
		line := e.sc.Text()
		data, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			if line != "" {
				t.Fatalf("unexpected line in stream: %q", line)
			}
			continue
		}
		if e.done {
			t.Fatalf("data after [DONE]: %q", line)
		}
		if data == "[DONE]" {
			e.done = true
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data), &chunk); err != nil {
			t.Fatalf("chunk %q: %v", data, err)
		}
		if len(chunk.Choices) == 1 && chunk.Choices[0].Delta.Content != "" {
			return chunk.Choices[0].Delta.Content, true
		}
	}
	return "", false
}

func printableASCII(s string) bool {
	for i := range len(s) {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// TestStreamIsReproducible asks the same question twice, streaming, and
// gets the same answer byte for byte: tests of code in front of Ollama can
// compare answers exactly.
func TestStreamIsReproducible(t *testing.T) {
	start := time.Now()
	s := ollamatest.Start(t)
	t.Logf("Start took %v", time.Since(start).Round(time.Millisecond))
	if !strings.HasPrefix(s.BaseURL, "http://127.0.0.1:") || !strings.HasSuffix(s.BaseURL, "/v1") {
		t.Errorf("BaseURL = %q", s.BaseURL)
	}

	const maxTokens = 64
	var answers []string
	for range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		resp := post(ctx, t, s.BaseURL+"/chat/completions", chatBody(t, s, "Tell me a story.", maxTokens, true))
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
			t.Errorf("Content-Type = %q, want text/event-stream", ct)
		}
		e := newSSE(resp.Body)
		var answer strings.Builder
		for {
			c, ok := e.next(t)
			if !ok {
				break
			}
			answer.WriteString(c)
		}
		err := e.sc.Err()
		resp.Body.Close()
		cancel()
		if err != nil {
			t.Fatalf("reading the stream: %v", err)
		}
		if !e.done {
			t.Errorf("stream did not end with data: [DONE]")
		}
		a := answer.String()
		// One byte per token, and no </s>: the answer runs to max_tokens.
		if len(a) != maxTokens {
			t.Errorf("answer is %d bytes, want %d: %q", len(a), maxTokens, a)
		}
		if !printableASCII(a) {
			t.Errorf("answer is not printable ASCII: %q", a)
		}
		answers = append(answers, a)
	}
	if answers[0] != answers[1] {
		t.Errorf("answers differ:\n%q\n%q", answers[0], answers[1])
	}
	t.Logf("answer: %q", answers[0])

	// Throughput over a longer answer, with Ollama's count of tokens (the
	// arrival of chunks says little: the client reads them in bursts).
	const long = 1000
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	begin := time.Now()
	resp := post(ctx, t, s.BaseURL+"/chat/completions", chatBody(t, s, "Tell me a long story.", long, false))
	var out struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		} `json:"usage"`
	}
	err := json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	elapsed := time.Since(begin)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Choices) != 1 || len(out.Choices[0].Message.Content) != long ||
		out.Usage.CompletionTokens != long || out.Choices[0].FinishReason != "length" {
		t.Errorf("long answer: %d choices, usage %d tokens, want %d bytes ending for length", len(out.Choices), out.Usage.CompletionTokens, long)
	}
	t.Logf("generated %d tokens in %v: %.0f tokens/s", out.Usage.CompletionTokens, elapsed.Round(time.Millisecond), float64(out.Usage.CompletionTokens)/elapsed.Seconds())

	rs := s.WaitRequestLog(t, chatPath, 3, 10*time.Second)
	if len(rs) != 3 {
		t.Errorf("%d requests to %s logged, want 3", len(rs), chatPath)
	}
	for _, r := range rs {
		if r.Status != http.StatusOK || r.Method != http.MethodPost {
			t.Errorf("logged %s %d, want POST 200: %s", r.Method, r.Status, r.Line)
		}
	}
}

// TestHangUpStopsGeneration checks that a client hanging up mid-stream
// makes Ollama stop generating: its request log shows the request ending
// right after the hang-up, not after the 100,000 tokens asked for.
func TestHangUpStopsGeneration(t *testing.T) {
	s := ollamatest.Start(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sent := time.Now()
	resp := post(ctx, t, s.BaseURL+"/chat/completions", chatBody(t, s, "Never stop.", 100000, true))
	e := newSSE(resp.Body)
	for range 16 {
		if _, ok := e.next(t); !ok {
			t.Fatalf("stream ended early (err %v)", e.sc.Err())
		}
	}
	cancel()
	resp.Body.Close()
	hungUp := time.Since(sent)

	rs := s.WaitRequestLog(t, chatPath, 1, 30*time.Second)
	r := rs[0]
	// The whole answer would take 50 s or more (at 2,000 tokens/s at
	// most).
	t.Logf("hung up after %v; Ollama logged the request as taking %v",
		hungUp.Round(time.Millisecond), r.Duration)
	if limit := hungUp + 5*time.Second; r.Duration > limit {
		t.Errorf("request took %v, want under %v: generation went on after the hang-up", r.Duration, limit)
	}
}

func TestParseRequestLogLine(t *testing.T) {
	for _, tc := range []struct {
		line   string
		status int
		d      time.Duration
		method string
		path   string
	}{
		{`[GIN] 2026/12/01 - 21:00:00 | 200 |  1.234567ms |       127.0.0.1 | POST     "/v1/chat/completions"`, 200, 1234567 * time.Nanosecond, "POST", "/v1/chat/completions"},
		{`[GIN] 2026/12/01 - 21:00:00 | 200 |     812.4µs |       127.0.0.1 | GET      "/api/version"`, 200, 812400 * time.Nanosecond, "GET", "/api/version"},
		{`[GIN] 2026/12/01 - 21:00:00 | 500 |  2.5s |       127.0.0.1 | POST     "/v1/chat/completions?x=1"`, 500, 2500 * time.Millisecond, "POST", "/v1/chat/completions"},
		{`[GIN] 2026/12/01 - 21:00:00 | 200 |        1m2s |             ::1 | POST     "/api/chat"`, 200, 62 * time.Second, "POST", "/api/chat"},
	} {
		r, ok := ollamatest.ParseRequestLogLine(tc.line)
		if !ok {
			t.Errorf("ParseRequestLogLine(%q) failed", tc.line)
			continue
		}
		if r.Status != tc.status || r.Duration != tc.d || r.Method != tc.method || r.Path != tc.path {
			t.Errorf("ParseRequestLogLine(%q) = %+v", tc.line, r)
		}
		if want := time.Date(2026, 12, 1, 21, 0, 0, 0, time.Local); !r.Time.Equal(want) {
			t.Errorf("time = %v, want %v", r.Time, want)
		}
	}
	for _, line := range []string{"", "[GIN-debug] POST /api/chat", `time=2026-12-01T21:23:17.020Z level=INFO msg="x"`} {
		if r, ok := ollamatest.ParseRequestLogLine(line); ok {
			t.Errorf("ParseRequestLogLine(%q) = %+v, want no match", line, r)
		}
	}
}

// TestWriteModel checks that the model file is small and the same on
// every call.
func TestWriteModel(t *testing.T) {
	dir := t.TempDir()
	var files [][]byte
	for _, name := range []string{"a.gguf", "b.gguf"} {
		p := filepath.Join(dir, name)
		if err := ollamatest.WriteModel(p); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, b)
	}
	if !bytes.Equal(files[0], files[1]) {
		t.Error("WriteModel wrote different files")
	}
	if !bytes.HasPrefix(files[0], []byte("GGUF\x03\x00\x00\x00")) {
		t.Errorf("file starts %q, want GGUF v3", files[0][:8])
	}
	if n := len(files[0]); n > 512<<10 {
		t.Errorf("model is %d bytes, want under 512 KiB", n)
	}
	t.Logf("model: %d bytes", len(files[0]))
}
