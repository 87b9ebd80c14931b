package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// chat is one request the load sends over and over, with the answer it
// must get back.
type chat struct {
	body []byte // the encoded form
	want []byte
}

// wantType is the Content-Type both servers answer chats with.
const wantType = "text/plain; charset=utf-8"

// drainGrace bounds how long a closed-loop run waits, after its duration,
// for requests already sent; a server that takes longer has failed.
const drainGrace = 30 * time.Second

func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		MaxConnsPerHost:     conns,
		IdleConnTimeout:     time.Minute,
		DisableCompression:  true,
	}}
}

func check(resp *http.Response, got []byte, readErr error, want []byte) error {
	switch {
	case readErr != nil:
		return fmt.Errorf("reading the answer: %w", readErr)
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("status %d: %.200s", resp.StatusCode, got)
	case resp.Header.Get("Content-Type") != wantType:
		return fmt.Errorf("content type %q, want %q", resp.Header.Get("Content-Type"), wantType)
	case !bytes.Equal(got, want):
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		return fmt.Errorf("answer differs from the expected one at byte %d of %d (got %d bytes)", i, len(want), len(got))
	}
	return nil
}

// loadStats is what a closed-loop phase measured on the client side.
type loadStats struct {
	ok, errs  int
	firstErr  error
	latencies []time.Duration
	elapsed   time.Duration
}

// closedLoop runs one worker per connection, each sending its next chat as
// soon as the previous one is answered, for dur. Chats sent before the end
// are waited for (up to drainGrace) and counted.
func closedLoop(ctx context.Context, conns []*rawConn, want []byte, dur time.Duration) loadStats {
	start := time.Now()
	end := start.Add(dur)
	ctx, cancel := context.WithDeadline(ctx, end.Add(drainGrace))
	defer cancel()
	for _, rc := range conns {
		rc.setDeadline(end.Add(drainGrace))
	}
	stop := context.AfterFunc(ctx, func() {
		for _, rc := range conns {
			rc.interrupt()
		}
	})
	defer stop()

	per := make([]loadStats, len(conns))
	var wg sync.WaitGroup
	for i, rc := range conns {
		wg.Go(func() {
			st := &per[i]
			st.latencies = make([]time.Duration, 0, 4096)
			for time.Now().Before(end) && ctx.Err() == nil {
				lat, err := rc.post(ctx, want)
				if err != nil {
					st.errs++
					if st.firstErr == nil {
						st.firstErr = err
					}
					continue
				}
				st.ok++
				st.latencies = append(st.latencies, lat)
			}
		})
	}
	wg.Wait()

	total := loadStats{elapsed: time.Since(start)}
	for _, st := range per {
		total.ok += st.ok
		total.errs += st.errs
		if total.firstErr == nil {
			total.firstErr = st.firstErr
		}
		total.latencies = append(total.latencies, st.latencies...)
	}
	slices.Sort(total.latencies)
	return total
}

// dialAll prepares n connections that send c to url.
func dialAll(url string, c chat, n int) ([]*rawConn, error) {
	conns := make([]*rawConn, n)
	for i := range conns {
		rc, err := newRawConn(url, c)
		if err != nil {
			return nil, err
		}
		conns[i] = rc
	}
	return conns, nil
}

func closeAll(conns []*rawConn) {
	for _, rc := range conns {
		rc.close()
	}
}

// percentile returns the p-th quantile (0 < p <= 1) of sorted latencies,
// by the nearest-rank method.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// streamStats is what the many-streams scenario measured.
type streamStats struct {
	streams  int
	ok, errs int
	firstErr error
	idleRSS  int64
	heldRSS  int64 // the peak while every stream was open
	held     bool  // whether every stream was open at once
	elapsed  time.Duration
}

// holdStreams opens n chats at once on a server whose model answers slowly,
// waits until every one has its response headers (so that each is streaming
// in the node), samples the server's RSS for sampleFor, then reads every
// answer to its end and checks it. The model must take well over sampleFor
// per answer, so that no stream ends, and frees its memory, while sampled.
func holdStreams(ctx context.Context, srv *server, c chat, n int, sampleFor, limit time.Duration) (streamStats, error) {
	st := streamStats{streams: n}
	idle, err := proc.RSS(srv.pid)
	if err != nil {
		return st, err
	}
	st.idleRSS = idle

	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	hc := newClient(n)
	defer hc.CloseIdleConnections()

	start := time.Now()
	var open atomic.Int64
	allOpen := make(chan struct{})
	var mu sync.Mutex
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		st.errs++
		if st.firstErr == nil {
			st.firstErr = err
		}
	}
	// Failed streams count as open, so that one failure does not leave
	// the wait below to its timeout.
	opened := func() {
		if open.Add(1) == int64(n) {
			close(allOpen)
		}
	}
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.url, bytes.NewReader(c.body))
			if err != nil {
				opened()
				fail(err)
				return
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := hc.Do(req)
			opened()
			if err != nil {
				fail(err)
				return
			}
			defer resp.Body.Close()
			var buf bytes.Buffer
			_, err = buf.ReadFrom(resp.Body)
			if err := check(resp, buf.Bytes(), err, c.want); err != nil {
				fail(err)
				return
			}
			mu.Lock()
			st.ok++
			mu.Unlock()
		})
	}

	select {
	case <-allOpen:
		st.held = true
		sampler := sampleRSS(srv.pid, 20*time.Millisecond)
		timer := time.NewTimer(sampleFor)
		select {
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		st.heldRSS = sampler.stop()
	case <-ctx.Done():
	}
	wg.Wait()
	st.elapsed = time.Since(start)
	if err := ctx.Err(); err != nil && st.ok < n {
		return st, fmt.Errorf("streams did not finish within %v: %w", limit, err)
	}
	if !st.held {
		return st, errors.New("the streams were never all open at once")
	}
	return st, nil
}

// warmStreams opens n streams, waits for each to start answering, then
// hangs up, which the node must handle as a cancelled chat.
func warmStreams(ctx context.Context, srv *server, c chat, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hc := newClient(n)
	defer hc.CloseIdleConnections()
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.url, bytes.NewReader(c.body))
			if err != nil {
				errs <- err
				return
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := hc.Do(req)
			if err != nil {
				errs <- err
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("warm-up stream: status %d", resp.StatusCode)
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs
}
