//go:build unix

package gateway

import (
	"net"
	"syscall"
)

// discardReceived reads, without waiting, what a client sent on a
// connection about to be closed, up to a bound: a firehose must not hold
// the accept loop.
func discardReceived(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 4096)
	_ = raw.Read(func(fd uintptr) bool {
		for range 4 {
			if n, err := syscall.Read(int(fd), buf); n <= 0 || err != nil {
				break
			}
		}
		return true // never wait for more
	})
}
