package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// request is one chat, as raw HTTP/1.1 on a kept-alive connection.
func request(host string) []byte {
	input, _ := json.Marshal([]map[string]any{{"msg": "hi", "isbot": false}})
	body := url.Values{"input": {string(input)}, "name": {"streams"}}.Encode()
	return fmt.Appendf(nil, "POST /v1/completion HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s",
		host, len(body), body)
}

// stream is one client: a connection, its chat, and the delays of the
// chunks it read.
type stream struct {
	conn net.Conn
	r    *bufio.Reader
	// delays of the chunks emitted in the measured window, in microseconds
	delays []int32
	chunks int
}

// open dials and sends the chat, and reads the response's head.
func open(addr string, req []byte) (*stream, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &stream{conn: c, r: bufio.NewReaderSize(c, 1024)}
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, err
	}
	status, err := s.r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("reading the status: %w", err)
	}
	if !strings.HasPrefix(status, "HTTP/1.1 200 ") {
		c.Close()
		return nil, fmt.Errorf("status %q", strings.TrimSpace(status))
	}
	chunked := false
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("reading the headers: %w", err)
		}
		line = strings.TrimSpace(line)
		if line == "" {
			break
		}
		if k, v, _ := strings.Cut(line, ":"); strings.EqualFold(k, "Transfer-Encoding") && strings.TrimSpace(v) == "chunked" {
			chunked = true
		}
	}
	if !chunked {
		c.Close()
		return nil, errors.New("the answer is not chunked")
	}
	return s, nil
}

// read reads the answer to its end. Every line of it is the time a chunk
// was emitted; a chunk emitted in the window has its delay kept.
func (s *stream) read(win *window, want int) error {
	defer s.conn.Close()
	var line []byte
	for {
		size, err := s.r.ReadString('\n')
		if err != nil {
			return fmt.Errorf("after %d chunks: %w", s.chunks, err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(size), 16, 64)
		if err != nil || n < 0 || n > 1<<20 {
			return fmt.Errorf("bad chunk size %q", size)
		}
		if n == 0 {
			break
		}
		data := make([]byte, n+2)
		if _, err := io.ReadFull(s.r, data); err != nil {
			return fmt.Errorf("after %d chunks: %w", s.chunks, err)
		}
		now := time.Now()
		if !bytes.HasSuffix(data, []byte("\r\n")) {
			return errors.New("a chunk does not end with CRLF")
		}
		line = append(line, data[:n]...)
		for {
			i := bytes.IndexByte(line, '\n')
			if i < 0 {
				break
			}
			ns, err := strconv.ParseInt(string(line[:i]), 10, 64)
			if err != nil {
				return fmt.Errorf("chunk %d is not a time: %q", s.chunks, line[:i])
			}
			line = line[i+1:]
			s.chunks++
			emitted := time.Unix(0, ns)
			if from, to := win.get(); !emitted.Before(from) && emitted.Before(to) {
				s.delays = append(s.delays, int32(min(now.Sub(emitted).Microseconds(), 1<<31-1)))
			}
		}
	}
	if _, err := s.r.ReadString('\n'); err != nil {
		return fmt.Errorf("reading the last chunk's end: %w", err)
	}
	if len(line) > 0 || s.chunks != want {
		return fmt.Errorf("%d chunks, want %d", s.chunks, want)
	}
	return nil
}
