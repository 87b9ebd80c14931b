package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/internal/agenttest"
	"github.com/troupe-llm/troupe/internal/covertest"
)

// slowLayout is a model that takes about 200ms per chat: ten characters,
// 20ms apart. Each node runs four at once and queues eight more.
const slowLayout = "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 20ms}\n  concurrency: 4\n  queue: 8\n"

const slowAnswer = "0123456789"

// member is one node of a test cluster, run as its own process.
type member struct {
	*process
	name   string
	gossip int
	env    map[string]string
}

// startMember starts a node named name on a gossip port of its own that
// joins seed (when not nil). extra are more environment settings.
func startMember(t *testing.T, name, layoutFile string, seed *member, extra ...string) *member {
	t.Helper()
	env := nodeEnv(nil, "NODE_NAME", name, "LAYOUT_CONFIG", layoutFile, "GOSSIP_PORT", strconv.Itoa(freePort(t)))
	if seed != nil {
		env["JOIN"] = "127.0.0.1:" + strconv.Itoa(seed.gossip)
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return runMember(t, name, env)
}

func runMember(t *testing.T, name string, env map[string]string) *member {
	t.Helper()
	gossip, _ := strconv.Atoi(env["GOSSIP_PORT"])
	return &member{process: startProcess(t, env), name: name, gossip: gossip, env: env}
}

func freePort(t *testing.T) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(port)
	return n
}

// metric returns the value of one series in a node's /metrics, or -1.
func (p *process) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(p.url("/metrics"))
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func (p *process) waitAlive(t *testing.T, n int) {
	t.Helper()
	waitFor(t, func() bool { return p.metric(t, `troupe_cluster_members{state="alive"}`) == float64(n) },
		fmt.Sprintf("%s to see %d alive members", p.addr, n))
}

// results of a batch of chats.
type results struct {
	mu       sync.Mutex
	byNode   map[string]int
	answers  map[string]int
	problems []string
}

func (r *results) add(node, answer string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.byNode[node]++
	r.answers[answer]++
}

func (r *results) problem(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.problems = append(r.problems, fmt.Sprintf(format, args...))
}

// runChats sends n chats through p's gateway from clients goroutines. A
// client gives up on a chat after 30s: a chat that takes that long hangs.
// after, when set, runs once after the chat numbered at is answered.
func runChats(t *testing.T, p *process, n, clients int, at int, after func()) *results {
	t.Helper()
	r := &results{byNode: map[string]int{}, answers: map[string]int{}}
	client := &http.Client{Timeout: 30 * time.Second}
	jobs := make(chan int)
	var done sync.WaitGroup
	var answered sync.Mutex
	count := 0
	for c := 0; c < clients; c++ {
		done.Add(1)
		go func() {
			defer done.Done()
			for range jobs {
				resp, err := client.PostForm(p.url("/v1/completion"), url.Values{"input": {userInput("hi")}})
				if err != nil {
					r.problem("request: %v", err)
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					r.problem("reading: %v", err)
					continue
				}
				if resp.StatusCode != http.StatusOK {
					r.problem("status %d: %q", resp.StatusCode, body)
					continue
				}
				r.add(resp.Header.Get("X-Troupe-Node"), string(body))
				answered.Lock()
				count++
				if count == at && after != nil {
					after()
				}
				answered.Unlock()
			}
		}()
	}
	for i := 0; i < n; i++ {
		jobs <- i
	}
	close(jobs)
	done.Wait()
	return r
}

func startThree(t *testing.T) (a, b, c *member) {
	t.Helper()
	layoutFile := writeTemp(t, slowLayout)
	a = startMember(t, "node-a", layoutFile, nil)
	b = startMember(t, "node-b", layoutFile, a)
	c = startMember(t, "node-c", layoutFile, a)
	for _, m := range []*member{a, b, c} {
		m.waitAlive(t, 3)
	}
	return a, b, c
}

// Three nodes join on their own, and 300 chats sent through one gateway
// run on all three.
func TestClusterSpreadsChats(t *testing.T) {
	a, _, _ := startThree(t)
	r := runChats(t, a.process, 300, 24, 0, nil)
	if len(r.problems) > 0 {
		t.Fatalf("%d chats failed, first: %s", len(r.problems), r.problems[0])
	}
	if r.answers[slowAnswer] != 300 {
		t.Fatalf("answers: %v", r.answers)
	}
	t.Logf("share of 300 chats by node: %v", r.byNode)
	for _, node := range []string{"node-a", "node-b", "node-c"} {
		if r.byNode[node] < 30 {
			t.Errorf("%s ran %d of 300 chats, want at least 30", node, r.byNode[node])
		}
	}
}

// SIGKILL of a node under load loses no chat and leaves no client hanging:
// chats queued there run elsewhere, chats streaming from it end with a
// short error, and the rest of the cluster goes on.
func TestClusterSurvivesKilledNode(t *testing.T) {
	a, _, c := startThree(t)
	// 18 clients: the two survivors have 24 places and queue slots, so
	// the chats queued on the killed node find room.
	r := runChats(t, a.process, 300, 18, 60, func() {
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Error(err)
		}
	})
	if len(r.problems) > 0 {
		t.Fatalf("%d chats got no proper answer, first: %s", len(r.problems), r.problems[0])
	}
	cut := 0
	for answer, n := range r.answers {
		switch {
		case answer == slowAnswer:
		case strings.Contains(answer, "[Error: the node running this chat went away.]"):
			cut += n
		default:
			t.Errorf("%d chats answered %q", n, answer)
		}
	}
	// Only chats streaming from the killed node at that moment may be
	// cut: at most its capacity.
	if cut > 4 {
		t.Errorf("%d chats were cut, want at most 4 (the killed node's capacity)", cut)
	}
	t.Logf("300 chats: %d cut mid-answer by the kill, by node: %v", cut, r.byNode)
	a.waitAlive(t, 2)
	after := runChats(t, a.process, 40, 8, 0, nil)
	if len(after.problems) > 0 || after.answers[slowAnswer] != 40 {
		t.Fatalf("after the kill: %v %v", after.problems, after.answers)
	}
}

