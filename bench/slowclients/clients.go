package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// mode is how a slow client holds its connection.
type mode string

const (
	modeIdle      mode = "idle"      // connects and sends nothing
	modeSlow      mode = "slow"      // sends a request head a byte at a time, never ending it
	modeKeepAlive mode = "keepalive" // sends one request, reads the answer, then nothing
)

// slowHead is what a slow client sends, a byte every tick: the start of a
// chat's head, then header lines for ever.
const (
	slowHead  = "POST /v1/completion HTTP/1.1\r\nHost: node\r\nContent-Type: application/x-www-form-urlencoded\r\n"
	slowLine  = "X-Slow: 1\r\n"
	keepAlive = "GET /health HTTP/1.1\r\nHost: node\r\n\r\n"
)

// attackers are the slow clients of one run. Each holds a connection until
// the node closes it, then opens another, as a slowloris attack does.
type attackers struct {
	addr  string
	mode  mode
	every time.Duration

	open     atomic.Int64 // connections held now
	connects atomic.Int64 // connections opened
	cutOff   atomic.Int64 // connections the node closed
	refused  atomic.Int64 // of which answered 503 at once
	dialErrs atomic.Int64
}

// client holds one connection after another until ctx ends.
func (a *attackers) client(ctx context.Context) {
	for ctx.Err() == nil {
		c, err := net.DialTimeout("tcp", a.addr, 5*time.Second)
		if err != nil {
			a.dialErrs.Add(1)
			if proc.Sleep(ctx, 100*time.Millisecond) != nil {
				return
			}
			continue
		}
		a.connects.Add(1)
		a.open.Add(1)
		a.hold(ctx, c)
		a.open.Add(-1)
		c.Close()
	}
}

// hold keeps c until the node closes it or ctx ends, waking every tick to
// send a slow client's next byte and to see whether ctx ended.
func (a *attackers) hold(ctx context.Context, c net.Conn) {
	var next []byte
	switch a.mode {
	case modeSlow:
		next = []byte(slowHead)
	case modeKeepAlive:
		if _, err := io.WriteString(c, keepAlive); err != nil {
			a.cutOff.Add(1)
			return
		}
	}
	send := func() bool {
		if a.mode != modeSlow {
			return true
		}
		if len(next) == 0 {
			next = []byte(slowLine)
		}
		_, err := c.Write(next[:1])
		next = next[1:]
		return err == nil
	}
	if !send() {
		a.cutOff.Add(1)
		return
	}
	var buf [512]byte
	answered := false
	for {
		_ = c.SetReadDeadline(time.Now().Add(a.every))
		n, err := c.Read(buf[:])
		if n > 0 && !answered {
			answered = true
			if bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 503 ")) {
				a.refused.Add(1)
			}
		}
		var ne net.Error
		switch {
		case err == nil:
		case errors.As(err, &ne) && ne.Timeout():
			if ctx.Err() != nil {
				return
			}
			if !send() {
				a.cutOff.Add(1)
				return
			}
		default:
			a.cutOff.Add(1)
			return
		}
	}
}

// latencies collects the chats of one window.
type latencies struct {
	mu       sync.Mutex
	d        []time.Duration
	errs     int
	firstErr error
}

func (l *latencies) add(d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.errs++
		if l.firstErr == nil {
			l.firstErr = err
		}
		return
	}
	l.d = append(l.d, d)
}

// sorted returns the latencies sorted, and the errors.
func (l *latencies) sorted() ([]time.Duration, int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := slices.Clone(l.d)
	slices.Sort(d)
	return d, l.errs, l.firstErr
}

// chatters are the node's other clients: each chats on a new connection,
// as the Agent does, pauses, and chats again; their latencies go to the
// window in record, when there is one.
type chatters struct {
	addr   string
	pause  time.Duration
	record atomic.Pointer[latencies]
}

var chatBody = url.Values{"input": {`[{"msg":"hi","isbot":false}]`}, "name": {"slowclients"}}.Encode()

func (c *chatters) run(ctx context.Context) {
	req := chatRequest()
	for ctx.Err() == nil {
		start := time.Now()
		err := chat(c.addr, req)
		if l := c.record.Load(); l != nil {
			l.add(time.Since(start), err)
		}
		if proc.Sleep(ctx, c.pause) != nil {
			return
		}
	}
}

// chat runs one chat on a connection of its own: connect, send, read the
// whole answer, which must be the model's.
func chat(addr string, req []byte) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(req); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 1024), nil)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || string(body) != "hi" {
		return fmt.Errorf("answer %d %q", resp.StatusCode, body)
	}
	return nil
}
