package gateway

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// HTTPServer returns the http.Server that serves the gateway with its
// limits: how long a request's head and whole request may take to arrive,
// how long a kept-alive connection may wait, how large a head may be. Serve
// it on Listen's listener, which counts and bounds its connections.
func (s *Server) HTTPServer() *http.Server {
	l := s.cfg.Limits
	return &http.Server{
		Handler:           s.router,
		ReadHeaderTimeout: l.HeaderTimeout,
		// The whole request, including a body net/http reads and drops
		// after a handler that did not: a chat lifts it once it has its
		// body, so that its answer can stream for longer.
		ReadTimeout:    l.BodyTimeout,
		IdleTimeout:    l.IdleTimeout,
		MaxHeaderBytes: int(l.MaxHeaderBytes),
		ConnState:      s.conns.connState,
		ConnContext:    connContext,
	}
}

// Listen wraps ln so that the gateway counts and bounds the connections it
// accepts (see Limits.MaxConnections) and, where it can, holds each until
// its request's head has arrived (see gate). Close the listener (as
// http.Server.Serve does when it returns) to end what it started.
func (s *Server) Listen(ln net.Listener) net.Listener {
	l := &limitListener{Listener: ln, conns: s.conns}
	if g := newGate(s.cfg.Limits, s.conns); g != nil {
		s.conns.gate = g
		l.gate, l.errs, l.closing, l.done = g, make(chan error), make(chan struct{}), make(chan struct{})
		go l.accept()
	}
	return l
}

// connLimiter counts the gateway's connections, from accept to close,
// whether net/http serves them or the gateway took them over to stream, and
// keeps those that wait (for a request, or for the rest of one) in the
// order they started waiting, so that at the limit the one that has waited
// longest makes room. A client that holds connections without using them,
// sending nothing or a byte at a time, cannot shut out the others: its
// connections are the first to go.
type connLimiter struct {
	max     int
	metrics *metrics
	gate    *gate // nil when there is none

	mu      sync.Mutex
	open    int
	waiting connList
}

// trackedConn is one of the gateway's connections.
type trackedConn struct {
	net.Conn
	l *connLimiter

	// Under l.mu:
	prev, next *trackedConn
	listed     bool // in l.waiting
	serving    int  // handlers serving a request on it
	hijacked   bool // taken over by the gateway, until served again
	closed     bool

	gated *gated // in the gate; under the gate's mutex

	// What the connection is waiting for, so that a read that times out
	// is counted against the right limit.
	phase atomic.Int32
	// The read deadline last set, in Unix nanoseconds; 0 for none.
	deadline atomic.Int64
	// The write deadline of the chat it serves, in Unix nanoseconds; 0 for
	// none.
	writeBy atomic.Int64
}

// A connection's phases.
const (
	phaseFresh    int32 = iota // accepted, no byte of a request yet
	phaseIdle                  // kept alive after a request, no byte of the next
	phaseHead                  // a request's head is arriving
	phaseBody                  // its handler reads (or net/http drops) its body
	phaseServing               // a handler serves a request, or a chat streams
	phaseTimedOut              // a read timed out; counted once
)

// abortDeadline is how net/http (and watchByReading) interrupt a read on
// purpose: a deadline long past. A read that times out with it hit no limit.
var abortDeadline = time.Unix(1, 0).UnixNano()

type connKey struct{}

