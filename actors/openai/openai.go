// Package openai is the openai model kind: Troupe's model for any server that
// speaks OpenAI's chat completions API (vLLM, llama.cpp's llama-server,
// Ollama, TGI, hosted APIs). It streams each answer with Server-Sent Events,
// forwards content, tool-call deltas, token usage and the finish reason, and
// turns upstream failures into *actors.Error values the gateway can act on.
//
// The client is written here, not taken from the official SDK
// (github.com/openai/openai-go/v3): the request body is written field by
// field, sent with net/http, and the stream read by a small SSE reader
// (sse.go) and a decoder of the few fields the kind uses (chunk.go). The
// SDK decoded every event by reflection into its full types, which was
// three quarters of a node's CPU under load (about 20 µs an event, where
// the decoder here takes under 1), spent about a tenth of a millisecond
// building and sending each request, and added 20 MB to the binary; see
// bench/openai for the numbers before and after.
//
// It does its own retries: only before the first token, only for failures
// that may pass (a refused or broken connection, 429, 5xx), with capped,
// jittered exponential backoff that honours Retry-After and never outlives
// the chat's context. Once a token has reached the user
// a failure ends the chat: a retry would repeat or contradict what they
// already read.
//
// Every chat's upstream request lives in the chat's context, so a cancel
// closes the request's connection at once and the server stops generating.
// Three timeouts bound what the context does not: connect_timeout (dialling),
// first_token_timeout (from sending the request to the first delta) and
// idle_timeout (silence between events once the answer flows).
//
// The API key is read at New (from api_key_env or api_key_file) and sent
// only as the Authorization header: it is in no error, log line or
// formatted value of the model.
package openai

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Defaults of the arguments; each is documented on its field of Args.
const (
	DefaultConcurrency       = 8
	DefaultRetries           = 2
	DefaultConnectTimeout    = 5 * time.Second
	DefaultFirstTokenTimeout = 60 * time.Second
	DefaultIdleTimeout       = 30 * time.Second
)

// maxRetries bounds the retries argument: beyond a few attempts a failing
// upstream is down, and the gateway can try another node sooner.
const maxRetries = 10

// Args are the openai model's layout arguments.
type Args struct {
	// BaseURL is the root of the server's OpenAI API, the part before
	// /chat/completions: "http://127.0.0.1:8000/v1" for vLLM,
	// "http://127.0.0.1:11434/v1" for Ollama. Required; http or https.
	BaseURL string `json:"base_url"`
	// Model is the model name the server serves, sent as "model". Required.
	Model string `json:"model"`
	// APIKeyEnv names an environment variable holding the API key.
	APIKeyEnv string `json:"api_key_env"`
	// APIKeyFile is a file holding the API key (surrounding whitespace is
	// trimmed), such as a mounted secret. At most one of APIKeyEnv and
	// APIKeyFile; with neither, no Authorization header is sent.
	APIKeyFile string `json:"api_key_file"`

	// Sampling defaults, sent only when set; a chat's parameters of the
	// same names override them.
	Temperature *float64 `json:"temperature"`
	TopP        *float64 `json:"top_p"`
	MaxTokens   *int64   `json:"max_tokens"`
	Seed        *int64   `json:"seed"`
	// Stop is one stop sequence or a list of them.
	Stop Stop `json:"stop"`
	// Extra are more fields of the request body, sent byte for byte, for
	// what a server has beyond the arguments above (vLLM's top_k or
	// chat_template_kwargs, "stream_options": null for a server that
	// rejects stream_options). A chat's tools, tool_choice and
	// response_format override the same keys here.
	Extra map[string]json.RawMessage `json:"extra"`

	// Concurrency is how many chats one instance sends upstream at once:
	// the server's parallel slots (vLLM's max_num_seqs, llama-server's
	// --parallel, OLLAMA_NUM_PARALLEL). 0 is DefaultConcurrency (8). The
	// layout's concurrency key, next to class, overrides it.
	Concurrency int `json:"concurrency"`
	// Retries is how many times a chat's request is sent again after a
	// failure that may pass, before its first token; 0 sends it once.
	// Unset is DefaultRetries (2), that is up to 3 attempts.
	Retries *int `json:"retries"`

	// ConnectTimeout bounds dialling the server (TCP, and the TLS
	// handshake for https), as a Go duration. Default 5s.
	ConnectTimeout string `json:"connect_timeout"`
	// FirstTokenTimeout bounds the wait from sending a request to the
	// first delta of the answer: queueing and prompt processing. Default
	// 60s; "0" waits as long as the chat may.
	FirstTokenTimeout string `json:"first_token_timeout"`
	// IdleTimeout bounds the silence between two events once the answer
	// flows. Default 30s; "0" waits as long as the chat may.
	IdleTimeout string `json:"idle_timeout"`
}

