// Package kuwa is the kuwa model: it forwards a chat to an existing Kuwa
// executor, or to a worker of the Python original's framework, over the
// Kuwa worker protocol, and streams its answer back. It lets executors that
// already run sit inside Troupe layouts while their users migrate.
//
// Troupe calls the executor as the Kuwa Agent would: a form POST with the
// history in the Kuwa form, the answer streamed as plain UTF-8 text, and
// GET {url}/abort to stop a generation that nobody reads any more. It knows
// nothing of the Agent's registration or scheduling: the executor's URL is
// given in the layout.
package kuwa

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Args are the kuwa model's layout arguments.
type Args struct {
	// URL is the executor's chat endpoint, e.g.
	// http://127.0.0.1:12345/v1.0/chat/completions or a worker's
	// http://worker:8123/v1/completion. Required.
	URL string `json:"url"`
	// Name is the LLM name sent in the form's "name" field; empty sends the
	// chat's layout name.
	Name string `json:"name"`
	// Concurrency is how many chats this instance sends to the executor at
	// once; a chat beyond it fails as overloaded without calling the
	// executor, which would refuse it anyway. A Kuwa executor serves one
	// chat at a time unless started with a higher limit. Default 1.
	Concurrency int `json:"concurrency"`
	// ConnectTimeout bounds dialling (and the TLS handshake), as a Go
	// duration. Default 10s.
	ConnectTimeout string `json:"connect_timeout"`
	// FirstTokenTimeout bounds the wait from sending the chat to the first
	// byte of the answer; "0" waits as long as the chat may last.
	// Default 5m: a large model on a long prompt is slow to start.
	FirstTokenTimeout string `json:"first_token_timeout"`
	// IdleTimeout bounds the silence between two pieces of the answer; "0"
	// waits as long as the chat may last. Default 2m.
	IdleTimeout string `json:"idle_timeout"`
	// Headers are extra HTTP headers sent with every call, e.g. for a proxy
	// in front of the executor.
	Headers map[string]string `json:"headers"`
	// APIKeyEnv names an environment variable whose value is sent as
	// "Authorization: Bearer <value>". The value is read once, when the
	// instance is made, and never logged or shown in errors.
	APIKeyEnv string `json:"api_key_env"`
}

// Defaults of the arguments.
const (
	DefaultConcurrency       = 1
	DefaultConnectTimeout    = 10 * time.Second
	DefaultFirstTokenTimeout = 5 * time.Minute
	DefaultIdleTimeout       = 2 * time.Minute
)

// abortTimeout bounds the call to {url}/abort made when a chat stops early:
// Generate waits for it before returning, so a stuck executor must not hold
// the chat's slot for long.
const abortTimeout = 2 * time.Second

// Model is the kuwa model: one executor endpoint and the HTTP client that
// talks to it.
type Model struct {
	endpoint string // the chat endpoint, as configured
	abortURL string // {endpoint}/abort
	where    string // the endpoint without credentials or query, for errors
	name     string
	header   http.Header // sent with every call; may hold a secret
	host     string      // a Host header to send, if one was given

	firstToken time.Duration // 0: no limit
	idle       time.Duration // 0: no limit

	// slots holds one token per chat in flight with the executor.
	slots chan struct{}

	transport *http.Transport
	client    *http.Client
}

var (
	_ actors.Model = (*Model)(nil)
	_ io.Closer    = (*Model)(nil)
)

// reservedHeaders are set by the protocol itself; a layout that overrode
// them would break the call.
var reservedHeaders = []string{"Content-Type", "Content-Length", "Transfer-Encoding", "Connection"}

// New returns a kuwa model for the arguments of a layout.
func New(args actors.Args) (actors.Model, error) {
	a := Args{Concurrency: DefaultConcurrency}
	if err := args.Decode(&a); err != nil {
		return nil, err
	}
	return newModel(a)
}

