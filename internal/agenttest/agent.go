// Package agenttest is a test double of the Agent (the kernel of Kuwa GenAI
// OS) that speaks its wire protocol, so Troupe's tests can register workers,
// schedule chats and stream replies without the Python program.
//
// The behaviour follows the kernel's source (kuwaai/genai-os,
// src/kernel/src/kuwa/kernel/routes/executor.py and routes/chat.py), quirks
// included: answers are plain bodies with HTTP 200 whatever happened,
// unregister matches on scheme://host:port only, a worker whose chat POST
// fails is silently dropped, and a worker's text/plain reply without a charset
// is decoded as ISO-8859-1 before it is re-encoded as UTF-8.
package agenttest

import (
	"context"
	"net"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// APIPath is the path prefix of every Agent route; workers are given the
// Agent's base URL ending in it (the AGENT_ENDPOINT form).
const APIPath = "/v1.0/"

// Config selects variants of the Agent's behaviour. The zero value is the
// newest kernel.
type Config struct {
	// LegacyForward makes chat/completions forward only the fields older
	// kernels sent (input, openai_token, google_token, user_token,
	// modelfile) and none of the front end's headers. Newer kernels forward
	// the whole form and the headers; a worker that must work with both
	// cannot rely on name, history_id or user_id reaching it.
	LegacyForward bool
}

// Agent is a running fake Agent. Its methods are safe for concurrent use;
// SetDown and Restart may fail the test, so call them from its goroutine.
type Agent struct {
	tb  testing.TB
	cfg Config

	// upstream is what the Agent uses to call workers. Keep-alives are off
	// because the kernel opens a fresh connection per call (requests.post
	// without a session); a pooled connection to a dead worker would blur
	// the "cannot connect" case.
	upstream *http.Client
	// front is what Chat and Abort use, standing in for the web front end.
	// It opens a connection per call too, so a call after SetDown or
	// Restart does not trip over a connection cut while the Agent was down.
	front *http.Client

	mu    sync.Mutex
	tab   table
	calls []Call

	life     sync.Mutex // guards the fields below
	addr     string     // fixed after the first listen, so workers keep one URL
	srv      *http.Server
	served   chan struct{} // closed when srv.Serve has returned
	down     bool
	closed   bool
	inflight sync.WaitGroup // handlers; Add only under life while !closed
}

// Start runs a fake Agent on 127.0.0.1 with a random port until the test
// ends.
func Start(tb testing.TB) *Agent {
	tb.Helper()
	return StartConfig(tb, Config{})
}

// StartConfig is Start with a chosen behaviour variant.
func StartConfig(tb testing.TB, cfg Config) *Agent {
	tb.Helper()
	a := &Agent{
		tb:  tb,
		cfg: cfg,
		upstream: &http.Client{Transport: &http.Transport{
			DisableKeepAlives: true,
			// The worker then never compresses, so the bytes relayed are the
			// bytes it wrote, as with requests, which decodes gzip itself.
			DisableCompression: true,
		}},
		front: &http.Client{Transport: &http.Transport{DisableKeepAlives: true}},
		addr:  "127.0.0.1:0",
	}
	if err := a.listen(); err != nil {
		tb.Fatalf("agenttest: %v", err)
	}
	tb.Cleanup(a.close)
	return a
}

// URL returns the Agent's base URL as a worker's AGENT_ENDPOINT, e.g.
// "http://127.0.0.1:PORT/v1.0/".
func (a *Agent) URL() string {
	a.life.Lock()
	defer a.life.Unlock()
	return "http://" + a.addr + APIPath
}

// Endpoints returns the endpoint URLs registered under name, sorted. The
// Agent stores them without one trailing slash.
func (a *Agent) Endpoints(name string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var urls []string
	for _, e := range a.tab.byName[name] {
		urls = append(urls, e.url)
	}
	slices.Sort(urls)
	return urls
}

// Names returns the LLM names with at least one endpoint, in the order the
// Agent lists them (first registration first).
func (a *Agent) Names() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.tab.order)
}

// EndpointState is one row of the Agent's table.
type EndpointState struct {
	URL string
	// Status is "READY" or "BUSY"; BUSY only while a reply streams.
	Status string
	// Reserved is set by worker/schedule and cleared when the chat's reply
	// ends; a reserved endpoint is not handed to anyone else.
	Reserved  bool
	HistoryID string
	UserID    string
}

