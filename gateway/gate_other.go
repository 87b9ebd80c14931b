//go:build !linux

package gateway

import "net"

// gate is Linux's only (see gate_linux.go): elsewhere net/http waits for
// every request's head itself.
type gate struct{ ready chan net.Conn }

type gated struct{}

func newGate(Limits, *connLimiter) *gate { return nil }

func (*gate) add(*trackedConn, []byte) {}
func (*gate) forget(*trackedConn)      {}
func (*gate) close()                   {}
