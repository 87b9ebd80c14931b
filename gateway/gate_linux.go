//go:build linux

package gateway

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// gate holds the gateway's connections until a request's head has arrived
// whole: new connections, and connections handed back after a stream. A
// connection net/http serves holds a goroutine and 8 KiB of buffers while
// it waits for a head; one here holds a place in an epoll instance and the
// bytes of the head so far. So clients that connect and send nothing, or a
// head a byte at a time, cost the node a few hundred bytes each until their
// time runs out (IdleTimeout before a request's first byte, HeaderTimeout
// from there), not 20 KiB. One goroutine reads
// every connection that has something to read, and one timer closes the
// connections whose time ran out.
type gate struct {
	conns       *connLimiter
	headTimeout time.Duration
	idleTimeout time.Duration
	maxHead     int
	ready       chan net.Conn // heads arrived whole, for Accept

	// The epoll instance, in Go's own poller (as a file), so that its
	// goroutine waits parked rather than in a system call: every byte of
	// a client that sends one at a time wakes it.
	epoll *os.File
	epfd  int
	wake  int // an eventfd that tells the goroutine to end

	mu      sync.Mutex
	closed  bool
	seq     int32
	byFD    map[int32]*gated
	waiting [2]gatedList // by deadline: heads arriving, kept-alive connections
	timer   *time.Timer
	fires   time.Time     // when the timer is set to fire; zero when it is not
	stop    chan struct{} // closed by close
	done    chan struct{} // closed when the goroutine has ended
}

// gated is a connection in the gate. Its fields are the gate's, under its
// mutex, but for head: only whoever reads the connection (add, then the
// gate's goroutine) touches it.
type gated struct {
	tc      *trackedConn
	raw     syscall.RawConn
	fd, seq int32
	head    []byte
	// kept is set while no byte of a request has come: a connection
	// waits for its first request, or its next one, as long as a
	// kept-alive connection may (IdleTimeout); the head's own time
	// (HeaderTimeout) starts at its first byte. A client's pool dials
	// connections it may not use for a while, and a POST it sends just
	// as the node closes one fails with nothing to retry.
	kept     bool
	deadline time.Time
	list     *gatedList
	prev     *gated
	next     *gated
}

// What a read of a gated connection found.
const (
	headPart = iota // more to come
	headWhole
	headGone // the client closed, or the connection broke
)

// newGate returns a gate with the limits' timeouts, and starts its
// goroutine; close ends it.
func newGate(limits Limits, conns *connLimiter) *gate {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil
	}
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wake)
		return nil
	}
	epoll := os.NewFile(uintptr(epfd), "gate")
	raw, err := epoll.SyscallConn()
	if err != nil {
		epoll.Close()
		unix.Close(wake)
		return nil
	}
	g := &gate{
		conns:       conns,
		headTimeout: limits.HeaderTimeout,
		idleTimeout: limits.IdleTimeout,
		// net/http takes a head a little over MaxHeaderBytes: one that
		// outgrows that goes to it, which answers 431 at once.
		maxHead: int(limits.MaxHeaderBytes) + 4096 + 1,
		ready:   make(chan net.Conn, 64),
		epoll:   epoll,
		epfd:    epfd,
		wake:    wake,
		byFD:    map[int32]*gated{},
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	g.timer = time.AfterFunc(time.Hour, g.expire)
	g.timer.Stop()
	go g.wait(raw)
	return g
}

