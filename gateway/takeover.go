package gateway

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// takeoverWriter is the http.ResponseWriter of an answer that streams. It
// writes through net/http's until takeOver; then the gateway writes the
// rest of the chunked body to the connection itself, and the HTTP handler
// can return while the answer streams on. A connection net/http serves
// holds a goroutine with the handler's stack, a background reader, 10 KiB
// of buffers and the request; a taken-over one holds a place in an epoll
// instance (see hangups) and the bytes of the chunk being written. When the answer is complete
// the connection goes back to the same http.Server for the client's next
// request, as net/http would have kept it alive.
//
// Only a plain HTTP/1.1 connection whose client keeps it alive is taken
// over: there net/http streams an answer of unknown length in chunks, and
// the gateway goes on the same way.
type takeoverWriter struct {
	w       http.ResponseWriter // net/http's, until taken over
	flusher http.Flusher
	srv     *http.Server // serves the connection again
	able    bool

	// Once taken over:
	conn net.Conn
	// pending is the next chunk: room for its size line, then its data.
	pending []byte
	next    []byte // bytes of the client's next request, read meanwhile
	err     error  // the first write error
	gone    func() // says the client went away
	unwatch func() []byte
}

var (
	_ http.ResponseWriter = (*takeoverWriter)(nil)
	_ http.Flusher        = (*takeoverWriter)(nil)
)

// init makes t write through w, net/http's writer for r.
func (t *takeoverWriter) init(w http.ResponseWriter, r *http.Request) {
	t.w = w
	t.flusher, _ = w.(http.Flusher)
	t.srv, _ = r.Context().Value(http.ServerContextKey).(*http.Server)
	_, hijacker := w.(http.Hijacker)
	t.able = hijacker && t.srv != nil && t.flusher != nil && r.TLS == nil && r.ProtoAtLeast(1, 1) && !r.Close
}

// Header implements http.ResponseWriter. Once taken over, the head of the
// answer is written: what is set then goes nowhere.
func (t *takeoverWriter) Header() http.Header {
	if t.w == nil {
		return http.Header{}
	}
	return t.w.Header()
}

// WriteHeader implements http.ResponseWriter.
func (t *takeoverWriter) WriteHeader(status int) {
	if t.w != nil {
		t.w.WriteHeader(status)
	}
}

// Write implements http.ResponseWriter: once taken over, what is written
// goes out with the next Flush.
func (t *takeoverWriter) Write(p []byte) (int, error) {
	if t.w != nil {
		return t.w.Write(p)
	}
	if t.err != nil {
		return 0, t.err
	}
	if len(t.pending) == 0 {
		t.pending = append(t.pending, sizeRoom[:]...)
	}
	t.pending = append(t.pending, p...)
	return len(p), nil
}

// sizeRoom is where a chunk's size line goes: 16 hexadecimal digits, CRLF.
var sizeRoom [18]byte

// Flush implements http.Flusher: once taken over, it writes what was
// written since the last Flush as one chunk, in one system call.
func (t *takeoverWriter) Flush() {
	if t.w != nil {
		if t.flusher != nil {
			t.flusher.Flush()
		}
		return
	}
	if len(t.pending) <= len(sizeRoom) || t.err != nil {
		return
	}
	// The size line goes right before the data, so that the chunk is one
	// contiguous write.
	var size [16]byte
	hex := strconv.AppendInt(size[:0], int64(len(t.pending)-len(sizeRoom)), 16)
	start := len(sizeRoom) - len(hex) - 2
	copy(t.pending[start:], hex)
	t.pending[len(sizeRoom)-2], t.pending[len(sizeRoom)-1] = '\r', '\n'
	t.pending = append(t.pending, '\r', '\n')
	if _, err := t.conn.Write(t.pending[start:]); err != nil {
		t.err = err
		t.gone()
	}
	// A chunk is small; keep its buffer unless an unusual one grew it.
	if cap(t.pending) > 4<<10 {
		t.pending = nil
	} else {
		t.pending = t.pending[:0]
	}
}

// Unwrap returns net/http's writer, for http.ResponseController, until the
// connection is taken over.
func (t *takeoverWriter) Unwrap() http.ResponseWriter { return t.w }

