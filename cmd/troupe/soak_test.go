package main

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// soakDuration turns the soak's short run into a long one:
//
//	go test -race -run TestSoak -timeout 30m ./cmd/troupe -soak.duration=10m
var soakDuration = flag.Duration("soak.duration", 0, "run TestSoak's load for this long instead of its short run of soakChats chats")

const (
	// soakChats is the short run's load: 15 to 35 s under -race on two
	// busy cores, the whole test about a minute with its three nodes'
	// start, warm-up and measurements. soakWarmup chats of the same mix
	// come before the baselines.
	soakChats  = 1500
	soakWarmup = 150
	// soakClients is how many chats are open at once: enough to fill the
	// narrow layout's places and queues and to have chats streaming on
	// node 3 whenever it is killed.
	soakClients = 24
	// soakChatTimeout bounds the hanging chats (CHAT_TIMEOUT). Every other
	// chat ends well before it, even crawling, even when the machine stops
	// every node for seconds: a long run on two cores shared with other
	// work saw all three silent for 2.7 s at once.
	soakChatTimeout = 10 * time.Second
	// soakMaxMessages is MAX_HISTORY_MESSAGES, so that a few chats can be
	// refused by a limit.
	soakMaxMessages = 40
)

// The soak's layouts: healthy ones next to chaos models failing in every
// way, and a fallback. The answers differ so that a client can tell a
// whole one; long's is long enough (80 characters, 10 ms apart) that a
// client who leaves or aborts after its first chunk always does so while
// the model still generates.
var soakAnswers = map[string]string{
	"steady":    "Steady answers, calmly given.",
	"flaky":     "Flaky answers, sometimes.",
	"cutting":   "Cutting answers stop midway, now and then.",
	"fallback":  "Fallback answers, always.",
	"narrow":    "Narrow answers, one at a time.",
	"long":      "Long answers stream for a while, so that a client can leave or abort them midway.",
	"breakable": "Breakable answers, while mended.",
	"crashloop": "Crash-looping answers, never seen.",
}

// soakLayouts is the layout file; %s is the breakable model's while_file.
// The chaos models draw from random seeds: a seeded one that panics is
// replaced by an instance drawing the same sequence again, which turns a
// probability into a panic every k-th chat.
const soakLayouts = `version: 2
layouts:
  steady:
    model: chaos
    args: {content: "Steady answers, calmly given.", delay: 2ms}
  flaky:
    # Fails before its first chunk: panics, errors, overloads (the gateway
    # tries another node), hangs until CHAT_TIMEOUT; or crawls.
    model: chaos
    args: {content: "Flaky answers, sometimes.", delay: 2ms, panic: 0.02, error: 0.08, overload: 0.05, hang: 0.02, slow: 0.1, slow_delay: 30ms}
  cutting:
    # Fails after six characters: the answer ends with a short note.
    model: chaos
    args: {content: "Cutting answers stop midway, now and then.", delay: 2ms, after: 6, panic: 0.02, error: 0.1, hang: 0.02}
  fallback:
    fallback:
      - {model: chaos, args: {content: "Fallback answers, always.", delay: 2ms, error: 0.3, overload: 0.1}}
      - {model: chaos, args: {content: "Fallback answers, always.", delay: 2ms}}
  narrow:
    # One place and one queue slot a node: bursts are refused with 429.
    model: chaos
    args: {content: "Narrow answers, one at a time.", delay: 5ms}
    concurrency: 1
    queue: 1
  long:
    model: chaos
    args: {content: "Long answers stream for a while, so that a client can leave or abort them midway.", delay: 10ms}
    concurrency: 16
  breakable:
    # Fails while the test breaks it: its breaker opens, probes, closes.
    model: chaos
    args: {content: "Breakable answers, while mended.", delay: 2ms, error: 1, while_file: %q}
    breaker: {failures: 3, cooldown: 1s, max_cooldown: 2s}
  crashloop:
    # Every instance panics on every chat: past the restart budget the
    # layout leaves rotation, comes back after 10 s, and crashes again.
    model: chaos
    args: {content: "Crash-looping answers, never seen.", crash_loop: 1000000000}
`

