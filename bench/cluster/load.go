package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

// chatTimeout bounds one chat: a chat that takes longer hangs, and is
// recorded as an error.
const chatTimeout = 30 * time.Second

// chat is one prepared request and the answer it must get.
type chat struct {
	body string // the urlencoded form
	want string
}

func newChat(llm, text, want string) chat {
	input, _ := json.Marshal([]map[string]any{{"msg": text, "isbot": false}})
	form := url.Values{"input": {string(input)}, "name": {llm}}
	return chat{body: form.Encode(), want: want}
}

// record is what happened to one chat.
type record struct {
	sent, done time.Time
	first      time.Time // the first byte of the answer read; zero if none
	status     int
	node       string // X-Troupe-Node
	ok         bool   // 200 and exactly the answer wanted
	cut        bool   // 200, but the answer ends with an error note
	err        string
}

func (r record) latency() time.Duration { return r.done.Sub(r.sent) }

// firstChunk is the time to the first byte of the answer, 0 without one.
func (r record) firstChunk() time.Duration {
	if r.first.IsZero() {
		return 0
	}
	return r.first.Sub(r.sent)
}

// newClient returns an HTTP client with a kept-alive connection for each
// of up to clients concurrent chats.
func newClient(clients int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		MaxIdleConns:        clients + 16,
		MaxIdleConnsPerHost: clients + 16,
		DisableCompression:  true,
		IdleConnTimeout:     time.Minute,
	}}
}

// closedLoop runs clients that each send the next chat as soon as the last
// is answered, and start none after until. Chats in flight then run to
// their end (or chatTimeout), so that none that hangs goes unrecorded. It
// returns every chat's record, by the time it was sent.
func closedLoop(ctx context.Context, hc *http.Client, endpoint string, c chat, clients int, until time.Time) []record {
	return closedLoops(ctx, hc, []loadShare{{endpoint: endpoint, clients: clients}}, c, until)
}

// loadShare is a number of clients that send their chats to one endpoint.
// With stagger, the clients start one after the other over that time rather
// than all at once, as the users of a real cluster do. In lockstep, they
// send in rounds instead: all at once, the next round once every answer of
// the last is in.
type loadShare struct {
	endpoint string
	clients  int
	stagger  time.Duration
	lockstep bool
}

// closedLoops is closedLoop with clients spread over several endpoints at
// once.
func closedLoops(ctx context.Context, hc *http.Client, shares []loadShare, c chat, until time.Time) []record {
	var mu sync.Mutex
	var all []record
	var wg sync.WaitGroup
	for _, s := range shares {
		if s.lockstep {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil && time.Now().Before(until) {
					round := make([]record, s.clients)
					var rwg sync.WaitGroup
					for i := range round {
						rwg.Go(func() { round[i] = post(ctx, hc, s.endpoint, c) })
					}
					rwg.Wait()
					mu.Lock()
					all = append(all, round...)
					mu.Unlock()
				}
			}()
			continue
		}
		for i := range s.clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if s.stagger > 0 {
					select {
					case <-time.After(s.stagger * time.Duration(i) / time.Duration(s.clients)):
					case <-ctx.Done():
						return
					}
				}
				var mine []record
				for ctx.Err() == nil && time.Now().Before(until) {
					mine = append(mine, post(ctx, hc, s.endpoint, c))
				}
				mu.Lock()
				all = append(all, mine...)
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	slices.SortFunc(all, func(a, b record) int { return a.sent.Compare(b.sent) })
	return all
}

// window is a measured stretch of a closed loop.
type window struct{ from, to time.Time }

func (w window) dur() time.Duration { return w.to.Sub(w.from) }

// measured runs a closed loop for warmup plus d and calls mark at the
// start and at the end of the measured window, which it returns with every
// record. Ramp-up and draining fall outside the window.
func measured(ctx context.Context, hc *http.Client, endpoint string, c chat, clients int, warmup, d time.Duration, mark func()) ([]record, window) {
	return measuredShares(ctx, hc, []loadShare{{endpoint: endpoint, clients: clients}}, c, warmup, d, mark)
}

// measuredShares is measured with clients spread over several endpoints.
func measuredShares(ctx context.Context, hc *http.Client, shares []loadShare, c chat, warmup, d time.Duration, mark func()) ([]record, window) {
	start := time.Now()
	w := window{from: start.Add(warmup), to: start.Add(warmup + d)}
	marked := make(chan struct{})
	go func() {
		defer close(marked)
		for _, at := range []time.Time{w.from, w.to} {
			select {
			case <-time.After(time.Until(at)):
				mark()
			case <-ctx.Done():
				return
			}
		}
	}()
	rs := closedLoops(ctx, hc, shares, c, w.to)
	<-marked
	return rs, w
}

// within returns the records of chats that ended in w (for rates) and of
// chats sent in w (for latency).
func within(rs []record, w window) (ended, sent []record) {
	for _, r := range rs {
		if !r.done.Before(w.from) && r.done.Before(w.to) {
			ended = append(ended, r)
		}
		if !r.sent.Before(w.from) && r.sent.Before(w.to) {
			sent = append(sent, r)
		}
	}
	return ended, sent
}

// post sends one chat and reads all of its answer.
func post(ctx context.Context, hc *http.Client, endpoint string, c chat) record {
	ctx, cancel := context.WithTimeout(ctx, chatTimeout)
	defer cancel()
	r := record{sent: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(c.body))
	if err != nil {
		r.err, r.done = err.Error(), time.Now()
		return r
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := hc.Do(req)
	if err != nil {
		r.err, r.done = err.Error(), time.Now()
		return r
	}
	body, err := io.ReadAll(&firstRead{r: resp.Body, at: &r.first})
	resp.Body.Close()
	r.done = time.Now()
	r.status = resp.StatusCode
	r.node = resp.Header.Get("X-Troupe-Node")
	switch {
	case err != nil:
		r.err = err.Error()
	case r.status != http.StatusOK:
		r.err = fmt.Sprintf("status %d: %s", r.status, strings.TrimSpace(string(body)))
	case string(body) == c.want:
		r.ok = true
	case strings.Contains(string(body), "[Error:"):
		r.cut = true
		r.err = strings.TrimSpace(string(body[strings.LastIndex(string(body), "[Error:"):]))
	default:
		r.err = fmt.Sprintf("wrong answer (%d bytes)", len(body))
	}
	return r
}

// firstRead notes when the first bytes of a body were read.
type firstRead struct {
	r  io.Reader
	at *time.Time
}

func (f *firstRead) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if n > 0 && f.at.IsZero() {
		*f.at = time.Now()
	}
	return n, err
}

// stats summarises the chats answered correctly.
type stats struct {
	ok, failed int
	p50, p99   time.Duration
	firstErr   string
}

func summarise(rs []record) stats {
	var s stats
	var lat []time.Duration
	for _, r := range rs {
		if r.ok {
			s.ok++
			lat = append(lat, r.latency())
			continue
		}
		s.failed++
		if s.firstErr == "" {
			s.firstErr = r.err
		}
	}
	s.p50, s.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return s
}

// percentile returns the p-th quantile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}
