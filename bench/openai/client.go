package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// client streams chats with net/http (keep-alive, HTTP/1.1) and reads the
// answers with a small SSE reader of its own: the SDK's reader decodes
// every event into typed structs, which would cost the load generator, on
// a CPU it shares with the upstream, far more than the paths it compares.
// The reader checks each answer whole: status, content type, every
// content delta against the expected text, the finish reason, the usage
// and [DONE].
type client struct {
	hc  *http.Client
	url string // the chat completions URL
}

// spec is one kind of chat: the shape its message asks the upstream for,
// and the answer's text.
type spec struct {
	shape
	want []byte
}

func newSpec(s shape) *spec { return &spec{shape: s, want: []byte(answerText(s.n))} }

// message is the chat's one message: key, which makes it unique, and the
// shape.
func (sp *spec) message(key string) string { return key + " " + sp.words() }

func newClient(url string, conns int) *client {
	return &client{
		hc: &http.Client{Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        conns,
			MaxIdleConnsPerHost: conns,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
			ForceAttemptHTTP2:   false,
		}},
		url: url,
	}
}

func (c *client) close() { c.hc.CloseIdleConnections() }

// chatSeq numbers the chats of the whole run, so that every request's
// message, the upstream's key for it, is unique.
var chatSeq atomic.Uint64

// result is what the client saw of one chat.
type result struct {
	ttft     time.Duration // from sending to the first content delta
	total    time.Duration // from sending to the end of the body
	cancelAt int64         // for a cancelled chat, when it cancelled (Unix ns)
}

var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

// chatBody is a one-message streamed chat asking for the usage.
func chatBody(key string) []byte {
	msg, _ := json.Marshal(key)
	return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":%s}],"stream":true,"stream_options":{"include_usage":true}}`, modelName, msg)
}

// chat sends one chat of sp whose message is msg and reads its answer. With
// cancel set, it cancels the chat as soon as the first content delta
// arrives (cancel must cancel ctx) and closes the connection, and
// returns when it did so.
func (c *client) chat(ctx context.Context, sp *spec, msg string, cancel context.CancelFunc) (result, error) {
	var res result
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(chatBody(msg)))
	if err != nil {
		return res, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "text/event-stream")
	start := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return res, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return res, fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(b))
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		return res, fmt.Errorf("content type %q, want text/event-stream", ct)
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(resp.Body)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()

	var (
		pos      int // bytes of the answer received
		done     bool
		finish   string
		usage    = -1
		contents int
	)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if err == io.EOF && len(line) == 0 {
				break
			}
			if err == bufio.ErrBufferFull {
				return res, errors.New("an event line longer than 16 KiB")
			}
			if err == io.EOF {
				return res, fmt.Errorf("the stream ended mid-line: %.100q", line)
			}
			return res, fmt.Errorf("reading the stream after %d content deltas: %w", contents, err)
		}
		line = bytes.TrimRight(line, "\r\n")
		data, ok := bytes.CutPrefix(line, []byte("data:"))
		if !ok {
			continue // blank line, comment, event:, id:, retry:
		}
		data = bytes.TrimPrefix(data, []byte(" "))
		if done {
			return res, fmt.Errorf("an event after [DONE]: %.100q", data)
		}
		if string(data) == "[DONE]" {
			done = true
			continue
		}
		if bytes.HasPrefix(data, []byte(`{"error"`)) {
			return res, fmt.Errorf("error event after %d content deltas: %.300s", contents, data)
		}
		if i := bytes.Index(data, []byte(`"content":`)); i >= 0 {
			s, err := jsonString(data[i+len(`"content":`):])
			if err != nil {
				return res, fmt.Errorf("content of %.100q: %w", data, err)
			}
			if len(s) > 0 {
				if !bytes.HasPrefix(sp.want[pos:], s) {
					return res, fmt.Errorf("content delta %d is %q, want the answer's bytes %d on (%.20q)", contents+1, s, pos, sp.want[pos:])
				}
				pos += len(s)
				contents++
				if contents == 1 {
					res.ttft = time.Since(start)
					if cancel != nil {
						res.cancelAt = time.Now().UnixNano()
						cancel()
						return res, nil
					}
				}
			}
		}
		if i := bytes.Index(data, []byte(`"finish_reason":"`)); i >= 0 {
			rest := data[i+len(`"finish_reason":"`):]
			if j := bytes.IndexByte(rest, '"'); j >= 0 {
				finish = string(rest[:j])
			}
		}
		if i := bytes.Index(data, []byte(`"completion_tokens":`)); i >= 0 {
			rest := data[i+len(`"completion_tokens":`):]
			j := 0
			for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
				j++
			}
			usage, _ = strconv.Atoi(string(rest[:j]))
		}
	}
	res.total = time.Since(start)
	switch {
	case pos != len(sp.want):
		return res, fmt.Errorf("the answer ended after %d of its %d bytes (%d content deltas)", pos, len(sp.want), contents)
	case finish != "stop":
		return res, fmt.Errorf("finish reason %q, want stop", finish)
	case usage != sp.n:
		return res, fmt.Errorf("usage says %d completion tokens, want %d", usage, sp.n)
	case !done:
		return res, errors.New("the stream ended without [DONE]")
	}
	return res, nil
}