// Stop is one stop sequence or a list of them: in a layout,
// `stop: "###"` or `stop: ["###", "User:"]`.
type Stop []string

// UnmarshalJSON accepts a string or a list of strings.
func (s *Stop) UnmarshalJSON(data []byte) error {
	var one string
	if err := json.Unmarshal(data, &one); err == nil {
		*s = Stop{one}
		return nil
	}
	var list []string
	if err := json.Unmarshal(data, &list); err != nil {
		return errors.New("stop: want a string or a list of strings")
	}
	*s = list
	return nil
}

// Model is an openai model instance: one HTTP client whose connections its
// chats share.
type Model struct {
	baseURL  string // as given, for String
	endpoint string // base_url's /chat/completions
	model    string
	// key is behind a pointer so that even a Model printed field by
	// field (fmt cannot call methods on unexported fields) shows an
	// address, not the key.
	key *secret

	defaults sampling
	extra    []extraField
	// extraStreamOptions is set when extra has stream_options, which
	// then replaces the kind's {"include_usage":true}.
	extraStreamOptions bool
	concurrency        int
	retries            int
	firstTokenTimeout  time.Duration
	idleTimeout        time.Duration

	transport *http.Transport
	client    *http.Client
}

var (
	_ actors.Model = (*Model)(nil)
	_ io.Closer    = (*Model)(nil)
)

// extraField is one entry of the extra argument, in a stable order.
type extraField struct {
	key   string
	value json.RawMessage
}

// secret holds the API key. Its formatted forms hide it, so a struct
// printed by mistake does not carry the key into a log.
type secret string

