//go:build !linux

package gateway

import "net"

// watchHangup calls gone, once at most, when the client of conn goes away,
// until the returned stop is called. stop must be called before conn is
// closed or served again; it returns what was read from conn meanwhile.
func watchHangup(conn net.Conn, gone func()) (stop func() []byte) { return watchByReading(conn, gone) }
