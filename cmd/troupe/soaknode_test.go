package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// soakScraper reads the nodes' /metrics and /status.json on a connection per
// request: a kept-alive one would hold a goroutine in the node it counts.
var soakScraper = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

// scraped is one scrape of a node's /metrics: each series (name and labels
// as written) with its value.
type scraped map[string]float64

func scrapeNode(p *process) (scraped, error) {
	resp, err := soakScraper.Get(p.url("/metrics"))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := scraped{}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		line := s.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, s.Err()
}

func mustScrapeNode(t *testing.T, p *process) scraped {
	t.Helper()
	s, err := scrapeNode(p)
	if err != nil {
		t.Fatalf("scraping %s: %v", p.addr, err)
	}
	return s
}

// sum adds the series of a name whose labels include every one given
// (`outcome="failed"`).
func (s scraped) sum(name string, labels ...string) float64 {
	total := 0.0
	for k, v := range s {
		rest, ok := strings.CutPrefix(k, name)
		if !ok || rest != "" && rest[0] != '{' {
			continue
		}
		if !allOf(labels, func(l string) bool { return strings.Contains(rest, l) }) {
			continue
		}
		total += v
	}
	return total
}

func allOf[T any](xs []T, f func(T) bool) bool {
	for _, x := range xs {
		if !f(x) {
			return false
		}
	}
	return true
}

// gatewayCounters are the gateway's counters the soak checks, from one scrape.
type gatewayCounters struct {
	chats   map[[2]string]float64 // troupe_chats_total by layout and outcome
	bad     map[string]float64    // troupe_chat_bad_requests_total by reason
	limits  map[string]float64    // troupe_limit_hits_total by limit
	metrics scraped
}

func scrapeCounters(t *testing.T, p *process) gatewayCounters {
	t.Helper()
	s := mustScrapeNode(t, p)
	c := gatewayCounters{chats: map[[2]string]float64{}, bad: map[string]float64{}, limits: map[string]float64{}, metrics: s}
	for k, v := range s {
		switch {
		case strings.HasPrefix(k, "troupe_chats_total{"):
			c.chats[[2]string{labelOf(k, "layout"), labelOf(k, "outcome")}] = v
		case strings.HasPrefix(k, "troupe_chat_bad_requests_total{"):
			c.bad[labelOf(k, "reason")] = v
		case strings.HasPrefix(k, "troupe_limit_hits_total{"):
			c.limits[labelOf(k, "limit")] = v
		}
	}
	return c
}

