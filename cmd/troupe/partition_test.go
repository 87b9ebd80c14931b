//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The partition test's network lives in namespaces it creates: one per
// node, joined by a bridge in one more, which is also where the test's own
// HTTP client connects from. Nothing is configured in the host's namespace,
// so its addresses cannot clash with the machine's and no packet leaves.
const labSubnet = "10.213.7." // a /24 that exists only inside the namespaces

const (
	// routeAroundBound is how soon after the partition the gateway must
	// stop sending chats to the cut-off node: the 5 s. A member
	// that has sent no load report for 2.5 s (it reports at least once a
	// second) gets no new chats and stops counting as alive.
	routeAroundBound = 5 * time.Second
	// stuckAfter is a latency no chat reaches unless it was sent to the
	// cut-off node and waited there for the verdict: an answer takes 200
	// ms, and a full queue adds 400 ms at most.
	stuckAfter = 3 * time.Second
	// chatEvery is the pace of new chats: 50 a second, where each node
	// answers 20 (4 at a time, 200 ms each). The three nodes keep up; the
	// two the gateway still reaches after the cut do not, so it sends
	// chats to the cut-off node for as long as it counts it in, and the
	// test sees exactly when it stops.
	chatEvery = 20 * time.Millisecond
)

// netLab is a bridge and one namespace per node, named uniquely per run.
type netLab struct {
	ip     string // the ip command
	bridge string // the namespace with the bridge, and the test's client
	nodes  []string
}

// newNetLab creates the namespaces and wires n nodes to the bridge. It
// fails without the ip command. Without the rights to make namespaces (a
// developer's make test as a user who is not root) it skips, saying why;
// in CI (CI=true), which runs as root, it fails instead, so the test can
// never pass there by not running.
func newNetLab(t *testing.T, n int) *netLab {
	t.Helper()
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		t.Fatal("the partition test needs the ip command: install the Debian package iproute2")
	}
	if os.Geteuid() != 0 {
		const why = "the partition test makes network namespaces, which needs root"
		if os.Getenv("CI") == "true" {
			t.Fatal(why + ": CI must run it as root")
		}
		t.Skip(why + "; run make test as root (CI does) to include it")
	}
	prefix := fmt.Sprintf("troupe%d-%04x", os.Getpid(), rand.Uint32N(1<<16))
	lab := &netLab{ip: ipPath, bridge: prefix + "-br"}
	for i := range n {
		lab.nodes = append(lab.nodes, fmt.Sprintf("%s-n%d", prefix, i+1))
	}
	for _, ns := range append([]string{lab.bridge}, lab.nodes...) {
		if out, err := exec.Command(ipPath, "netns", "add", ns).CombinedOutput(); err != nil {
			t.Fatalf("cannot create network namespace %s (the test needs root): %v: %s", ns, err, out)
		}
		// Deleting a namespace removes its interfaces, and with them
		// the veth pairs. Cleanups run last-registered first, so the
		// nodes, started later, are killed before this runs.
		t.Cleanup(func() {
			if out, err := exec.Command(ipPath, "netns", "delete", ns).CombinedOutput(); err != nil {
				t.Errorf("deleting network namespace %s: %v: %s", ns, err, out)
			}
		})
	}
	lab.run(t, lab.bridge, "link", "set", "lo", "up")
	lab.run(t, lab.bridge, "link", "add", "br0", "type", "bridge")
	lab.run(t, lab.bridge, "addr", "add", labSubnet+"254/24", "dev", "br0")
	lab.run(t, lab.bridge, "link", "set", "br0", "up")
	for i, ns := range lab.nodes {
		port := lab.port(i)
		lab.run(t, lab.bridge, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		lab.run(t, lab.bridge, "link", "set", port, "master", "br0")
		lab.run(t, lab.bridge, "link", "set", port, "up")
		lab.run(t, ns, "link", "set", "lo", "up")
		lab.run(t, ns, "addr", "add", lab.addr(i)+"/24", "dev", "eth0")
		lab.run(t, ns, "link", "set", "eth0", "up")
	}
	return lab
}

