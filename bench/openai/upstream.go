package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The upstream is a small, fast, deterministic OpenAI-compatible server:
// every streamed chat gets the same tokens (token i is " i"), one
// chat.completion.chunk event per token, each flushed on its own, in the
// wire format of OpenAI and vLLM:
//
//	data: {"id":"chatcmpl-…","object":"chat.completion.chunk","created":…,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}
//	data: {…"choices":[{"index":0,"delta":{"content":" 0"},"logprobs":null,"finish_reason":null}]}
//	…
//	data: {…"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}
//	data: {…"choices":[],"usage":{"prompt_tokens":…,"completion_tokens":N,"total_tokens":…}}
//	data: [DONE]
//
// (each event followed by a blank line; the usage event only when the
// request sets stream_options.include_usage). It runs as its own process,
// so that its CPU is not counted in a proxy's, and records when each client
// hung up before the end of its stream, for the cancel measurement.
//
// A chat's length and pace come from its last message, so that one
// process, and one proxy in front of it, serves every scenario: words
// n=TOKENS, d=DELAY (between two tokens) and p=PAUSE (after the first
// token only, instead of DELAY), durations in Go's form, override the
// -tokens and -delay flags. GET /hangups returns, as JSON, the wall-clock
// time (Unix nanoseconds) at which each stream cut short noticed its
// client had gone, keyed by the request's last message; GET /stats counts
// requests.

// upstreamOptions are the upstream subcommand's flags.
type upstreamOptions struct {
	addr   string
	tokens int
	delay  time.Duration
}

// maxUpstreamTokens bounds one answer: the cancel scenario's streams are
// long, but not endless.
const maxUpstreamTokens = 1_000_000

// maxHangups bounds the hang-ups kept; older ones are dropped.
const maxHangups = 100_000

func upstreamMain(args []string) error {
	var o upstreamOptions
	fs := flag.NewFlagSet("upstream", flag.ContinueOnError)
	fs.StringVar(&o.addr, "addr", "127.0.0.1:0", "the address to listen on")
	fs.IntVar(&o.tokens, "tokens", 256, "tokens per answer on /v1/chat/completions")
	fs.DurationVar(&o.delay, "delay", 0, "the pause between two tokens on /v1/chat/completions")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.tokens < 1 || o.tokens > maxUpstreamTokens || o.delay < 0 {
		return fmt.Errorf("-tokens must be from 1 to %d and -delay at least 0", maxUpstreamTokens)
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		return err
	}
	u := newUpstream(o.tokens, o.delay)
	srv := &http.Server{Handler: u, ReadHeaderTimeout: 10 * time.Second, ConnState: u.connState}
	fmt.Printf("upstream: serving on http://%s/v1\n", ln.Addr())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

type upstream struct {
	tokens int
	delay  time.Duration

	requests, completed, cut, conns atomic.Int64
	nextID                          atomic.Uint64

	mu      sync.Mutex
	hangups map[string]int64
}

func newUpstream(tokens int, delay time.Duration) *upstream {
	return &upstream{tokens: tokens, delay: delay, hangups: make(map[string]int64)}
}

// token returns token i's text: " i".
func token(i int) string { return " " + strconv.Itoa(i) }

// answerText is the whole answer of n tokens, as a client assembles it.
func answerText(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(token(i))
	}
	return b.String()
}

// shape is how an answer streams.
type shape struct {
	n     int           // tokens
	delay time.Duration // between two tokens
	pause time.Duration // between the first token and the second, if set
}

// words is how a chat's message asks for the shape.
func (s shape) words() string {
	w := fmt.Sprintf("n=%d d=%s", s.n, s.delay)
	if s.pause > 0 {
		w += " p=" + s.pause.String()
	}
	return w
}

// shapeOf reads the shape a message asks for, over the defaults.
func (u *upstream) shapeOf(msg string) (shape, error) {
	s := shape{n: u.tokens, delay: u.delay, pause: -1}
	for w := range strings.FieldsSeq(msg) {
		k, v, ok := strings.Cut(w, "=")
		if !ok {
			continue
		}
		var err error
		switch k {
		case "n":
			s.n, err = strconv.Atoi(v)
			if err == nil && (s.n < 1 || s.n > maxUpstreamTokens) {
				err = fmt.Errorf("from 1 to %d", maxUpstreamTokens)
			}
		case "d":
			s.delay, err = time.ParseDuration(v)
			if err == nil && s.delay < 0 {
				err = errors.New("negative")
			}
		case "p":
			s.pause, err = time.ParseDuration(v)
			if err == nil && s.pause < 0 {
				err = errors.New("negative")
			}
		}
		if err != nil {
			return s, fmt.Errorf("%s: %v", w, err)
		}
	}
	if s.pause < 0 {
		s.pause = s.delay
	}
	return s, nil
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/hangups":
		u.mu.Lock()
		b, _ := json.Marshal(u.hangups)
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(b)
	case r.Method == http.MethodGet && r.URL.Path == "/stats":
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(upstreamStats{u.requests.Load(), u.completed.Load(), u.cut.Load(), u.conns.Load()})
	case r.URL.Path == "/v1/chat/completions":
		if r.Method != http.MethodPost {
			openaiError(w, http.StatusMethodNotAllowed, "send chats with POST")
			return
		}
		u.chat(w, r)
	default:
		openaiError(w, http.StatusNotFound, "not found")
	}
}