// add holds a connection, new or handed back after a stream, until a
// request's head has arrived whole; head is what came of it already.
func (g *gate) add(tc *trackedConn, head []byte) {
	raw, err := tc.SyscallConn()
	if err != nil {
		g.pass(&gated{tc: tc, head: head})
		return
	}
	e := &gated{tc: tc, raw: raw, head: head}
	// Most clients send their request as soon as they connect: it is
	// often here already.
	if len(head) > 0 && g.whole(e.head, 0) {
		g.pass(e)
		return
	}
	switch g.read(e) {
	case headWhole:
		g.pass(e)
		return
	case headGone:
		_ = tc.Close()
		return
	}
	_ = raw.Control(func(fd uintptr) { e.fd = int32(fd) })
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		_ = tc.Close()
		return
	}
	g.seq++
	e.seq = g.seq
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP, Fd: e.fd, Pad: e.seq}
	if err := unix.EpollCtl(g.epfd, unix.EPOLL_CTL_ADD, int(e.fd), &ev); err != nil {
		g.mu.Unlock()
		g.pass(e)
		return
	}
	g.byFD[e.fd] = e
	tc.gated = e
	// The read above may have brought a head's first bytes.
	e.kept = len(e.head) == 0
	g.hold(e, time.Now())
	g.mu.Unlock()
}

// hold puts e in the line of its deadline, and sets the timer for the
// first deadline; g.mu is held.
func (g *gate) hold(e *gated, now time.Time) {
	i, d := 0, g.headTimeout
	if e.kept {
		i, d = 1, g.idleTimeout
	}
	e.deadline = now.Add(d)
	g.waiting[i].pushBack(e)
	g.arm(now)
}

// arm sets the timer for the first deadline, unless it is set for it;
// g.mu is held.
func (g *gate) arm(now time.Time) {
	var first time.Time
	for i := range g.waiting {
		if e := g.waiting[i].head; e != nil && (first.IsZero() || e.deadline.Before(first)) {
			first = e.deadline
		}
	}
	if first.IsZero() || first.Equal(g.fires) {
		return
	}
	if !g.fires.IsZero() && g.fires.Before(first) {
		return // it fires first, and sets itself again
	}
	g.fires = first
	g.timer.Reset(first.Sub(now))
}

// release takes e out of the gate, and says whether it was still there;
// g.mu is held.
func (g *gate) release(e *gated) bool {
	if g.byFD[e.fd] != e {
		return false
	}
	_ = unix.EpollCtl(g.epfd, unix.EPOLL_CTL_DEL, int(e.fd), nil)
	delete(g.byFD, e.fd)
	e.list.remove(e)
	e.tc.gated = nil
	return true
}

// forget takes a connection being closed elsewhere out of the gate.
func (g *gate) forget(tc *trackedConn) {
	g.mu.Lock()
	if e := tc.gated; e != nil {
		g.release(e)
	}
	g.mu.Unlock()
}

// read reads what e's client sent, without waiting.
func (g *gate) read(e *gated) int {
	buf := scratch.Get().(*[]byte)
	defer scratch.Put(buf)
	for {
		var n int
		var rerr error
		err := e.raw.Read(func(fd uintptr) bool {
			n, rerr = syscall.Read(int(fd), *buf)
			return true // never wait: the gate's epoll does
		})
		switch {
		case err != nil:
			return headGone
		case errors.Is(rerr, syscall.EAGAIN):
			return headPart
		case errors.Is(rerr, syscall.EINTR):
			continue
		case rerr != nil || n <= 0:
			return headGone
		}
		if len(e.head) == 0 {
			e.tc.requestBegins()
		}
		from := len(e.head)
		e.head = append(e.head, (*buf)[:n]...)
		if g.whole(e.head, from) {
			return headWhole
		}
		if n < len(*buf) {
			// All there was, most likely; if not, epoll says so again,
			// which costs less than a read that finds nothing, per byte
			// of a client that sends one at a time.
			return headPart
		}
	}
}

// scratch is what the gate reads into before it keeps what it read.
var scratch = sync.Pool{New: func() any { b := make([]byte, 4096); return &b }}