// jsonString decodes the JSON string at the start of b ("" for null).
func jsonString(b []byte) ([]byte, error) {
	b = bytes.TrimLeft(b, " ")
	if bytes.HasPrefix(b, []byte("null")) {
		return nil, nil
	}
	if len(b) == 0 || b[0] != '"' {
		return nil, errors.New("not a string")
	}
	hasEscape := false
	for i := 1; i < len(b); i++ {
		switch b[i] {
		case '\\':
			hasEscape = true
			i++
		case '"':
			if !hasEscape {
				return b[1:i], nil
			}
			var s string
			if err := json.Unmarshal(b[:i+1], &s); err != nil {
				return nil, err
			}
			return []byte(s), nil
		}
	}
	return nil, errors.New("unterminated string")
}

// loadStats is what a closed-loop run measured at the client.
type loadStats struct {
	ok, errs int
	firstErr error
	ttfts    []time.Duration // sorted
	totals   []time.Duration // sorted
	elapsed  time.Duration
}

// add merges another run's numbers into s; the durations are left
// unsorted.
func (s *loadStats) add(o loadStats) {
	s.ok += o.ok
	s.errs += o.errs
	if s.firstErr == nil {
		s.firstErr = o.firstErr
	}
	s.ttfts = append(s.ttfts, o.ttfts...)
	s.totals = append(s.totals, o.totals...)
	s.elapsed += o.elapsed
}

// drainGrace bounds how long a closed-loop run waits, after its time, for
// the chats already sent; a path that takes longer has failed.
const drainGrace = 30 * time.Second

// closedLoop runs streams workers, each sending its next chat as soon as
// the last one ended, until dur has passed or limit chats were sent (0: no
// limit). Chats sent in time are waited for and counted.
func closedLoop(ctx context.Context, c *client, sp *spec, streams int, dur time.Duration, limit int) loadStats {
	start := time.Now()
	end := start.Add(dur)
	ctx, cancel := context.WithDeadline(ctx, end.Add(drainGrace))
	defer cancel()
	var sent atomic.Int64
	per := make([]loadStats, streams)
	var wg sync.WaitGroup
	for w := range per {
		wg.Go(func() {
			st := &per[w]
			for time.Now().Before(end) && ctx.Err() == nil {
				if limit > 0 && sent.Add(1) > int64(limit) {
					return
				}
				r, err := c.chat(ctx, sp, sp.message("chat "+strconv.FormatUint(chatSeq.Add(1), 10)), nil)
				if err != nil {
					st.errs++
					if st.firstErr == nil {
						st.firstErr = err
					}
					continue
				}
				st.ok++
				st.ttfts = append(st.ttfts, r.ttft)
				st.totals = append(st.totals, r.total)
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
		total.ttfts = append(total.ttfts, st.ttfts...)
		total.totals = append(total.totals, st.totals...)
	}
	slices.Sort(total.ttfts)
	slices.Sort(total.totals)
	return total
}

// percentile returns the p-th quantile (0 < p <= 1) of sorted durations,
// by the nearest-rank method.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// cancelStats is what the cancel run measured: for every chat cancelled
// after its first token, how long after the cancel the upstream noticed.
type cancelStats struct {
	cancelled int
	missed    int // cancels the upstream never saw end within hangupWait
	errs      int
	firstErr  error
	lags      []time.Duration // sorted
	// For troupe: troupe_model_cancel_seconds over the run.
	metricCount int
	metricSum   float64
}

// add merges another run's numbers into s; the lags are left unsorted.
func (s *cancelStats) add(o cancelStats) {
	s.cancelled += o.cancelled
	s.missed += o.missed
	s.errs += o.errs
	if s.firstErr == nil {
		s.firstErr = o.firstErr
	}
	s.lags = append(s.lags, o.lags...)
}

// hangupWait bounds how long the cancel run waits, after its last cancel,
// for the upstream to notice every one.
const hangupWait = 2 * time.Second

// cancelRun sends count chats one after another (or as many as fit in
// limit), each cancelled at its first content delta, gap apart, and reads
// from the upstream when each one's connection went away. The first
// warm cancels are not counted.
func cancelRun(ctx context.Context, c *client, sp *spec, upstreamBase, name string, count, warm int, gap, limit time.Duration) (cancelStats, error) {
	var st cancelStats
	at := map[string]int64{}
	end := time.Now().Add(limit)
	for i := 0; i < warm+count && time.Now().Before(end); i++ {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		key := sp.message(fmt.Sprintf("cancel %s %d", name, chatSeq.Add(1)))
		cctx, cancel := context.WithCancel(ctx)
		r, err := c.chat(cctx, sp, key, cancel)
		cancel()
		switch {
		case err != nil:
			st.errs++
			if st.firstErr == nil {
				st.firstErr = err
			}
		case r.cancelAt == 0:
			st.errs++
			if st.firstErr == nil {
				st.firstErr = errors.New("the stream ended before it could be cancelled")
			}
		case i >= warm:
			at[key] = r.cancelAt
		}
		if err := sleep(ctx, gap); err != nil {
			return st, err
		}
	}
	st.cancelled = len(at)
	var seen map[string]int64
	deadline := time.Now().Add(hangupWait)
	for {
		var err error
		if seen, err = hangups(upstreamBase); err != nil {
			return st, fmt.Errorf("reading the upstream's hang-ups: %w", err)
		}
		missing := 0
		for k := range at {
			if _, ok := seen[k]; !ok {
				missing++
			}
		}
		if missing == 0 || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return st, err
		}
	}
	for k, t := range at {
		h, ok := seen[k]
		if !ok {
			st.missed++
			continue
		}
		st.lags = append(st.lags, time.Duration(h-t))
	}
	slices.Sort(st.lags)
	return st, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
