//go:build !unix

package gateway

import "net"

// discardReceived cannot read without waiting here; a refused client may
// then see a reset rather than its 503.
func discardReceived(net.Conn) {}