// A node told to stop finishes the chats it runs for other gateways,
// leaves the cluster, and exits 0; the others take the new chats.
func TestClusterGracefulLeave(t *testing.T) {
	layoutFile := writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 50ms}\n  concurrency: 2\n  queue: 2\n")
	a := startMember(t, "node-a", layoutFile, nil)
	b := startMember(t, "node-b", layoutFile, a)
	a.waitAlive(t, 2)
	b.waitAlive(t, 2)

	stopped := make(chan int, 1)
	r := runChats(t, a.process, 8, 4, 1, func() {
		go func() { stopped <- b.stop(syscall.SIGTERM) }()
	})
	if len(r.problems) > 0 || r.answers[slowAnswer] != 8 {
		t.Fatalf("chats during the leave: %v %v", r.problems, r.answers)
	}
	if code := <-stopped; code != 0 {
		t.Fatalf("node-b exited %d", code)
	}
	a.waitAlive(t, 1)
	after := runChats(t, a.process, 6, 2, 0, nil)
	if len(after.problems) > 0 || after.byNode["node-a"] != 6 {
		t.Fatalf("after the leave: %v %v", after.problems, after.byNode)
	}
}

// With CLUSTER_KEY, gossip is encrypted: a node with another key, or none,
// cannot join; a node with the same key can.
func TestClusterKey(t *testing.T) {
	layoutFile := writeTemp(t, slowLayout)
	const key = "correct horse battery staple"
	a := startMember(t, "node-a", layoutFile, nil, "CLUSTER_KEY", key)
	wrong := startMember(t, "node-wrong", layoutFile, a, "CLUSTER_KEY", "another long passphrase")
	none := startMember(t, "node-none", layoutFile, a)
	for _, m := range []*member{wrong, none} {
		waitFor(t, func() bool { return strings.Contains(m.stderr.String(), "cannot join the cluster yet") },
			m.name+" to fail to join")
	}
	good := startMember(t, "node-good", layoutFile, a, "CLUSTER_KEY", key)
	good.waitAlive(t, 2)
	a.waitAlive(t, 2)
	for _, m := range []*member{wrong, none} {
		if n := m.metric(t, `troupe_cluster_members{state="alive"}`); n != 1 {
			t.Errorf("%s sees %v alive members, want only itself", m.name, n)
		}
	}
}

// A node speaking another version of the message protocol is refused at
// join with a clear log line, and the cluster goes on.
func TestClusterRefusesOtherProtocol(t *testing.T) {
	other := filepath.Join(t.TempDir(), "troupe-other")
	if out, err := covertest.Build(other, ".", "-tags", "troupe_other_protocol"); err != nil {
		t.Fatalf("building a node of another protocol: %v\n%s", err, out)
	}
	layoutFile := writeTemp(t, slowLayout)
	a := startMember(t, "node-a", layoutFile, nil)
	saved := binary
	binary = other
	odd := startMember(t, "node-odd", layoutFile, a)
	binary = saved
	waitFor(t, func() bool {
		return strings.Contains(a.stderr.String(), fmt.Sprintf("node node-odd speaks message protocol v999, this node v%d", actors.ProtocolVersion))
	}, "node-a to refuse node-odd with a clear log line")
	if n := a.metric(t, `troupe_cluster_members{state="alive"}`); n != 1 {
		t.Fatalf("node-a sees %v alive members", n)
	}
	if code, body := a.post(t, "/v1/completion", url.Values{"input": {userInput("x")}}); code != 200 || body != slowAnswer {
		t.Fatalf("node-a after the refusal: %d %q", code, body)
	}
	_ = odd
}

// A killed node is unregistered from the Agent by a survivor; when it comes
// back, it rejoins, registers again, and takes chats again.
func TestClusterNodeComesBack(t *testing.T) {
	agent := agenttest.Start(t)
	layoutFile := writeTemp(t, slowLayout)
	a := startMember(t, "node-a", layoutFile, nil, "AGENT_ENDPOINT", agent.URL(), "IGNORE_AGENT", "false")
	b := startMember(t, "node-b", layoutFile, a, "AGENT_ENDPOINT", agent.URL(), "IGNORE_AGENT", "false")
	a.waitAlive(t, 2)
	agent.WaitEndpoints(t, "test-llm", hasN(8), 20*time.Second)

	if err := b.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-b.exited
	bPrefix := "http://" + b.addr + "/"
	agent.WaitEndpoints(t, "test-llm", func(e []string) bool {
		for _, u := range e {
			if strings.HasPrefix(u, bPrefix) {
				return false
			}
		}
		return len(e) == 4
	}, 20*time.Second)
	a.waitAlive(t, 1)

	env := b.env
	env["PORT"] = strings.TrimPrefix(b.addr, "127.0.0.1:")
	back := runMember(t, "node-b", env)
	a.waitAlive(t, 2)
	back.waitAlive(t, 2)
	agent.WaitEndpoints(t, "test-llm", hasN(8), 20*time.Second)
	r := runChats(t, a.process, 60, 16, 0, nil)
	if len(r.problems) > 0 || r.byNode["node-b"] == 0 {
		t.Fatalf("after coming back: problems %v, by node %v", r.problems, r.byNode)
	}
}