func (secret) String() string               { return "[redacted]" }
func (secret) GoString() string             { return `"[redacted]"` }
func (secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }
func (s secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// reservedExtra are body fields the kind owns: the ones it builds itself and
// the ones with an argument of their own, which a chat's parameters must be
// able to override.
var reservedExtra = map[string]string{
	"model":       "is the model argument",
	"messages":    "is built from the chat",
	"stream":      "is always true",
	"temperature": "has its own argument",
	"top_p":       "has its own argument",
	"max_tokens":  "has its own argument",
	"seed":        "has its own argument",
	"stop":        "has its own argument",
}

// New returns an openai model for a layout's arguments. Every argument is
// checked here, the API key read included, so a mistake is a layout error
// at start-up rather than a failed chat.
func New(args actors.Args) (actors.Model, error) {
	var a Args
	if err := args.Decode(&a); err != nil {
		return nil, argumentError(err)
	}
	base, err := checkBaseURL(a.BaseURL)
	if err != nil {
		return nil, err
	}
	if strings.TrimSpace(a.Model) == "" {
		return nil, errors.New("model is required: the name the server serves the model under")
	}
	key, err := readKey(a.APIKeyEnv, a.APIKeyFile)
	if err != nil {
		return nil, err
	}
	m := &Model{
		baseURL:  a.BaseURL,
		endpoint: strings.TrimRight(base.String(), "/") + "/chat/completions",
		model:    a.Model,
		key:      &key,
	}

	if m.defaults, err = a.sampling(); err != nil {
		return nil, err
	}
	if m.extra, err = checkExtra(a.Extra); err != nil {
		return nil, err
	}
	_, m.extraStreamOptions = a.Extra["stream_options"]
	switch {
	case a.Concurrency < 0:
		return nil, fmt.Errorf("concurrency must be 1 or more, got %d", a.Concurrency)
	case a.Concurrency == 0:
		m.concurrency = DefaultConcurrency
	default:
		m.concurrency = a.Concurrency
	}
	m.retries = DefaultRetries
	if a.Retries != nil {
		if *a.Retries < 0 || *a.Retries > maxRetries {
			return nil, fmt.Errorf("retries must be between 0 and %d, got %d", maxRetries, *a.Retries)
		}
		m.retries = *a.Retries
	}
	connect, err := duration("connect_timeout", a.ConnectTimeout, DefaultConnectTimeout, false)
	if err != nil {
		return nil, err
	}
	if m.firstTokenTimeout, err = duration("first_token_timeout", a.FirstTokenTimeout, DefaultFirstTokenTimeout, true); err != nil {
		return nil, err
	}
	if m.idleTimeout, err = duration("idle_timeout", a.IdleTimeout, DefaultIdleTimeout, true); err != nil {
		return nil, err
	}

	m.transport = newTransport(connect, m.concurrency)
	m.client = &http.Client{
		Transport: m.transport,
		// A redirected POST comes back as a GET, or with its body
		// dropped; a base_url that redirects is a mistake to show.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	// Nothing is read from the environment (no OPENAI_API_KEY or
	// OPENAI_BASE_URL, as the SDK's client reads): an operator's OpenAI
	// key must not go to whatever server a layout names.
	return m, nil
}

// newTransport returns the HTTP transport of one instance. HTTP/1.1 (a
// custom dialer turns off Go's automatic HTTP/2): a chat is one connection,
// so ending a chat closes its connection, which every server notices at
// once, where an HTTP/2 stream reset depends on the server and the proxies
// in between.
func newTransport(connect time.Duration, concurrency int) *http.Transport {
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSHandshakeTimeout: connect,
		// Keep a connection per slot between chats. The layout's
		// concurrency key may exceed the argument, and an idle
		// connection costs little, hence the floor.
		MaxIdleConns:        max(concurrency, 64),
		MaxIdleConnsPerHost: max(concurrency, 64),
		IdleConnTimeout:     90 * time.Second,
		// A token stream gains nothing from gzip, and a compressing
		// server or proxy may hold tokens back to fill its blocks.
		DisableCompression: true,
	}
}

// Capacity is how many chats the instance serves at once: the concurrency
// argument, or DefaultConcurrency.
func (m *Model) Capacity() int { return m.concurrency }

// Close closes the instance's idle upstream connections. Chats still
// running keep theirs until they end.
func (m *Model) Close() error {
	m.transport.CloseIdleConnections()
	return nil
}

// String names the model and its server, without the API key. It and
// GoString and LogValue have value receivers so that a Model printed by
// value uses them too.
func (m Model) String() string {
	return fmt.Sprintf("openai model %q at %s", m.model, m.baseURL)
}

// GoString is String, so %#v does not print the fields.
func (m Model) GoString() string { return m.String() }

// LogValue logs the model and its server, without the API key.
func (m Model) LogValue() slog.Value {
	return slog.GroupValue(slog.String("model", m.model), slog.String("base_url", m.baseURL))
}

// Generate implements actors.Model: it streams the chat's answer from the
// server, retrying what may be retried before the first token.
func (m *Model) Generate(ctx context.Context, req *actors.ChatRequest, emit func(string) error) error {
	request, err := m.newRequest(req)
	if err != nil {
		return err
	}
	ch := &chat{m: m, req: request, emit: emit, out: actors.OutputOf(ctx)}
	for attempt := 0; ; attempt++ {
		r := ch.attempt(ctx)
		if r.err == nil {
			return nil
		}
		if err := ctx.Err(); err != nil {
			// The host reports a cancel or the chat's deadline itself;
			// what the upstream call made of it is noise.
			return err
		}
		if !r.retry || ch.committed || attempt >= m.retries {
			return r.err
		}
		wait, ok := retryWait(attempt, r.retryAfter)
		if !ok {
			// The server asked for a longer pause than a user waits
			// for a first token: the gateway may try another node.
			return r.err
		}
		if deadline, has := ctx.Deadline(); has && time.Until(deadline) <= wait {
			return r.err
		}
		if err := sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func checkBaseURL(s string) (*url.URL, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errors.New("base_url is required: the server's OpenAI API root, such as http://127.0.0.1:8000/v1")
	}
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("base_url: want an http or https URL such as http://127.0.0.1:8000/v1, got %q", s)
	}
	if u.User != nil {
		// The URL is logged and shown in errors; a key belongs where it
		// is kept out of both.
		return nil, errors.New("base_url: must not hold credentials: give the key with api_key_env or api_key_file")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("base_url: must not have a query or fragment, got %q", s)
	}
	return u, nil
}

// readKey reads the API key from the environment variable or the file.
// Errors name where the key was looked for, never the key.
func readKey(env, file string) (secret, error) {
	var key string
	switch {
	case env != "" && file != "":
		return "", errors.New("api_key_env and api_key_file: give one, not both")
	case env != "":
		v, ok := os.LookupEnv(env)
		if !ok {
			return "", fmt.Errorf("api_key_env: environment variable %s is not set", env)
		}
		key = strings.TrimSpace(v)
		if key == "" {
			return "", fmt.Errorf("api_key_env: environment variable %s is empty", env)
		}
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				err = pe.Err // the path is said once, below
			}
			return "", fmt.Errorf("api_key_file: cannot read %s: %v", file, err)
		}
		key = strings.TrimSpace(string(b))
		if key == "" {
			return "", fmt.Errorf("api_key_file: %s is empty", file)
		}
	default:
		return "", nil
	}
	for _, r := range key {
		if r <= ' ' || r == 0x7f {
			// An HTTP header cannot carry it; say so without echoing it.
			return "", errors.New("api_key: the key holds spaces or control characters")
		}
	}
	return secret(key), nil
}