// run runs ip inside namespace ns.
func (l *netLab) run(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := exec.Command(l.ip, append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns, strings.Join(args, " "), err, out)
	}
}

func (l *netLab) addr(i int) string { return labSubnet + strconv.Itoa(i+1) }

// port is node i's port on the bridge: the bridge's end of its veth pair.
func (l *netLab) port(i int) string { return "v" + strconv.Itoa(i+1) }

// partition takes node i's bridge port down, as if its cable were pulled:
// packets between it and the others are dropped, the others get neither an
// answer nor a reset from it, and their connections to it stay open. heal
// puts the port back.
func (l *netLab) partition(t *testing.T, i int) {
	t.Helper()
	l.run(t, l.bridge, "link", "set", l.port(i), "down")
}

func (l *netLab) heal(t *testing.T, i int) {
	t.Helper()
	l.run(t, l.bridge, "link", "set", l.port(i), "up")
}

// start runs node i in its namespace; seed, when not empty, is the gossip
// address it joins.
func (l *netLab) start(t *testing.T, i int, layoutFile, seed string) *process {
	t.Helper()
	env := map[string]string{
		"NODE_NAME":      nodeName(i),
		"LLM_NAME":       "test-llm",
		"LAYOUT_CONFIG":  layoutFile,
		"IGNORE_AGENT":   "1",
		"PUBLIC_ADDRESS": l.addr(i),
		"BIND_ADDRESS":   l.addr(i),
		"PORT":           "8123",
		"GOSSIP_PORT":    "7946",
		"REMOTE_PORT":    "8124",
	}
	if seed != "" {
		env["JOIN"] = seed
	}
	// `ip netns exec` enters the namespace and then execs the node, so
	// the process startProcess watches, and kills at cleanup, is the
	// node itself.
	node := binary
	binary = l.ip
	defer func() { binary = node }()
	return startProcess(t, env, "netns", "exec", l.nodes[i], node)
}

func nodeName(i int) string { return "node-" + strconv.Itoa(i+1) }

// client returns an HTTP client whose connections are made inside the
// bridge's namespace, where the nodes' addresses are.
func (l *netLab) client() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			DialContext:         dialIn(l.bridge),
			MaxIdleConnsPerHost: 256,
		},
	}
}

// dialIn returns a dialer that makes its sockets in network namespace ns.
// A socket stays in the namespace it was made in, so only making it needs
// a thread moved there; that thread is moved back before it serves any
// other goroutine.
func dialIn(ns string) func(context.Context, string, string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		done := make(chan result, 1)
		// Its own goroutine: one that exits still locked takes its
		// thread with it, which is the way out if the thread cannot go
		// back.
		go func() {
			runtime.LockOSThread()
			conn, back, err := dialInNamespace(ctx, ns, network, addr)
			if back {
				runtime.UnlockOSThread()
			}
			done <- result{conn, err}
		}()
		r := <-done
		return r.conn, r.err
	}
}

// dialInNamespace dials from ns on the current, locked thread and reports
// whether the thread is back in its own namespace.
func dialInNamespace(ctx context.Context, ns, network, addr string) (conn net.Conn, back bool, err error) {
	home, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, true, err
	}
	defer home.Close()
	target, err := os.Open("/run/netns/" + ns)
	if err != nil {
		return nil, true, err
	}
	defer target.Close()
	if err := setns(target); err != nil {
		return nil, true, fmt.Errorf("entering network namespace %s: %w", ns, err)
	}
	var d net.Dialer
	conn, err = d.DialContext(ctx, network, addr)
	return conn, setns(home) == nil, err
}

func setns(f *os.File) error { return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET) }

// labMetric returns one series of a node's /metrics, or -1.
func labMetric(hc *http.Client, p *process, series string) float64 {
	resp, err := hc.Get(p.url("/metrics"))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			if f, err := strconv.ParseFloat(v, 64); err == nil {
				return f
			}
		}
	}
	return -1
}

// labChat is one chat of a load run, as its client saw it.
type labChat struct {
	sent, done time.Time
	status     int
	node       string
	body       string
	err        error
}

func (c labChat) latency() time.Duration { return c.done.Sub(c.sent) }

