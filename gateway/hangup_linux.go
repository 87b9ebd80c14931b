//go:build linux

package gateway

import (
	"errors"
	"net"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// hangups watches the connections the gateway took over for their clients
// going away, all with one goroutine: an epoll instance reports a client
// that closed its side of the connection (EPOLLRDHUP) or a connection that
// broke (EPOLLHUP, EPOLLERR). net/http has a goroutine per connection
// blocked in a read for that. The goroutine and its epoll instance exist
// while some connection is watched, so nothing outlives the streams.
var hangups hangupWatcher

type hangupWatcher struct {
	mu      sync.Mutex
	epfd    int // the running instance's, or -1
	wake    int // an eventfd that makes the instance look at running
	running bool
	seq     int32
	watched map[int32]hangup // by file descriptor
}

// hangup is one watched connection; seq tells it apart from a later
// connection that reuses its file descriptor.
type hangup struct {
	seq   int32
	epfd  int
	gone  func()
	fired bool // gone was called, and the connection left the instance
}

// watchHangup calls gone, once at most, when the client of conn goes away,
// until the returned stop is called. stop must be called before conn is
// closed or served again; it returns what was read from conn, always
// nothing here: the epoll instance reads nothing.
func watchHangup(conn net.Conn, gone func()) (stop func() []byte) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return watchByReading(conn, gone)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return watchByReading(conn, gone)
	}
	var fd int32 = -1
	_ = raw.Control(func(f uintptr) { fd = int32(f) })
	remove, err := hangups.add(fd, gone)
	if err != nil {
		return watchByReading(conn, gone)
	}
	return func() []byte { remove(); return nil }
}

func (h *hangupWatcher) add(fd int32, gone func()) (remove func(), err error) {
	if fd < 0 {
		return nil, errors.New("no file descriptor")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.running {
		epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return nil, err
		}
		wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			unix.Close(epfd)
			return nil, err
		}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wake)}); err != nil {
			unix.Close(epfd)
			unix.Close(wake)
			return nil, err
		}
		if h.watched == nil {
			h.watched = map[int32]hangup{}
		}
		h.epfd, h.wake, h.running = epfd, wake, true
		go h.wait(epfd, wake)
	}
	h.seq++
	seq, epfd := h.seq, h.epfd
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP, Fd: fd, Pad: seq}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, int(fd), &ev); err != nil {
		h.stopIfIdle()
		return nil, err
	}
	h.watched[fd] = hangup{seq: seq, epfd: epfd, gone: onlyOnce(gone)}
	return func() { h.remove(fd, seq) }, nil
}

// remove stops watching a connection, if it is still watched.
func (h *hangupWatcher) remove(fd, seq int32) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if w, ok := h.watched[fd]; ok && w.seq == seq {
		if !w.fired {
			_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
		}
		delete(h.watched, fd)
		h.stopIfIdle()
	}
}

// stopIfIdle tells the running instance to end when nothing is watched;
// h.mu is held.
func (h *hangupWatcher) stopIfIdle() {
	if h.running && len(h.watched) == 0 {
		h.running = false
		var one = [8]byte{1}
		_, _ = unix.Write(h.wake, one[:])
	}
}

// wait is the goroutine of one epoll instance: it calls gone for the
// connections whose clients went away, and ends, closing the instance,
// when told nothing is watched any more.
func (h *hangupWatcher) wait(epfd, wake int) {
	defer unix.Close(epfd)
	defer unix.Close(wake)
	events := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		var gone []func()
		h.mu.Lock()
		for _, ev := range events[:n] {
			if ev.Fd == int32(wake) {
				var buf [8]byte
				_, _ = unix.Read(wake, buf[:])
				if !h.running || h.epfd != epfd {
					h.mu.Unlock()
					return
				}
				continue
			}
			if w, ok := h.watched[ev.Fd]; ok && w.seq == ev.Pad && w.epfd == epfd && !w.fired {
				// A hang-up stays reported: the connection leaves the
				// instance at once, and the watch when its chat ends.
				_ = unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, int(ev.Fd), nil)
				w.fired = true
				h.watched[ev.Fd] = w
				gone = append(gone, w.gone)
			}
		}
		h.mu.Unlock()
		for _, f := range gone {
			f()
		}
	}
}