// connContext puts a request's connection in its context, for the handlers
// to mark it serving.
func connContext(ctx context.Context, c net.Conn) context.Context {
	if tc := trackedOf(c); tc != nil {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

// connOf returns the connection r came in on, or nil when the gateway's
// handler is served by a server other than HTTPServer's.
func connOf(r *http.Request) *trackedConn {
	c, _ := r.Context().Value(connKey{}).(*trackedConn)
	return c
}

// trackedOf finds the tracked connection in what net/http serves: itself,
// or one handed back after a stream with bytes read ahead.
func trackedOf(c net.Conn) *trackedConn {
	switch c := c.(type) {
	case *trackedConn:
		return c
	case *readAhead:
		return trackedOf(c.Conn)
	}
	return nil
}

// limitListener accepts connections up to the limit (see connLimiter).
// With a gate, a goroutine of its own accepts them into the gate, and
// Accept takes those whose head has arrived.
type limitListener struct {
	net.Listener
	conns *connLimiter

	gate      *gate
	errs      chan error    // the accepting goroutine's errors, for Accept
	closing   chan struct{} // closed by Close
	done      chan struct{} // closed when the accepting goroutine has ended
	closeOnce sync.Once
	closeErr  error
}

func (l *limitListener) Accept() (net.Conn, error) {
	if l.gate == nil {
		for {
			c, err := l.Listener.Accept()
			if err != nil {
				return nil, err
			}
			if tc := l.admit(c); tc != nil {
				return tc, nil
			}
		}
	}
	select {
	case c := <-l.gate.ready:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// accept is the goroutine that accepts connections into the gate, until
// the listener is closed. Errors go to Accept, whose caller backs off
// from those that pass (as net/http does), which paces this loop too.
func (l *limitListener) accept() {
	defer close(l.done)
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			select {
			case l.errs <- err:
				continue
			case <-l.closing:
				return
			}
		}
		if tc := l.admit(c); tc != nil {
			l.gate.add(tc, nil)
		}
	}
}

// admit counts a new connection, or refuses it.
func (l *limitListener) admit(c net.Conn) *trackedConn {
	tc := l.conns.admit(c)
	if tc == nil {
		l.conns.metrics.limitHits.WithLabelValues(limitConnections).Inc()
		refuse(c)
	}
	return tc
}

// Close closes the listener, then the gate and the connections in it.
func (l *limitListener) Close() error {
	if l.gate == nil {
		return l.Listener.Close()
	}
	l.closeOnce.Do(func() {
		close(l.closing)
		l.closeErr = l.Listener.Close()
		<-l.done
		l.gate.close()
	})
	return l.closeErr
}

// refusal is the whole answer to a connection over the limit, written
// before its request is read: a status a client can show (the Agent shows
// the body in the chat) rather than a reset it would have to guess about.
var refusal = func() []byte {
	const msg = "This node has too many connections open; please try again shortly.\n"
	return []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n" +
		"Connection: close\r\nRetry-After: 1\r\nContent-Length: " + strconv.Itoa(len(msg)) + "\r\n\r\n" + msg)
}()

// refuse answers a connection over the limit and closes it, on the accept
// loop's goroutine: a few bytes into a fresh socket's empty buffer never
// wait. What the client already sent is read first, as a close with unread
// bytes resets the connection, which may lose the answer on its way.
func refuse(c net.Conn) {
	_, _ = c.Write(refusal)
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	discardReceived(c)
	_ = c.Close()
}

// admit counts a new connection, making room at the limit by closing the
// connection that has waited longest; it returns nil when every
// connection is serving a request.
func (l *connLimiter) admit(c net.Conn) *trackedConn {
	l.mu.Lock()
	if l.open >= l.max {
		victim := l.waiting.front()
		if victim == nil {
			l.mu.Unlock()
			return nil
		}
		l.waiting.remove(victim)
		l.mu.Unlock()
		// A victim whose request head ended just now may be starting its
		// handler: that request fails as if its client had gone. It has
		// waited longer than any other, so under pressure that is rare.
		_ = victim.Close()
		l.metrics.reclaimed.Inc()
		l.mu.Lock()
	}
	tc := &trackedConn{Conn: c, l: l}
	l.open++
	l.waiting.pushBack(tc)
	l.mu.Unlock()
	return tc
}

// connState follows net/http's view of each connection.
func (l *connLimiter) connState(c net.Conn, state http.ConnState) {
	tc := trackedOf(c)
	if tc == nil {
		return
	}
	switch state {
	case http.StateNew:
		// A connection handed back after a stream is served again.
		l.mu.Lock()
		if tc.hijacked {
			tc.hijacked = false
			tc.phase.Store(phaseIdle)
			l.wait(tc)
		}
		l.mu.Unlock()
	case http.StateIdle:
		tc.phase.Store(phaseIdle)
		l.mu.Lock()
		l.wait(tc)
		l.mu.Unlock()
	case http.StateHijacked:
		l.mu.Lock()
		tc.hijacked = true
		l.waiting.remove(tc)
		l.mu.Unlock()
	}
}

// wait puts a connection that serves nothing at the back of the waiting
// line; l.mu is held.
func (l *connLimiter) wait(tc *trackedConn) {
	if tc.closed || tc.serving > 0 || tc.hijacked {
		return
	}
	l.waiting.remove(tc)
	l.waiting.pushBack(tc)
}

// handBack returns a connection taken over for a stream to the gate, to
// wait there for its next request, and reports whether it did: without a
// gate, net/http serves it again (see takeoverWriter.finish). pending is
// what the client sent meanwhile.
func (l *connLimiter) handBack(c net.Conn, pending []byte) bool {
	tc := trackedOf(c)
	if tc == nil || l.gate == nil {
		return false
	}
	// Bytes a hand-back before this one read ahead and net/http did not
	// take come after those it did.
	for ra, ok := c.(*readAhead); ok; ra, ok = ra.Conn.(*readAhead) {
		pending = append(pending, ra.next...)
	}
	tc.writeBy.Store(0)
	l.mu.Lock()
	tc.hijacked = false
	tc.phase.Store(phaseIdle)
	l.wait(tc)
	l.mu.Unlock()
	l.gate.add(tc, pending)
	return true
}

// counts returns the connections serving a request and those waiting.
func (l *connLimiter) counts() (serving, waiting int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open - l.waiting.n, l.waiting.n
}

// receiving says that a chat handler reads its request's body: a read
// that times out now hit the body's time limit.
func (c *trackedConn) receiving() {
	if c != nil {
		c.phase.Store(phaseBody)
	}
}

// serve marks the connection serving a request, which no new connection
// may take its place from, until rest.
func (c *trackedConn) serve() {
	if c == nil {
		return
	}
	c.phase.Store(phaseServing)
	c.l.mu.Lock()
	c.serving++
	c.l.waiting.remove(c)
	c.l.mu.Unlock()
}

// writeGrace is how long past its chat's time limit a write to a client
// may block: long enough for the note that says the time is up.
var writeGrace = 5 * time.Second

// serveChat marks the connection serving a chat whose request it has read,
// until rest. The time limit of the request's arrival no longer holds, as
// the answer streams for longer; instead no write may block past the
// chat's own limit, so that a client that stops reading holds its
// connection no longer than its chat would have run.
func (c *trackedConn) serveChat(chatTimeout time.Duration) {
	if c == nil {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	by := time.Now().Add(chatTimeout + writeGrace)
	c.writeBy.Store(by.UnixNano())
	_ = c.SetWriteDeadline(by)
	c.serve()
}

// rearm sets the chat's write deadline again on a connection taken over
// from net/http, whose Hijack clears every deadline.
func (c *trackedConn) rearm() {
	if by := c.writeBy.Load(); by != 0 {
		_ = c.SetWriteDeadline(time.Unix(0, by))
	}
}

// rest ends a serve. net/http may still read and drop the rest of the
// request's body before the connection is idle. A chat's write deadline
// goes, as net/http sets none of its own: a chat taken over keeps it until
// the connection is handed back (see takeoverWriter.finish).
func (c *trackedConn) rest() {
	if c == nil {
		return
	}
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	c.serving--
	if c.serving == 0 && !c.hijacked {
		if c.writeBy.Swap(0) != 0 {
			_ = c.SetWriteDeadline(time.Time{})
		}
		c.phase.Store(phaseBody)
		c.l.wait(c)
	}
}

// Read counts a read that timed out against the limit of what the
// connection was waiting for, and marks the start of a request.
func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.requestBegins()
	}
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && c.deadline.Load() > abortDeadline {
		c.timedOut()
	}
	return n, err
}