// verdict sorts a chat: "ok" (the whole answer), "cut" (part of it and a
// short error note), "refused" (an error status with a short message), or
// a description of what is wrong with it.
func (c labChat) verdict() string {
	switch {
	case c.err != nil:
		return "no answer: " + c.err.Error()
	case c.status == http.StatusOK && c.body == slowAnswer:
		return "ok"
	case c.status == http.StatusOK && strings.HasPrefix(slowAnswer, strings.SplitN(c.body, "\n", 2)[0]) &&
		strings.HasSuffix(c.body, ".]\n") && strings.Contains(c.body, "[Error: ") && len(c.body) < 200:
		return "cut"
	case (c.status == http.StatusTooManyRequests || c.status == http.StatusServiceUnavailable) &&
		len(c.body) > 0 && len(c.body) < 200:
		return "refused"
	default:
		return fmt.Sprintf("status %d, answer %q", c.status, c.body)
	}
}

// loadUntil starts a chat to p every interval, whether or not the earlier
// ones were answered, until stop is closed, and returns them all once
// each is answered or times out. Clients that waited for their answers
// before sending the next would get stuck on the cut-off node and so stop
// asking: the gateway's choices would no longer show.
func loadUntil(hc *http.Client, p *process, interval time.Duration, stop <-chan struct{}) []labChat {
	form := url.Values{"input": {userInput("hi")}}.Encode()
	var mu sync.Mutex
	var all []labChat
	var wg sync.WaitGroup
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			wg.Wait()
			return all
		case <-tick.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := labChat{sent: time.Now()}
			resp, err := hc.Post(p.url("/v1/completion"), "application/x-www-form-urlencoded", strings.NewReader(form))
			if err == nil {
				var b []byte
				b, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				c.status, c.node, c.body = resp.StatusCode, resp.Header.Get("X-Troupe-Node"), string(b)
			}
			c.done, c.err = time.Now(), err
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
		}()
	}
}

// loadFor runs loadUntil for d.
func loadFor(hc *http.Client, p *process, interval, d time.Duration) []labChat {
	stop := make(chan struct{})
	time.AfterFunc(d, func() { close(stop) })
	return loadUntil(hc, p, interval, stop)
}

// waitLab polls cond every 20 ms for up to limit and returns when it
// became true.
func waitLab(t *testing.T, limit time.Duration, cond func() bool, what string) time.Time {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for: %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Now()
}