func newModel(a Args) (*Model, error) {
	endpoint, err := parseEndpoint(a.URL)
	if err != nil {
		return nil, err
	}
	if a.Concurrency < 1 {
		return nil, fmt.Errorf("concurrency must be at least 1, got %d", a.Concurrency)
	}
	connect, err := parseDuration("connect_timeout", a.ConnectTimeout, DefaultConnectTimeout, false)
	if err != nil {
		return nil, err
	}
	firstToken, err := parseDuration("first_token_timeout", a.FirstTokenTimeout, DefaultFirstTokenTimeout, true)
	if err != nil {
		return nil, err
	}
	idle, err := parseDuration("idle_timeout", a.IdleTimeout, DefaultIdleTimeout, true)
	if err != nil {
		return nil, err
	}
	header, host, err := buildHeader(a.Headers, a.APIKeyEnv)
	if err != nil {
		return nil, err
	}

	abort := *endpoint
	abort.Path = strings.TrimSuffix(endpoint.Path, "/") + "/abort"
	abort.RawPath = ""
	where := url.URL{Scheme: endpoint.Scheme, Host: endpoint.Host, Path: endpoint.Path}

	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	transport := &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         dialer.DialContext,
		TLSHandshakeTimeout: connect,
		// The answer is read as it comes; a compressed one could be held
		// back by the decompressor's buffering.
		DisableCompression: true,
		// One connection per chat, and one for an abort.
		MaxIdleConnsPerHost: a.Concurrency + 1,
		IdleConnTimeout:     90 * time.Second,
	}
	client := &http.Client{
		Transport: transport,
		// A redirected POST would arrive as a GET without the chat; the
		// redirect is reported instead.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &Model{
		endpoint:   endpoint.String(),
		abortURL:   abort.String(),
		where:      where.String(),
		name:       a.Name,
		header:     header,
		host:       host,
		firstToken: firstToken,
		idle:       idle,
		slots:      make(chan struct{}, a.Concurrency),
		transport:  transport,
		client:     client,
	}, nil
}

// Capacity is the concurrency argument: the layout admits as many chats as
// the executor takes.
func (m *Model) Capacity() int { return cap(m.slots) }

// Close releases the instance's idle connections. Chats still running keep
// theirs until they end; Close may be called more than once.
func (m *Model) Close() error {
	m.transport.CloseIdleConnections()
	return nil
}

func parseEndpoint(raw string) (*url.URL, error) {
	if strings.TrimSpace(raw) == "" {
		return nil, errors.New("url is required: the Kuwa executor's chat endpoint, e.g. http://127.0.0.1:12345/v1.0/chat/completions")
	}
	u, err := url.Parse(raw)
	// The URL may hold credentials, so the message shows it redacted, or
	// not at all when it does not parse.
	if err != nil {
		return nil, errors.New("url: not a valid URL; want e.g. http://127.0.0.1:12345/v1.0/chat/completions")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("url: want an http or https URL, got %q", u.Redacted())
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("url: %q has no host", u.Redacted())
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// parseDuration reads one duration argument; empty gives def.
func parseDuration(arg, s string, def time.Duration, zeroOK bool) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%s: want a duration such as %q, got %q", arg, def.String(), s)
	case d < 0 || d == 0 && !zeroOK:
		want := "more than 0"
		if zeroOK {
			want = "0 (no limit) or more"
		}
		return 0, fmt.Errorf("%s must be %s, got %q", arg, want, s)
	}
	return d, nil
}

// buildHeader checks the headers argument and adds the API key. Error
// messages name headers, never their values, which may be secrets.
func buildHeader(headers map[string]string, keyEnv string) (http.Header, string, error) {
	h := http.Header{}
	var host string
	for name, value := range headers {
		if !validHeaderName(name) {
			return nil, "", fmt.Errorf("headers: %q is not a valid header name", name)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			return nil, "", fmt.Errorf("headers: the value of %q holds a line break or NUL", name)
		}
		canon := http.CanonicalHeaderKey(name)
		for _, r := range reservedHeaders {
			if canon == r {
				return nil, "", fmt.Errorf("headers: %q is set by the Kuwa protocol and cannot be changed", name)
			}
		}
		if canon == "Host" {
			host = value
			continue
		}
		h.Set(canon, value)
	}
	if keyEnv != "" {
		if h.Get("Authorization") != "" {
			return nil, "", errors.New("api_key_env and an Authorization header in headers both set the Authorization header: give one")
		}
		key := os.Getenv(keyEnv)
		if key == "" {
			return nil, "", fmt.Errorf("api_key_env: the environment variable %s is not set or empty", keyEnv)
		}
		if strings.ContainsAny(key, "\r\n\x00") {
			return nil, "", fmt.Errorf("api_key_env: the value of %s holds a line break or NUL", keyEnv)
		}
		h.Set("Authorization", "Bearer "+key)
	}
	return h, host, nil
}

// validHeaderName reports whether name is an RFC 9110 token.
func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func init() {
	actors.RegisterModel(actors.ModelKind{
		Name: "kuwa",
		// One chat at a time, as a Kuwa executor serves by default; the
		// concurrency argument raises it (Model.Capacity).
		Capacity: DefaultConcurrency,
		New:      New,
	})
}