// duration parses a timeout argument; "" is def, and "0" is allowed (no
// timeout) only where zero says so.
func duration(name, s string, def time.Duration, zero bool) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || (d == 0 && !zero) {
		want := "a positive Go duration such as \"5s\""
		if zero {
			want = "a Go duration such as \"30s\", or \"0\" for none"
		}
		return 0, fmt.Errorf("%s: want %s, got %q", name, want, s)
	}
	return d, nil
}

func checkExtra(extra map[string]json.RawMessage) ([]extraField, error) {
	keys := make([]string, 0, len(extra))
	for k := range extra {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []extraField
	for _, k := range keys {
		if why, ok := reservedExtra[k]; ok {
			return nil, fmt.Errorf("extra: %q %s", k, why)
		}
		if k == "" || strings.ContainsAny(k, "\x00\n\r\t") {
			return nil, fmt.Errorf("extra: %q is not a field name", k)
		}
		v := extra[k]
		if len(v) == 0 {
			v = json.RawMessage("null")
		}
		out = append(out, extraField{key: k, value: v})
	}
	return out, nil
}

// argumentError makes the decoder's message name the argument and what it
// wants, instead of Go types.
func argumentError(err error) error {
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) && typ.Field != "" {
		want := typ.Type.String()
		switch typ.Type.Kind().String() {
		case "float64", "float32":
			want = "a number"
		case "int", "int64":
			want = "a whole number"
		case "string":
			want = "a string"
		case "map":
			want = "a map"
		case "ptr":
			switch typ.Type.Elem().Kind().String() {
			case "float64":
				want = "a number"
			case "int", "int64":
				want = "a whole number"
			}
		}
		return fmt.Errorf("%s: want %s, got a %s", typ.Field, want, typ.Value)
	}
	return err
}

func init() {
	actors.RegisterModel(actors.ModelKind{
		Name:     "openai",
		Capacity: DefaultConcurrency,
		New:      New,
	})
}