// Three nodes, each in its own network namespace. One is cut off from the
// others under load: the gateway stops sending it chats within the bound,
// every chat gets its whole answer or a short error (none hangs), and once
// the network heals the node rejoins and takes chats again.
func TestPartitionHeals(t *testing.T) {
	lab := newNetLab(t, 3)
	layoutFile := writeTemp(t, slowLayout)
	seed := lab.addr(0) + ":7946"
	nodes := []*process{
		lab.start(t, 0, layoutFile, ""),
		lab.start(t, 1, layoutFile, seed),
		lab.start(t, 2, layoutFile, seed),
	}
	gw := nodes[0]
	hc := lab.client()
	defer hc.CloseIdleConnections()
	const alive = `troupe_cluster_members{state="alive"}`
	aliveIs := func(p *process, n float64) func() bool {
		return func() bool { return labMetric(hc, p, alive) == n }
	}
	for i, p := range nodes {
		waitLab(t, 20*time.Second, aliveIs(p, 3), nodeName(i)+" to see 3 members alive")
	}
	// The cut-off node must have been taking chats, or the rest shows
	// nothing.
	waitLab(t, 20*time.Second, func() bool {
		for _, c := range loadFor(hc, gw, chatEvery, 500*time.Millisecond) {
			if c.node == nodeName(2) && c.verdict() == "ok" {
				return true
			}
		}
		return false
	}, "chats through node-1 to reach node-3")

	stop := make(chan struct{})
	stopLoad := sync.OnceFunc(func() { close(stop) })
	defer stopLoad() // when the test fails before the load ends
	results := make(chan []labChat, 1)
	go func() { results <- loadUntil(hc, gw, chatEvery, stop) }()
	time.Sleep(time.Second)
	// The cut counts from when the link is down, not from when the
	// command started: a chat sent while it ran may still reach node-3.
	lab.partition(t, 2)
	cutAt := time.Now()
	routedAt := waitLab(t, 30*time.Second, aliveIs(gw, 2), "node-1 to count node-3 out")
	// Chats sent after the bound must show that none goes to node-3 any
	// more, so the load runs on for a while past it.
	time.Sleep(time.Until(cutAt.Add(routeAroundBound + 2*time.Second)))
	stopLoad()
	during := <-results
	routedAfter := routedAt.Sub(cutAt)
	t.Logf("node-1 counted node-3 out %v after the partition", routedAfter.Round(time.Millisecond))
	if routedAfter > routeAroundBound {
		t.Errorf("node-1 counted node-3 out only %v after the partition, want within %v", routedAfter, routeAroundBound)
	}

	verdicts := map[string]int{} // of the chats sent after the cut
	var slowest time.Duration    // of the chats answered before the cut
	waited, lastWaited := 0, time.Duration(-1)
	var problems []string
	for _, c := range during {
		v := c.verdict()
		if v != "ok" && v != "cut" && v != "refused" {
			problems = append(problems, fmt.Sprintf("a chat sent %v after the partition: %s", c.sent.Sub(cutAt).Round(time.Millisecond), v))
		}
		if c.done.Before(cutAt) {
			slowest = max(slowest, c.latency())
		}
		if c.sent.Before(cutAt) {
			continue
		}
		verdicts[v]++
		if c.node == nodeName(2) {
			problems = append(problems, fmt.Sprintf("node-3 answered a chat sent %v after it was cut off", c.sent.Sub(cutAt)))
		}
		// A chat sent to the cut-off node waits there until node-1
		// counts it out, and is then re-routed or refused.
		if c.latency() > time.Second && !c.done.Before(routedAt.Add(-200*time.Millisecond)) {
			waited++
			lastWaited = max(lastWaited, c.sent.Sub(cutAt))
		}
		if c.latency() > stuckAfter && c.sent.After(cutAt.Add(routeAroundBound)) {
			problems = append(problems, fmt.Sprintf("a chat sent %v after the partition took %v: it went to the cut-off node", c.sent.Sub(cutAt), c.latency()))
		}
	}
	if len(problems) > 0 {
		t.Errorf("%d of %d chats around the partition went wrong; the first:\n%s", len(problems), len(during), strings.Join(problems[:min(len(problems), 5)], "\n"))
	}
	t.Logf("%d chats around the partition; those sent after the cut: %v; slowest before the cut %v; %d sent after the cut waited over 1s for node-3, the last sent %v after it",
		len(during), verdicts, slowest.Round(time.Millisecond), waited, lastWaited.Round(time.Millisecond))
	if verdicts["ok"] == 0 {
		t.Fatal("no chat was answered during the partition")
	}

	lab.heal(t, 2)
	healedAt := time.Now()
	// Both sides try to join the members they saw die once a second, so
	// they meet again at the first try after the link is back, and each
	// refutes the other's verdict. Seen: 0.82 to 1.79 s (the goal is 2 s;
	// docs/benchmarks.md); the wait is longer so that a slow machine
	// fails on a real fault only.
	for i, p := range nodes {
		waitLab(t, time.Minute, aliveIs(p, 3), nodeName(i)+" to see 3 members alive after the heal")
	}
	t.Logf("all three nodes saw each other alive %v after the heal", time.Since(healedAt).Round(time.Millisecond))
	after := loadFor(hc, gw, chatEvery, 2*time.Second)
	byNode := map[string]int{}
	for _, c := range after {
		switch v := c.verdict(); v {
		case "ok":
			byNode[c.node]++
		case "refused":
		default:
			t.Errorf("a chat after the heal: %s", v)
		}
	}
	t.Logf("chats after the heal, by node: %v", byNode)
	if byNode[nodeName(2)] == 0 {
		t.Errorf("node-3 took no chat after the heal (by node: %v)", byNode)
	}
}