// takeOver takes the connection over from net/http after a Flush, and
// reports whether it did. gone is called, once at most, when the client
// goes away or a write fails.
func (t *takeoverWriter) takeOver(gone func()) bool {
	if !t.able || t.w == nil {
		return false
	}
	conn, brw, err := t.w.(http.Hijacker).Hijack()
	if err != nil {
		t.able = false
		return false
	}
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		t.next = bytes.Clone(b)
	}
	if tc := trackedOf(conn); tc != nil {
		tc.rearm()
	}
	t.conn, t.w, t.flusher, t.gone = conn, nil, nil, onlyOnce(gone)
	t.unwatch = watchHangup(conn, t.gone)
	return true
}

// watchByReading watches a connection the way net/http does, with a
// goroutine blocked in a read: until the client closes it (then it calls
// gone) or sends its next request (whose first byte it keeps, and stops:
// the rest is read when the request is served), or until stop, which
// returns the byte read if any.
func watchByReading(conn net.Conn, gone func()) (stop func() []byte) {
	var stopping atomic.Bool
	done := make(chan struct{})
	var next []byte
	go func() {
		defer close(done)
		var b [1]byte
		n, err := conn.Read(b[:])
		if n > 0 {
			next = b[:1]
			return
		}
		if err != nil && !stopping.Load() {
			gone()
		}
	}()
	return func() []byte {
		stopping.Store(true)
		_ = conn.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = conn.SetReadDeadline(time.Time{})
		return next
	}
}

// finish ends a taken-over answer. A complete one gets its last chunk, and
// its connection serves the client's next request; otherwise the
// connection is closed, as the client went away or a write failed.
func (t *takeoverWriter) finish(complete bool) {
	if t.conn == nil {
		return
	}
	handingBack.Add(1)
	defer handingBack.Add(-1)
	t.next = append(t.next, t.unwatch()...)
	if complete {
		t.Flush()
		if t.err == nil {
			_, t.err = io.WriteString(t.conn, "0\r\n\r\n")
		}
	}
	t.pending = nil
	if !complete || t.err != nil {
		t.conn.Close()
		return
	}
	// net/http sets no write deadline of its own: the chat's goes.
	_ = t.conn.SetWriteDeadline(time.Time{})
	if tc := trackedOf(t.conn); tc != nil && tc.l.handBack(t.conn, t.next) {
		return
	}
	var conn net.Conn = t.conn
	if len(t.next) > 0 {
		conn = &readAhead{Conn: conn, next: t.next}
	}
	// Serve returns as soon as it has started the connection's own
	// goroutine, or at once when the server is shutting down.
	l := &oneConn{conn: conn}
	_ = t.srv.Serve(l)
	if !l.taken {
		conn.Close()
	}
}

// handingBack counts the connections whose answers are ending and which are
// on their way back to their HTTP server. Tests wait for none before they
// close an httptest.Server, whose Close must not race with the connection
// it is given.
var handingBack atomic.Int64

// onlyOnce returns f, callable many times to the effect of one.
func onlyOnce(f func()) func() {
	var done atomic.Bool
	return func() {
		if done.CompareAndSwap(false, true) {
			f()
		}
	}
}

// readAhead is a connection whose first bytes were read before it went back
// to the HTTP server.
type readAhead struct {
	net.Conn
	next []byte
}

// SyscallConn and CloseWrite pass through what the hang-up watcher and
// net/http look for on a TCP connection.
func (c *readAhead) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

func (c *readAhead) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *readAhead) Read(p []byte) (int, error) {
	if len(c.next) > 0 {
		n := copy(p, c.next)
		c.next = c.next[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// oneConn is a net.Listener that accepts one connection, then reports
// itself closed, so that http.Server.Serve starts serving the connection
// and returns.
type oneConn struct {
	conn  net.Conn
	taken bool
}

func (l *oneConn) Accept() (net.Conn, error) {
	if l.taken {
		return nil, errServedAgain
	}
	l.taken = true
	return l.conn, nil
}

func (l *oneConn) Close() error   { return nil }
func (l *oneConn) Addr() net.Addr { return l.conn.LocalAddr() }

var errServedAgain = errors.New("the connection is served again")