type upstreamStats struct {
	Requests  int64 `json:"requests"`
	Completed int64 `json:"completed"`
	Cut       int64 `json:"cut"`
	Conns     int64 `json:"conns"` // connections accepted
}

func (u *upstream) connState(_ net.Conn, st http.ConnState) {
	if st == http.StateNew {
		u.conns.Add(1)
	}
}

func openaiError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": map[string]any{"message": msg, "type": "invalid_request_error", "param": nil, "code": nil}})
}

type chatRequest struct {
	Model    string `json:"model"`
	Messages []struct {
		Role    string          `json:"role"`
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Stream        bool `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
}

func (u *upstream) chat(w http.ResponseWriter, r *http.Request) {
	u.requests.Add(1)
	var req chatRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		openaiError(w, http.StatusBadRequest, "the body is not a chat completion request: "+err.Error())
		return
	}
	if !req.Stream {
		openaiError(w, http.StatusBadRequest, "this server only streams: set \"stream\": true")
		return
	}
	if len(req.Messages) == 0 || req.Model == "" {
		openaiError(w, http.StatusBadRequest, "model and messages are required")
		return
	}
	var key string
	last := req.Messages[len(req.Messages)-1].Content
	if err := json.Unmarshal(last, &key); err != nil {
		key = string(last)
	}
	sh, err := u.shapeOf(key)
	if err != nil {
		openaiError(w, http.StatusBadRequest, err.Error())
		return
	}
	// Reading the body to its end starts net/http's background read of the
	// connection, which cancels the request's context as soon as the
	// client hangs up.
	_, _ = io.Copy(io.Discard, r.Body)
	ctx := r.Context()
	cut := func() {
		at := time.Now().UnixNano()
		u.cut.Add(1)
		u.mu.Lock()
		if len(u.hangups) >= maxHangups {
			clear(u.hangups)
		}
		u.hangups[key] = at
		u.mu.Unlock()
	}

	flusher, _ := w.(http.Flusher)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)

	// Every event of the answer starts the same way.
	id := u.nextID.Add(1)
	modelJSON, _ := json.Marshal(req.Model)
	head := fmt.Appendf(nil, `data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","created":%d,"model":%s,`, id, time.Now().Unix(), modelJSON)
	buf := make([]byte, 0, 512)
	send := func(rest string) bool {
		buf = append(append(append(buf[:0], head...), rest...), "\n\n"...)
		if _, err := w.Write(buf); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return ctx.Err() == nil
	}
	if !send(`"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}`) {
		cut()
		return
	}
	var timer *time.Timer
	if sh.delay > 0 || sh.pause > 0 {
		timer = time.NewTimer(time.Hour)
		timer.Stop()
		defer timer.Stop()
	}
	for i := range sh.n {
		wait := sh.delay
		if i == 1 {
			wait = sh.pause
		}
		if i > 0 && wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				cut()
				return
			case <-timer.C:
			}
		}
		if !send(`"choices":[{"index":0,"delta":{"content":"` + token(i) + `"},"logprobs":null,"finish_reason":null}]}`) {
			cut()
			return
		}
	}
	if !send(`"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}`) {
		cut()
		return
	}
	if req.StreamOptions != nil && req.StreamOptions.IncludeUsage {
		prompt := 0
		for _, m := range req.Messages {
			prompt += 4 + len(m.Content)/4
		}
		if !send(fmt.Sprintf(`"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}`, prompt, sh.n, prompt+sh.n)) {
			cut()
			return
		}
	}
	if _, err := io.WriteString(w, "data: [DONE]\n\n"); err != nil {
		cut()
		return
	}
	u.completed.Add(1)
}

// fetchJSON GETs url and decodes its JSON answer into v.
func fetchJSON(url string, v any) error {
	resp, err := scrapeClient.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

var scrapeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// hangups fetches the upstream's record of streams cut short.
func hangups(base string) (map[string]int64, error) {
	var m map[string]int64
	err := fetchJSON(base+"/hangups", &m)
	return m, err
}

func stats(base string) (upstreamStats, error) {
	var s upstreamStats
	err := fetchJSON(base+"/stats", &s)
	return s, err
}