// Table returns the rows registered under name in registration order, the
// order in which worker/schedule tries them.
func (a *Agent) Table(name string) []EndpointState {
	a.mu.Lock()
	defer a.mu.Unlock()
	var rows []EndpointState
	for _, e := range a.tab.byName[name] {
		rows = append(rows, e.state())
	}
	return rows
}

// WaitEndpoints polls Endpoints(name) until pred accepts it and returns
// that list; past the timeout it fails the test with the last list seen.
func (a *Agent) WaitEndpoints(tb testing.TB, name string, pred func([]string) bool, timeout time.Duration) []string {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := a.Endpoints(name)
		if pred(got) {
			return got
		}
		if time.Now().After(deadline) {
			tb.Fatalf("agenttest: endpoints of %q after %v: %q; calls: %+v", name, timeout, got, a.Calls())
			return nil
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Calls returns the register and unregister calls received so far, oldest
// first.
func (a *Agent) Calls() []Call {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

// Forget empties the table, as a restart of an Agent without its record file
// does. Chats already streaming run to their end but are no longer listed.
func (a *Agent) Forget() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.tab = table{}
}

// SetDown takes the Agent off the network (down) or back on it. While down
// the port is closed, so new connections are refused; open ones, idle
// keep-alives and streams included, are cut, so a client reusing one sees
// EOF or a reset instead. Coming back, it listens on the same
// port again; the table is kept, so combine with Forget or Restart to model
// a restart.
func (a *Agent) SetDown(down bool) {
	a.tb.Helper()
	a.life.Lock()
	defer a.life.Unlock()
	if a.closed || a.down == down {
		return
	}
	if down {
		a.stopLocked()
		a.down = true
		return
	}
	// The port was ours a moment ago; another process taking it in between
	// is unlikely enough that retrying briefly covers the TIME_WAIT-free
	// common case and failing covers the rest.
	deadline := time.Now().Add(2 * time.Second)
	for {
		err := a.listenLocked()
		if err == nil {
			a.down = false
			return
		}
		if time.Now().After(deadline) {
			a.tb.Fatalf("agenttest: listen again on %s: %v", a.addr, err)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (a *Agent) listen() error {
	a.life.Lock()
	defer a.life.Unlock()
	return a.listenLocked()
}

func (a *Agent) listenLocked() error {
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		return err
	}
	a.addr = ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(a.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		// Serve returns ErrServerClosed on Close, the only way it stops.
		_ = srv.Serve(ln)
	}()
	a.srv, a.served = srv, served
	return nil
}

// stopLocked closes the listener and every connection, then waits for the
// accept loop. Handlers end on their own: their request contexts are
// cancelled with the connections.
func (a *Agent) stopLocked() {
	if a.srv == nil {
		return
	}
	_ = a.srv.Close()
	<-a.served
	a.srv, a.served = nil, nil
}

func (a *Agent) close() {
	a.life.Lock()
	a.closed = true
	a.stopLocked()
	a.life.Unlock()
	a.inflight.Wait()
	a.upstream.CloseIdleConnections()
	a.front.CloseIdleConnections()
}

// track counts a handler so close can wait for it; it reports false once the
// Agent is closed.
func (a *Agent) track() bool {
	a.life.Lock()
	defer a.life.Unlock()
	if a.closed {
		return false
	}
	a.inflight.Add(1)
	return true
}

func (a *Agent) logf(format string, args ...any) {
	a.tb.Helper()
	a.tb.Logf("agenttest: "+format, args...)
}

// Restart models the kernel restarting from its record file: the Agent goes
// off the network, probes every endpoint with GET
// {scheme://host:port}/health, keeps (READY, unreserved) only those that
// answer 204, and comes back on the same port. The record file is taken to
// hold the current table, as the kernel writes it on register, unregister and
// shutdown. Call it from the test's goroutine.
func (a *Agent) Restart(ctx context.Context) {
	a.tb.Helper()
	a.life.Lock()
	wasDown := a.down
	a.life.Unlock()
	a.SetDown(true)

	a.mu.Lock()
	old := a.tab
	a.tab = table{}
	a.mu.Unlock()
	var next table
	for _, name := range old.order {
		for _, e := range old.byName[name] {
			code := 0
			err := a.get(ctx, baseURL(e.url)+"/health", healthTimeout, &code)
			if err != nil || code != http.StatusNoContent {
				a.logf("restart: health of %q at %q failed (status %d, %v), removed", name, e.url, code, err)
				continue
			}
			next.add(name, &endpoint{url: e.url})
		}
	}
	a.mu.Lock()
	a.tab = next
	a.mu.Unlock()

	if !wasDown {
		a.SetDown(false)
	}
}