// labelOf returns a label's value in a series as /metrics writes it.
func labelOf(scraped, name string) string {
	_, rest, ok := strings.Cut(scraped, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// counterGrowth is what the counters of both gateways grew by between two scrapes
// each.
type counterGrowth struct {
	chats  map[[2]string]int
	bad    map[string]int
	limits map[string]int
}

func growth(before, after []gatewayCounters) counterGrowth {
	d := counterGrowth{chats: map[[2]string]int{}, bad: map[string]int{}, limits: map[string]int{}}
	for i := range after {
		for k, v := range after[i].chats {
			if n := int(v - before[i].chats[k]); n != 0 {
				d.chats[k] += n
			}
		}
		for k, v := range after[i].bad {
			d.bad[k] += int(v - before[i].bad[k])
		}
		for k, v := range after[i].limits {
			d.limits[k] += int(v - before[i].limits[k])
		}
	}
	return d
}

// outcome sums the chats of an outcome over the layouts given, or all.
func (d counterGrowth) outcome(outcome string, layouts ...string) int {
	n := 0
	for k, v := range d.chats {
		if k[1] == outcome && (len(layouts) == 0 || slices.Contains(layouts, k[0])) {
			n += v
		}
	}
	return n
}

// quiesceNode waits until a node runs no chat: none in its gateway, none in
// any layout or model, none waiting for a place.
func quiesceNode(t *testing.T, m *member) {
	t.Helper()
	var last string
	if !pollUntil(30*time.Second, func() bool {
		s, err := scrapeNode(m.process)
		if err != nil {
			last = err.Error()
			return false
		}
		st, err := gatewayInFlight(m.process)
		if err != nil {
			last = err.Error()
			return false
		}
		busy := s.sum("troupe_chats_in_flight") + s.sum("troupe_chats_queued") + s.sum("troupe_actor_in_flight")
		last = fmt.Sprintf("gateway %d, layouts and models %v", st.InFlight, busy)
		return st.InFlight == 0 && busy == 0
	}) {
		t.Fatalf("%s still runs chats: %s", m.name, last)
	}
}

// gatewayStatus is the part of /status.json quiesce reads: the chats the
// gateway serves.
type gatewayStatus struct {
	InFlight int `json:"in_flight"`
}

func gatewayInFlight(p *process) (gatewayStatus, error) {
	var st gatewayStatus
	resp, err := soakScraper.Get(p.url("/status.json"))
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// pollUntil polls cond until it holds or d has passed.
func pollUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// settleNodes has every node collect its garbage and returns its heap
// and resident memory right after: each gateway returns free memory to the
// OS (a full collection) once it has been 200 ms without a chat, and at
// most every 10 s, so a chat through each node's own gateway (it runs
// there, with room) arms it. Read at once, the heap is the node's live data
// and the partly used spans the allocator keeps; read later, it holds the
// garbage made since too. These chats come after the run's counters were
// read. It then closes the connections the test keeps alive, so that no
// goroutine serving them counts.
func settleNodes(t *testing.T, c *soakClient, nodes []*member) []nodeFigures {
	t.Helper()
	var wg sync.WaitGroup
	figs := make([]nodeFigures, len(nodes))
	errs := make([]error, len(nodes))
	for i, m := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			figs[i], errs[i] = settleNode(c, m)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.closeIdle()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	return figs
}

func settleNode(c *soakClient, m *member) (nodeFigures, error) {
	s, err := scrapeNode(m.process)
	if err != nil {
		return nodeFigures{}, err
	}
	releases := s.sum("troupe_memory_releases_total")
	own := &soakClient{http: c.http, gateways: []*process{m.process}}
	rec := own.chat(context.Background(), chatSpec{n: -1, layout: "steady", api: agentForm})
	if rec.class != seenWhole || rec.node != m.name {
		return nodeFigures{}, fmt.Errorf("a chat through %s's own gateway: %s", m.name, rec)
	}
	if !pollUntil(30*time.Second, func() bool {
		s, err = scrapeNode(m.process)
		return err == nil && s.sum("troupe_memory_releases_total") > releases
	}) {
		return nodeFigures{}, fmt.Errorf("%s did not return memory to the OS after its chat", m.name)
	}
	return nodeFigures{heap: s.sum("go_memstats_heap_inuse_bytes"), live: s.sum("go_memstats_heap_alloc_bytes"),
		rss: s.sum("process_resident_memory_bytes")}, nil
}

// nodeFigures are what a node holds: goroutines (its own, memberlist's,
// protoactor's, gRPC's, net/http's), heap in use, resident memory.
type nodeFigures struct {
	goroutines float64
	// heap is the heap in use: the spans holding objects, live ones and
	// free slots; live is the objects alone.
	heap, live, rss float64
}

// freshLayouts has a node reload its layout file (SIGHUP), which replaces
// every layout with a fresh one and stops the old one. A layout's actors
// run on worker goroutines it starts as its mailboxes need them and keeps
// until it stops, so how many a node holds at rest depends on how busy it
// has been; with fresh layouts it holds none, and its goroutines can be
// counted exactly before and after the run.
func freshLayouts(t *testing.T, m *member) {
	t.Helper()
	const ok = `troupe_layout_reloads_total{result="ok"}`
	before := mustScrapeNode(t, m.process).sum(ok)
	m.hup(t)
	if !pollUntil(30*time.Second, func() bool {
		s, err := scrapeNode(m.process)
		return err == nil && s.sum(ok) > before
	}) {
		t.Fatalf("%s did not reload its layouts", m.name)
	}
}

func goroutinesOf(t *testing.T, p *process) float64 {
	t.Helper()
	return mustScrapeNode(t, p).sum("go_goroutines")
}

// restingGoroutines is how many goroutines a node runs at rest: the median
// of eleven counts over a second. At rest the count is not still: a gossip
// probe, a timer's function or a connection's goroutines come and go, one
// or two at a time, now and then one fewer; the median is what stays.
func restingGoroutines(t *testing.T, p *process) float64 {
	t.Helper()
	counts := make([]float64, 11)
	for i := range counts {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		counts[i] = goroutinesOf(t, p)
	}
	slices.Sort(counts)
	return counts[len(counts)/2]
}

// soakHeapMargin and soakLiveMargin are how far above its baseline a
// node's heap in use, and its live heap, may settle after the run, as
// shares of the baseline. Measured right after a full collection, the heap
// in use of a node at rest (40 MiB in a race detector build) ends up to
// 3.5 MiB above its baseline, after 1,500 chats and after 70,000 alike:
// maps grown to their peak, partly used spans. Its live heap, the objects
// alone, moves by at most 1 MiB either way, and node 3's new process ends
// up to 1.7 MiB from its first one's. A leak of 2 KiB a chat exceeds the
// live margin in the short run, of 45 bytes in a ten-minute run.
const (
	soakHeapMargin = 0.15
	soakLiveMargin = 0.08
)

// backToBaseline waits for a node's goroutines to come back to their
// baseline and checks its heap in use and live; when goroutines are left
// over it has the node dump them (SIGQUIT) and shows them. It returns the
// figures it ended with.
func backToBaseline(t *testing.T, m *member, base, got nodeFigures) nodeFigures {
	t.Helper()
	if !pollUntil(30*time.Second, func() bool {
		got.goroutines = restingGoroutines(t, m.process)
		return got.goroutines <= base.goroutines
	}) {
		t.Errorf("%s has %v goroutines, %v more than its baseline of %v; its goroutines:\n%s",
			m.name, got.goroutines, got.goroutines-base.goroutines, base.goroutines, goroutineDumpOf(t, m))
	}
	if got.heap > base.heap*(1+soakHeapMargin) {
		t.Errorf("%s's heap in use is %s after the run, baseline %s: more than %.0f%% above", m.name, mibs(got.heap), mibs(base.heap), 100*soakHeapMargin)
	}
	if got.live > base.live*(1+soakLiveMargin) {
		t.Errorf("%s's live heap is %s after the run, baseline %s: more than %.0f%% above", m.name, mibs(got.live), mibs(base.live), 100*soakLiveMargin)
	}
	return got
}

// goroutineDumpOf has a node print its goroutines, as SIGQUIT makes a Go
// program do, and returns them.
func goroutineDumpOf(t *testing.T, m *member) string {
	t.Helper()
	before := len(m.stderr.String())
	m.stop(syscall.SIGQUIT)
	out := m.stderr.String()[before:]
	if i := strings.Index(out, "SIGQUIT: quit"); i >= 0 {
		return out[i:]
	}
	return out
}

// loggedEnd is a gateway's log line for one chat's end.
type loggedEnd struct {
	gateway int
	outcome string
}

// waitLoggedEnds waits until the gateways have logged the end of every chat
// whose client learnt its id (a client who left does not wait for it),
// and returns the ends logged since from; a chat logged twice is an error.
func waitLoggedEnds(t *testing.T, run *ledger, gateways []*member, from []int) map[string]loggedEnd {
	t.Helper()
	var ends map[string]loggedEnd
	var dups []string
	missing := 0
	pollUntil(30*time.Second, func() bool {
		ends, dups = map[string]loggedEnd{}, nil
		for g, m := range gateways {
			for _, line := range strings.Split(m.stderr.String()[from[g]:], "\n") {
				var v struct{ Msg, Chat, Outcome string }
				if !strings.Contains(line, `"msg":"chat done"`) || json.Unmarshal([]byte(line), &v) != nil {
					continue
				}
				if prev, ok := ends[v.Chat]; ok {
					dups = append(dups, fmt.Sprintf("%s: %s on gateway %d, then %s on gateway %d", v.Chat, prev.outcome, prev.gateway+1, v.Outcome, g+1))
				}
				ends[v.Chat] = loggedEnd{g, v.Outcome}
			}
		}
		missing = 0
		for _, r := range run.records {
			if _, ok := ends[r.chatID]; r.chatID != "" && !ok {
				missing++
			}
		}
		return missing == 0
	})
	if len(dups) > 0 {
		t.Errorf("%d chats ended twice: %s", len(dups), strings.Join(dups[:min(len(dups), 10)], "; "))
	}
	return ends
}

// checkLoggedEnds matches every chat's end as its client saw it with the one its
// gateway logged: each chat with an id ended exactly once, as its client
// saw, and no gateway logged a chat no client sent.
func checkLoggedEnds(t *testing.T, run *ledger, ends map[string]loggedEnd) {
	t.Helper()
	seen := map[string]bool{}
	var wrong []string
	for _, r := range run.records {
		if r.chatID == "" {
			if r.class != seenRejected && r.class != seenBadInput && r.class != seenBroken {
				wrong = append(wrong, fmt.Sprintf("no chat id: %s", r))
			}
			continue
		}
		seen[r.chatID] = true
		end, ok := ends[r.chatID]
		want := serverOutcome[r.class]
		switch {
		case !ok:
			wrong = append(wrong, fmt.Sprintf("never counted: %s", r))
		case r.spec.gateway != end.gateway:
			wrong = append(wrong, fmt.Sprintf("counted by gateway %d: %s", end.gateway+1, r))
		case end.outcome == want:
		case r.class == seenWhole && r.abortReply == "Aborted." && end.outcome == "aborted":
			// The abort reached the chat after its last chunk, before its
			// end: the client has the whole answer, the gateway stopped it.
		default:
			wrong = append(wrong, fmt.Sprintf("counted %s: %s", end.outcome, r))
		}
	}
	for id, end := range ends {
		if !seen[id] {
			wrong = append(wrong, fmt.Sprintf("gateway %d counted chat %s (%s), which no client saw", end.gateway+1, id, end.outcome))
		}
	}
	slices.Sort(wrong)
	if len(wrong) > 0 {
		t.Errorf("%d chats ended otherwise than their clients saw:\n%s", len(wrong), strings.Join(wrong[:min(len(wrong), 20)], "\n"))
	}
}

// checkCounters checks that the counters of the gateways of nodes 1 and 2
// add up to the chats the test sent, in total and per layout, and that
// each outcome counts what the clients saw.
func checkCounters(t *testing.T, run *ledger, before, after []gatewayCounters) {
	t.Helper()
	d := growth(before, after)
	sent := map[string]int{}
	var saw [numClasses]int
	abortedWhole, bad := 0, map[string]int{}
	for _, r := range run.records {
		saw[r.class]++
		switch r.spec.bad {
		case goodRequest:
			sent[r.spec.layout]++
		case emptyHistory:
			if r.spec.api == openaiStream || r.spec.api == openaiWhole {
				bad["openai_request"]++
			} else {
				bad["input"]++
			}
		case longHistory:
			bad["history_messages"]++
		}
		if r.class == seenWhole && r.abortReply == "Aborted." {
			abortedWhole++
		}
	}
	for layout, n := range sent {
		total := 0
		for k, v := range d.chats {
			if k[0] == layout {
				total += v
			}
		}
		if total != n {
			t.Errorf("layout %s: the gateways counted %d chats, the test sent %d", layout, total, n)
		}
	}
	for k := range d.chats {
		if _, ok := sent[k[0]]; !ok {
			t.Errorf("the gateways counted chats of %s, which the test never asked for", k[0])
		}
	}
	// A chat the client aborted may still have ended completed: the abort
	// came after its end (the endpoint then says "No chat to abort.") or
	// raced its last message; a whole answer after "Aborted." may be either
	// (checkEnds tells which), so completed and aborted may trade those,
	// and only those, between them.
	completed, abortedN := d.outcome("completed"), d.outcome("aborted")
	if completed+abortedN != saw[seenWhole]+saw[seenAborted] || completed > saw[seenWhole] || completed < saw[seenWhole]-abortedWhole {
		t.Errorf("completed %d and aborted %d, for %d whole answers (%d of them after \"Aborted.\") and %d aborted ones",
			completed, abortedN, saw[seenWhole], abortedWhole, saw[seenAborted])
	}
	for _, c := range []endClass{seenFailed, seenTimedOut, seenHungUp, seenRejected} {
		if n := d.outcome(serverOutcome[c]); n != saw[c] {
			t.Errorf("the gateways counted %d chats %s, the clients saw %d", n, serverOutcome[c], saw[c])
		}
	}
	if n := d.outcome("cut"); n != 0 {
		t.Errorf("%d answers cut at MAX_ANSWER_BYTES, which no answer of the soak reaches", n)
	}
	for reason, n := range bad {
		if d.bad[reason] != n {
			t.Errorf("troupe_chat_bad_requests_total{reason=%q} grew by %d, the test sent %d", reason, d.bad[reason], n)
		}
	}
	for _, reason := range slices.Sorted(maps.Keys(d.bad)) {
		if d.bad[reason] != 0 && bad[reason] == 0 {
			t.Errorf("troupe_chat_bad_requests_total{reason=%q} grew by %d for requests the test never sent", reason, d.bad[reason])
		}
	}
	if d.limits["history_messages"] != bad["history_messages"] {
		t.Errorf("troupe_limit_hits_total{limit=\"history_messages\"} grew by %d, the test sent %d", d.limits["history_messages"], bad["history_messages"])
	}
	if d.limits["chat_timeout"] != saw[seenTimedOut] {
		t.Errorf("troupe_limit_hits_total{limit=\"chat_timeout\"} grew by %d, for %d chats that timed out", d.limits["chat_timeout"], saw[seenTimedOut])
	}
}

// soakHealthy are the layouts whose models never fail (the fallback's
// second child never does): a chat of theirs may fail only because the
// node streaming it was killed, and only narrow, with a place and a queue
// slot a node, is ever full.
var soakHealthy = []string{"steady", "fallback", "narrow", "long"}

// checkHealthyLayouts checks that chats of the healthy layouts ended well
// but for what a kill explains: at most the chats streaming on node 3 when
// it was killed (no more than the clients) end with "went away", and none
// times out. It returns how many the kills cut.
func checkHealthyLayouts(t *testing.T, run *ledger, kills int) int {
	t.Helper()
	cut := 0
	var wrong []string
	for _, r := range run.records {
		if !slices.Contains(soakHealthy, r.spec.layout) {
			continue
		}
		switch {
		case r.class == seenFailed && strings.Contains(r.why, "went away"):
			cut++
		case r.class == seenFailed, r.class == seenTimedOut,
			r.class == seenRejected && (r.spec.layout != "narrow" || r.status != http.StatusTooManyRequests):
			wrong = append(wrong, r.String())
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d chats of healthy layouts ended badly, first ones:\n%s", len(wrong), strings.Join(wrong[:min(len(wrong), 10)], "\n"))
	}
	if cut > kills*soakClients {
		t.Errorf("%d chats of healthy layouts were cut by %d kills of node 3, more than the %d clients can have had streaming there", cut, kills, kills*soakClients)
	}
	return cut
}

// checkRestartedNodeServed checks that node 3, restarted, took chats from
// the other gateways again.
func checkRestartedNodeServed(t *testing.T, run *ledger, n3 *member, restarted time.Time) {
	t.Helper()
	byGateway := map[int]int{}
	for _, r := range run.records {
		if r.node == n3.name && r.sent.After(restarted) {
			byGateway[r.spec.gateway]++
		}
	}
	if byGateway[0] == 0 || byGateway[1] == 0 {
		t.Errorf("node 3 ran %d chats of gateway 1 and %d of gateway 2 after its restart, want some of each", byGateway[0], byGateway[1])
	}
}

func mibs(b float64) string { return fmt.Sprintf("%.1f MiB", b/(1<<20)) }