// requestBegins moves a connection on which a request starts to arrive to
// the back of the waiting line: it is the freshest, not the stalest.
func (c *trackedConn) requestBegins() {
	ph := c.phase.Load()
	if ph != phaseFresh && ph != phaseIdle || !c.phase.CompareAndSwap(ph, phaseHead) {
		return
	}
	c.l.mu.Lock()
	if c.listed {
		c.l.waiting.remove(c)
		c.l.waiting.pushBack(c)
	}
	c.l.mu.Unlock()
}

func (c *trackedConn) timedOut() {
	var limit string
	ph := c.phase.Load()
	switch ph {
	case phaseFresh, phaseHead:
		limit = limitHeaderTimeout
	case phaseIdle:
		limit = limitIdleTimeout
	case phaseBody:
		limit = limitBodyTimeout
	default:
		return
	}
	if c.phase.CompareAndSwap(ph, phaseTimedOut) {
		c.l.metrics.limitHits.WithLabelValues(limit).Inc()
	}
}

// status431 is how net/http answers a head over MaxHeaderBytes, which it
// writes to the connection itself.
var status431 = []byte("HTTP/1.1 431 ")

// Write counts net/http's refusal of a head too large.
func (c *trackedConn) Write(p []byte) (int, error) {
	if c.phase.Load() == phaseHead && bytes.HasPrefix(p, status431) {
		c.l.metrics.limitHits.WithLabelValues(limitHeaderSize).Inc()
	}
	return c.Conn.Write(p)
}

func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.noteDeadline(t)
	return c.Conn.SetReadDeadline(t)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	c.noteDeadline(t)
	return c.Conn.SetDeadline(t)
}

func (c *trackedConn) noteDeadline(t time.Time) {
	var ns int64
	if !t.IsZero() {
		ns = t.UnixNano()
	}
	c.deadline.Store(ns)
}

// Close closes the connection and gives its place back, once.
func (c *trackedConn) Close() error {
	if g := c.l.gate; g != nil {
		g.forget(c)
	}
	err := c.Conn.Close()
	c.l.mu.Lock()
	if !c.closed {
		c.closed = true
		c.l.open--
		c.l.waiting.remove(c)
	}
	c.l.mu.Unlock()
	return err
}

// CloseWrite and SyscallConn pass through what net/http and the hang-up
// watcher look for on a TCP connection.
func (c *trackedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *trackedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

var _ syscall.Conn = (*trackedConn)(nil)

// connList is a list of connections threaded through them: a connection
// joins and leaves it without an allocation.
type connList struct {
	head, tail *trackedConn
	n          int
}

func (l *connList) front() *trackedConn { return l.head }

func (l *connList) pushBack(c *trackedConn) {
	c.prev, c.next, c.listed = l.tail, nil, true
	if l.tail != nil {
		l.tail.next = c
	} else {
		l.head = c
	}
	l.tail = c
	l.n++
}

func (l *connList) remove(c *trackedConn) {
	if !c.listed {
		return
	}
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	} else {
		l.tail = c.prev
	}
	c.prev, c.next, c.listed = nil, nil, false
	l.n--
}