// soakMix is the share of each kind of chat, out of 100.
var soakMix = []struct {
	weight int
	layout string
	client clientKind
	bad    badKind
}{
	{24, "steady", readsAll, goodRequest},
	{14, "flaky", readsAll, goodRequest},
	{10, "cutting", readsAll, goodRequest},
	{10, "fallback", readsAll, goodRequest},
	{8, "narrow", readsAll, goodRequest},
	{4, "long", readsAll, goodRequest},
	{8, "long", hangsUpMidway, goodRequest},
	{8, "long", abortsMidway, goodRequest},
	{6, "breakable", readsAll, goodRequest},
	{4, "crashloop", readsAll, goodRequest},
	{2, "steady", readsAll, emptyHistory},
	{2, "steady", readsAll, longHistory},
}

// TestSoak runs thousands of chats over three nodes while models fail in
// every way, clients leave and abort, and node 3 is killed and restarted;
// then every chat must have ended exactly once, the counters must add up,
// and every node must be back to its goroutines and memory of before.
func TestSoak(t *testing.T) {
	dir := t.TempDir()
	brokenFile := filepath.Join(dir, "broken")
	layoutFile := filepath.Join(dir, "soak.yaml")
	writeFile(t, layoutFile, fmt.Sprintf(soakLayouts, brokenFile))
	settings := []string{
		"CHAT_TIMEOUT", soakChatTimeout.String(),
		"MAX_HISTORY_MESSAGES", fmt.Sprint(soakMaxMessages),
		// Each chat's end, with its id and outcome, one JSON line: the
		// test matches it to what its client saw.
		"DEBUG", "true",
		"LOG_FORMAT", "json",
	}
	n1 := startMember(t, "soak-1", layoutFile, nil, settings...)
	n2 := startMember(t, "soak-2", layoutFile, n1, settings...)
	n3 := startMember(t, "soak-3", layoutFile, n1, settings...)
	nodes := []*member{n1, n2, n3}
	for _, m := range nodes {
		m.waitAlive(t, 3)
	}
	client := newSoakClient(n1.process, n2.process)
	defer client.closeIdle()

	// Warm-up: the same mix, a burst on each layout, then a chat from each
	// gateway to each node, so that every connection and series the run
	// uses exists before the baselines.
	seed := rand.Uint64()
	t.Logf("soak seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	warm := runLoad(context.Background(), client, newLoadPlan(rng, soakWarmup, 0, nil, brokenFile))
	if bad := warm.brokenChats(); len(bad) > 0 {
		t.Fatalf("warm-up: %d chats got no proper answer, first: %s", len(bad), bad[0])
	}
	for _, layout := range slices.Sorted(maps.Keys(soakAnswers)) {
		client.burst(t, layout, 3*soakClients)
	}
	for g := range client.gateways {
		for _, m := range nodes {
			client.reach(t, g, m.name)
		}
	}
	for _, m := range nodes {
		quiesceNode(t, m)
	}
	base := settleNodes(t, client, nodes)
	for i, m := range nodes {
		freshLayouts(t, m)
		base[i].goroutines = restingGoroutines(t, m.process)
	}
	before := []gatewayCounters{scrapeCounters(t, n1.process), scrapeCounters(t, n2.process)}
	logFrom := []int{len(n1.stderr.String()), len(n2.stderr.String())}

	// The run.
	duration := *soakDuration
	cycles := []*killCycle{{at: 0.35, hold: 0.7}}
	if duration > 0 {
		cycles = []*killCycle{{at: 0.2, hold: 0.4}, {at: 0.45, hold: 0.65, afterDeath: true}, {at: 0.7, hold: 0.9}}
	}
	for _, c := range cycles {
		c.reached, c.back = make(chan struct{}), make(chan struct{})
	}
	plan := newLoadPlan(rng, soakChats, duration, cycles, brokenFile)
	ctx, cancel := context.WithCancel(context.Background())
	loaded := make(chan *ledger, 1)
	go func() { loaded <- runLoad(ctx, client, plan) }()
	var run *ledger
	defer func() {
		// A failure below leaves the load running: stop it and wait.
		cancel()
		if run == nil {
			<-loaded
		}
	}()
	var restarts []time.Time
	for _, c := range cycles {
		select {
		case <-c.reached:
		case run = <-loaded:
		}
		if run != nil {
			break
		}
		n3 = killAndRestart(t, n3, c.afterDeath, n1, n2)
		nodes[2] = n3
		restarts = append(restarts, time.Now())
		close(c.back)
	}
	if run == nil {
		run = <-loaded
	}
	cancel()
	client.closeIdle()
	if len(restarts) == 0 {
		t.Fatal("the load ended before node 3 was killed")
	}

	// Every chat ended exactly once, as its client saw it and as the
	// gateways counted it.
	if bad := run.brokenChats(); len(bad) > 0 {
		t.Errorf("%d chats got no proper answer, first ones:\n%s", len(bad), strings.Join(bad[:min(len(bad), 10)], "\n"))
	}
	tally := run.tally()
	for _, m := range nodes {
		quiesceNode(t, m)
	}
	ends := waitLoggedEnds(t, run, []*member{n1, n2}, logFrom)
	after := []gatewayCounters{scrapeCounters(t, n1.process), scrapeCounters(t, n2.process)}
	checkLoggedEnds(t, run, ends)
	checkCounters(t, run, before, after)
	cut := checkHealthyLayouts(t, run, len(restarts))
	checkRestartedNodeServed(t, run, n3, restarts[len(restarts)-1])

	// Every node is back to its baseline, and serves.
	settled := settleNodes(t, client, nodes)
	var report []string
	for i, m := range nodes {
		freshLayouts(t, m)
		got := backToBaseline(t, m, base[i], settled[i])
		report = append(report, fmt.Sprintf("%s goroutines %d→%d heap %s→%s (live %s→%s) rss %s→%s", m.name,
			int(base[i].goroutines), int(got.goroutines), mibs(base[i].heap), mibs(got.heap),
			mibs(base[i].live), mibs(got.live), mibs(base[i].rss), mibs(got.rss)))
	}
	t.Logf("soak: %d chats in %v (%.0f/s), node 3 killed %d× (%d chats of healthy layouts cut); clients saw %s; %s",
		len(run.records), run.took.Round(time.Second), float64(len(run.records))/run.took.Seconds(), len(restarts), cut,
		tally, strings.Join(report, "; "))
}

// killCycle is one SIGKILL and restart of node 3: the load reaches at (a
// share of the run), the test kills the node, and the load holds at hold
// until the node is back, so that it takes chats again before the end.
type killCycle struct {
	at, hold float64
	// afterDeath restarts the node once the survivors have declared it
	// dead; otherwise it restarts at once, as a supervisor would, and
	// comes back under its name before they do.
	afterDeath bool
	reached    chan struct{} // closed by the load at at
	back       chan struct{} // closed by the test when node 3 is back
}

// killAndRestart SIGKILLs node 3 under load, restarts it on the same
// gossip port (at once, or once the survivors declared it dead), and waits
// until all three see each other.
func killAndRestart(t *testing.T, n3 *member, afterDeath bool, n1, n2 *member) *member {
	t.Helper()
	if err := n3.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-n3.done
	if afterDeath {
		for _, m := range []*member{n1, n2} {
			waitFor(t, func() bool { return m.metric(t, `troupe_cluster_members{state="dead"}`) == 1 }, m.name+" to declare node 3 dead")
		}
	}
	n3 = runMember(t, n3.name, n3.env)
	for _, m := range []*member{n1, n2, n3} {
		m.waitAlive(t, 3)
	}
	return n3
}

// loadPlan draws the soak's chats: what each is, when the breakable model
// breaks and mends, and when node 3 is killed.
type loadPlan struct {
	rng        *rand.Rand
	chats      int           // the run's length in chats, when duration is 0
	duration   time.Duration // the run's length in time
	cycles     []*killCycle
	brokenFile string
}

func newLoadPlan(rng *rand.Rand, chats int, duration time.Duration, cycles []*killCycle, brokenFile string) *loadPlan {
	return &loadPlan{rng: rng, chats: chats, duration: duration, cycles: cycles, brokenFile: brokenFile}
}

// progress is the share of the run done after sent chats.
func (p *loadPlan) progress(sent int, start time.Time) float64 {
	if p.duration > 0 {
		return float64(time.Since(start)) / float64(p.duration)
	}
	return float64(sent) / float64(p.chats)
}

func (p *loadPlan) draw(n int) chatSpec {
	x := p.rng.IntN(100)
	for _, m := range soakMix {
		if x < m.weight {
			return p.spec(n, m.layout, m.client, m.bad)
		}
		x -= m.weight
	}
	panic("soakMix does not add up to 100")
}

func (p *loadPlan) spec(n int, layout string, client clientKind, bad badKind) chatSpec {
	s := chatSpec{n: n, gateway: p.rng.IntN(2), layout: layout, client: client, bad: bad}
	// Most conversations stick to a node picked by their key, spreading
	// chats over all three; the others prefer the gateway's own node.
	if p.rng.IntN(100) < 85 {
		s.key = fmt.Sprintf("soak-%d", n)
	}
	x := p.rng.IntN(100)
	switch {
	case client == abortsMidway:
		s.api = agentForm // the abort endpoint is the Agent's
	case client == hangsUpMidway && x < 60, client == readsAll && x < 55:
		s.api = agentForm
	case client == hangsUpMidway:
		s.api = openaiStream
	case x < 65:
		s.api = agentMultipart
	case x < 85:
		s.api = openaiStream
	default:
		s.api = openaiWhole
	}
	return s
}

// runLoad sends the plan's chats from soakClients clients and returns what
// each saw. It breaks the breakable model every other tenth of the run,
// and signals the kill cycles.
func runLoad(ctx context.Context, c *soakClient, plan *loadPlan) *ledger {
	l := &ledger{}
	jobs := make(chan chatSpec)
	var wg sync.WaitGroup
	for range soakClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for spec := range jobs {
				l.add(c.chat(ctx, spec))
			}
		}()
	}
	start := time.Now()
	isBroken := false
	// Cycles whose point the load has reached, and those it has waited
	// for at their hold point.
	reached, held := 0, 0
	cycles := plan.cycles
dispatch:
	for n := 0; ; n++ {
		p := plan.progress(n, start)
		if p >= 1 || ctx.Err() != nil {
			break
		}
		if want := int(p*10)%2 == 1 && p < 0.9; want != isBroken {
			isBroken = want
			if err := toggleFile(plan.brokenFile, isBroken); err != nil {
				l.problem("breaking the model: %v", err)
			}
		}
		for reached < len(cycles) && p >= cycles[reached].at {
			close(cycles[reached].reached)
			reached++
		}
		for held < reached && p >= cycles[held].hold {
			select {
			case <-cycles[held].back:
				held++
			case <-ctx.Done():
				break dispatch
			}
		}
		select {
		case jobs <- plan.draw(n):
		case <-ctx.Done():
			break dispatch
		}
	}
	close(jobs)
	wg.Wait()
	l.took = time.Since(start)
	if isBroken {
		if err := toggleFile(plan.brokenFile, false); err != nil {
			l.problem("mending the model: %v", err)
		}
	}
	return l
}

func toggleFile(path string, exists bool) error {
	if exists {
		return os.WriteFile(path, nil, 0o644)
	}
	return os.Remove(path)
}
