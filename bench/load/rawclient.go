package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"
)

// rawConn is one keep-alive HTTP/1.1 connection that sends a prepared
// request and parses just enough of the answer to check it. The load
// generator has one CPU, as the server does; net/http's client costs about
// as much per chat as the bare server, so with it the generator, not the
// server, would set the pace of the fastest runs.
type rawConn struct {
	addr string
	req  []byte
	r    *bufio.Reader
	body []byte

	// mu guards conn against interrupt, which runs on another goroutine.
	mu          sync.Mutex
	conn        net.Conn
	interrupted bool
}

// newRawConn prepares c's request to rawURL; it dials on first use.
func newRawConn(rawURL string, c chat) (*rawConn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	req := fmt.Appendf(nil, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n",
		u.RequestURI(), u.Host, len(c.body))
	return &rawConn{addr: u.Host, req: append(req, c.body...)}, nil
}

func (rc *rawConn) close() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.conn != nil {
		rc.conn.Close()
		rc.conn = nil
	}
}

// setDeadline bounds the current connection's reads and writes; later
// connections take their deadline from post's context.
func (rc *rawConn) setDeadline(t time.Time) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.conn != nil && !rc.interrupted {
		_ = rc.conn.SetDeadline(t)
	}
}

// interrupt makes a post in progress, and every later one, fail at once:
// reads and writes on a net.Conn do not watch a context.
func (rc *rawConn) interrupt() {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.interrupted = true
	if rc.conn != nil {
		_ = rc.conn.SetDeadline(time.Unix(1, 0))
	}
}

// post sends the request and reads the whole answer, which it checks
// against want; the duration is until the answer's last byte.
func (rc *rawConn) post(ctx context.Context, want []byte) (time.Duration, error) {
	start := time.Now()
	if rc.conn == nil {
		conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", rc.addr)
		if err != nil {
			return 0, err
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		rc.mu.Lock()
		rc.conn = conn
		if rc.interrupted {
			_ = conn.SetDeadline(time.Unix(1, 0))
		}
		rc.mu.Unlock()
		if rc.r == nil {
			rc.r = bufio.NewReaderSize(conn, 16<<10)
		} else {
			rc.r.Reset(conn)
		}
	}
	status, ctype, keep, err := rc.exchange()
	elapsed := time.Since(start)
	if err != nil || !keep {
		rc.close()
	}
	if err != nil {
		return 0, err
	}
	switch {
	case status != 200:
		return 0, fmt.Errorf("status %d: %.200s", status, rc.body)
	case ctype != wantType:
		return 0, fmt.Errorf("content type %q, want %q", ctype, wantType)
	case !bytes.Equal(rc.body, want):
		return 0, fmt.Errorf("answer differs from the expected one (got %d bytes, want %d)", len(rc.body), len(want))
	}
	return elapsed, nil
}

var errMalformed = errors.New("malformed HTTP response")

// exchange writes the request and reads the response into rc.body.
func (rc *rawConn) exchange() (status int, ctype string, keep bool, err error) {
	if _, err := rc.conn.Write(rc.req); err != nil {
		return 0, "", false, err
	}
	line, err := rc.r.ReadSlice('\n')
	if err != nil {
		return 0, "", false, err
	}
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
		return 0, "", false, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	status, err = strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, "", false, fmt.Errorf("%w: status line %q", errMalformed, line)
	}
	length, chunked := -1, false
	keep = true
	for {
		line, err := rc.r.ReadSlice('\n')
		if err != nil {
			return 0, "", false, err
		}
		line = bytes.TrimRight(line, "\r\n")
		if len(line) == 0 {
			break
		}
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return 0, "", false, fmt.Errorf("%w: header %q", errMalformed, line)
		}
		value = bytes.TrimSpace(value)
		switch {
		case bytes.EqualFold(name, []byte("Content-Length")):
			if length, err = strconv.Atoi(string(value)); err != nil || length < 0 {
				return 0, "", false, fmt.Errorf("%w: Content-Length %q", errMalformed, value)
			}
		case bytes.EqualFold(name, []byte("Transfer-Encoding")):
			chunked = bytes.EqualFold(value, []byte("chunked"))
		case bytes.EqualFold(name, []byte("Content-Type")):
			ctype = string(value)
		case bytes.EqualFold(name, []byte("Connection")):
			keep = !bytes.EqualFold(value, []byte("close"))
		}
	}
	rc.body = rc.body[:0]
	switch {
	case chunked:
		err = rc.readChunked()
	case length >= 0:
		err = rc.readN(length)
	default:
		return 0, "", false, fmt.Errorf("%w: neither Content-Length nor chunked", errMalformed)
	}
	return status, ctype, keep, err
}

func (rc *rawConn) readN(n int) error {
	start := len(rc.body)
	rc.body = slices.Grow(rc.body, n)[:start+n]
	_, err := io.ReadFull(rc.r, rc.body[start:])
	return err
}

func (rc *rawConn) readChunked() error {
	for {
		line, err := rc.r.ReadSlice('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		n, err := strconv.ParseUint(string(line), 16, 32)
		if err != nil {
			return fmt.Errorf("%w: chunk size %q", errMalformed, line)
		}
		if n == 0 {
			// Trailers, if any, then the empty line.
			for {
				line, err := rc.r.ReadSlice('\n')
				if err != nil {
					return err
				}
				if len(bytes.TrimRight(line, "\r\n")) == 0 {
					return nil
				}
			}
		}
		if err := rc.readN(int(n)); err != nil {
			return err
		}
		if _, err := rc.r.Discard(2); err != nil {
			return err
		}
	}
}