// whole reports whether head holds a request's head, or as much as
// net/http takes of one; from is where the bytes not looked at yet begin.
func (g *gate) whole(head []byte, from int) bool {
	if len(head) >= g.maxHead {
		return true
	}
	// A head ends with an empty line; net/http takes LF for CRLF.
	tail := head[max(0, from-3):]
	return bytes.Contains(tail, []byte("\r\n\r\n")) || bytes.Contains(tail, []byte("\n\n"))
}

// pass gives a connection whose head arrived to net/http, through Accept.
func (g *gate) pass(e *gated) {
	var c net.Conn = e.tc
	if len(e.head) > 0 {
		c = &readAhead{Conn: e.tc, next: e.head}
	}
	select {
	case g.ready <- c:
	case <-g.stop:
		_ = e.tc.Close()
	}
}

// wait is the gate's goroutine: it reads the connections that have
// something to read, and passes on those whose head arrived whole.
func (g *gate) wait(epoll syscall.RawConn) {
	defer close(g.done)
	events := make([]unix.EpollEvent, 128)
	var whole []*gated
	for {
		var n int
		var werr error
		err := epoll.Read(func(uintptr) bool {
			n, werr = unix.EpollWait(g.epfd, events, 0)
			return n > 0 || werr != nil // else wait, parked, for the instance to be readable
		})
		if errors.Is(werr, unix.EINTR) {
			continue
		}
		if err != nil || werr != nil {
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == int32(g.wake) {
				return
			}
			g.mu.Lock()
			e := g.byFD[ev.Fd]
			g.mu.Unlock()
			if e == nil || e.seq != ev.Pad {
				continue
			}
			got := g.read(e)
			if got == headPart {
				if e.kept && len(e.head) > 0 {
					// The next request began: its head has the time of
					// any other.
					g.mu.Lock()
					if g.byFD[e.fd] == e {
						e.kept = false
						e.list.remove(e)
						g.hold(e, time.Now())
					}
					g.mu.Unlock()
				}
				continue
			}
			g.mu.Lock()
			ours := g.release(e)
			g.mu.Unlock()
			if !ours {
				continue // closed meanwhile
			}
			if got == headGone {
				_ = e.tc.Close()
				continue
			}
			whole = append(whole, e)
		}
		for i, e := range whole {
			g.pass(e)
			whole[i] = nil
		}
		whole = whole[:0]
	}
}

// expire closes the connections whose time in the gate ran out, and sets
// the timer for the next deadline.
func (g *gate) expire() {
	now := time.Now()
	var out []*gated
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	for i := range g.waiting {
		for e := g.waiting[i].head; e != nil && !e.deadline.After(now); e = g.waiting[i].head {
			g.release(e)
			out = append(out, e)
		}
	}
	g.fires = time.Time{}
	g.arm(now)
	g.mu.Unlock()
	for _, e := range out {
		limit := limitHeaderTimeout
		if e.kept {
			limit = limitIdleTimeout
		}
		g.conns.metrics.limitHits.WithLabelValues(limit).Inc()
		_ = e.tc.Close()
	}
}

// close ends the gate: the connections in it are closed, as are those
// passed on that Accept did not take, and its goroutine ends.
func (g *gate) close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	close(g.stop)
	g.timer.Stop()
	var out []*gated
	for _, e := range g.byFD {
		out = append(out, e)
	}
	for _, e := range out {
		g.release(e)
	}
	one := [8]byte{1}
	_, _ = unix.Write(g.wake, one[:])
	g.mu.Unlock()
	<-g.done
	g.epoll.Close()
	unix.Close(g.wake)
	for _, e := range out {
		_ = e.tc.Close()
	}
	for {
		select {
		case c := <-g.ready:
			_ = c.Close()
		default:
			return
		}
	}
}

// gatedList is a line of gated connections threaded through them.
type gatedList struct{ head, tail *gated }

func (l *gatedList) pushBack(e *gated) {
	e.list, e.prev, e.next = l, l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *gatedList) remove(e *gated) {
	if l == nil || e.list != l {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.list, e.prev, e.next = nil, nil, nil
}
