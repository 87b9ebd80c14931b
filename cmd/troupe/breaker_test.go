package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// breakerView is what the test reads of a node's /status.json: its own
// layout's breaker, and its members' as gossiped.
type breakerView struct {
	Members []struct {
		Name    string `json:"name"`
		Layouts []struct {
			Name    string `json:"name"`
			Breaker string `json:"breaker"`
		} `json:"layouts"`
	} `json:"members"`
	Layouts []struct {
		Name    string `json:"name"`
		Breaker struct {
			State  string    `json:"state"`
			Since  time.Time `json:"since"`
			Reason string    `json:"reason"`
		} `json:"breaker"`
	} `json:"layouts"`
}

func statusOf(t *testing.T, p *process) breakerView {
	t.Helper()
	v, err := tryStatus(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func tryStatus(p *process) (breakerView, error) {
	var v breakerView
	resp, err := http.Get(p.url("/status.json"))
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// memberBreaker is the state of member's layout breaker as p's gossip
// says.
func (v breakerView) memberBreaker(member string) string {
	for _, m := range v.Members {
		if m.Name == member && len(m.Layouts) > 0 {
			return m.Layouts[0].Breaker
		}
	}
	return ""
}

// A chat of a conversation, sent to p's gateway: its status, the node
// that ran it, and the answer.
type sent struct {
	status int
	node   string
	body   string
}

func converse(t *testing.T, client *http.Client, p *process, conversation int) (sent, error) {
	resp, err := client.PostForm(p.url("/v1/completion"), url.Values{"input": {userInput("hi")}, "history_id": {strconv.Itoa(conversation)}})
	if err != nil {
		return sent{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return sent{status: resp.StatusCode, node: resp.Header.Get("X-Troupe-Node"), body: string(body)}, err
}

// Two nodes serve one LLM; node B's model breaks while gateway A spreads
// conversations over both. B's breaker opens after five failures, B's
// state reaches A by gossip, and A stops sending B chats well within a
// second, while every chat is answered once: by a model or with B's short
// error before the breaker opened, never left hanging. Mended, B is probed
// by a chat of its own gateway, closes, and A sends it chats again.
func TestBreakerRoutesAroundAFailingNode(t *testing.T) {
	broken := filepath.Join(t.TempDir(), "broken")
	a := startMember(t, "node-a", writeTemp(t, "version: 1\nllm:\n  class: dummy\n  args: {content: fine, delay: 1ms}\n  concurrency: 8\n"), nil)
	const cooldown = 4 * time.Second
	b := startMember(t, "node-b", writeTemp(t, "version: 1\nllm:\n  class: chaos\n  args: {content: fine, delay: 1ms, error: 1, while_file: "+broken+"}\n"+
		"  concurrency: 8\n  breaker: {cooldown: "+cooldown.String()+"}\n"), a)
	a.waitAlive(t, 2)
	b.waitAlive(t, 2)
	client := &http.Client{Timeout: 30 * time.Second}

	// Conversations are spread over both nodes by their hash: B runs its
	// share while its model works.
	onB := 0
	for i := 0; i < 40; i++ {
		s, err := converse(t, client, a.process, i)
		if err != nil || s.status != http.StatusOK || s.body != "fine" {
			t.Fatalf("chat %d before the failure: %+v, %v", i, s, err)
		}
		if s.node == "node-b" {
			onB++
		}
	}
	if onB == 0 {
		t.Fatal("gateway A sent none of 40 conversations to B")
	}

	// B's model breaks; chats keep coming through A, from three clients.
	writeFile(t, broken, "")
	stop := make(chan struct{})
	var mu sync.Mutex
	var chats []sent
	var problems []string
	var clients sync.WaitGroup
	for c := 0; c < 3; c++ {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for i := 1000 * (c + 1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s, err := converse(t, client, a.process, i)
				mu.Lock()
				switch {
				case err != nil:
					problems = append(problems, err.Error())
				case s.status == http.StatusOK && s.body == "fine":
				case s.status == http.StatusServiceUnavailable && s.node == "node-b" && s.body == "Error: the model server is unavailable.\n":
				default:
					problems = append(problems, strconv.Quote(s.body)+" from "+s.node+" with status "+strconv.Itoa(s.status))
				}
				chats = append(chats, s)
				mu.Unlock()
			}
		}()
	}
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		clients.Wait()
	}()

	var opened time.Time
	waitFor(t, func() bool {
		st := statusOf(t, b.process).Layouts[0].Breaker
		opened = st.Since
		return st.State == "open"
	}, "B's breaker to open")
	// From now on: when A hears of it (from A's status), and when chats
	// stop reaching B (from B's count of chats received). A reading is
	// taken at some moment between the start and the end of its request,
	// so a change seen is placed between the start of the reading before
	// and the end of the one that saw it.
	received := func() float64 { return b.metric(t, "troupe_cluster_chats_received_total") }
	window := opened.Add(2500 * time.Millisecond)
	var heardFrom, heard, lastToB, lastToBBy time.Time
	var watchers sync.WaitGroup
	watchers.Add(2)
	go func() {
		defer watchers.Done()
		for start := time.Now(); start.Before(window); start = time.Now() {
			if v, err := tryStatus(a.process); err == nil && v.memberBreaker("node-b") == "open" {
				heard = time.Now()
				return
			}
			heardFrom = start
		}
	}()
	go func() {
		defer watchers.Done()
		prev := time.Now()
		last := received()
		for start := time.Now(); start.Before(window); start = time.Now() {
			if n := received(); n != last {
				last, lastToB, lastToBBy = n, prev, time.Now()
			}
			prev = start
		}
	}()
	watchers.Wait()
	if heard.IsZero() {
		t.Fatal("A's status never showed B's breaker open")
	}
	heardFrom = maxTime(heardFrom, opened)
	lastToB, lastToBBy = maxTime(lastToB, opened), maxTime(lastToBBy, opened)
	ms := func(t time.Time) time.Duration { return t.Sub(opened).Round(time.Millisecond) }
	t.Logf("B's breaker opened at %s (%s); A heard of it %v to %v later; the last chat reached B %v to %v after it opened",
		opened.Format(time.StampMilli), statusOf(t, b.process).Layouts[0].Breaker.Reason, ms(heardFrom), ms(heard), ms(lastToB), ms(lastToBBy))
	if lastToBBy.Sub(opened) > time.Second || heard.Sub(opened) > time.Second {
		t.Errorf("A routed chats to B for up to %v and heard of its breaker up to %v after it opened, want both within a second",
			ms(lastToBBy), ms(heard))
	}

	// The next hundred chats: B gets none, A runs them all.
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(chats) }
	n := count()
	before := received()
	waitFor(t, func() bool { return count() >= n+100 }, "a hundred more chats")
	close(stop)
	clients.Wait()
	if after := received(); after != before {
		t.Errorf("B received %v chats while A knew its breaker open", after-before)
	}
	failedOnB := 0
	for i, s := range chats {
		if i >= n && (s.status != http.StatusOK || s.node != "node-a") {
			t.Errorf("chat %d after A heard of B's breaker: %+v", i, s)
		}
		if s.status != http.StatusOK {
			failedOnB++
		}
	}
	if len(problems) > 0 {
		t.Fatalf("%d chats ended badly, first: %s", len(problems), problems[0])
	}
	t.Logf("%d chats through A while B was broken: %d failed on B before its breaker opened, the rest answered; the last %d all on A",
		len(chats), failedOnB, len(chats)-n)
	if failedOnB < 5 {
		t.Errorf("%d chats failed on B, want the five that open its breaker", failedOnB)
	}
	if v := b.metric(t, `troupe_layout_breaker_opens_total{layout="test-llm"}`); v != 1 {
		t.Errorf("B's troupe_layout_breaker_opens_total %v, want 1", v)
	}
	if v := b.metric(t, `troupe_layout_breaker_state{layout="test-llm"}`); v != 2 && v != 1 {
		t.Errorf("B's troupe_layout_breaker_state %v, want open (2) or, past its cool-down, half-open (1)", v)
	}
	if v := a.metric(t, `troupe_layout_breaker_state{layout="test-llm"}`); v != 0 {
		t.Errorf("A's own breaker %v, want closed (0)", v)
	}

	// Mended, B is half-open after its cool-down; A, having room, still
	// sends it nothing, and B's own gateway's next chat is the probe.
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return b.metric(t, `troupe_layout_breaker_state{layout="test-llm"}`) == 1 }, "B's cool-down to end")
	if code, body := b.post(t, "/v1/completion", url.Values{"input": {userInput("hi")}}); code != http.StatusOK || body != "fine" {
		t.Fatalf("B's probe: %d %q", code, body)
	}
	waitFor(t, func() bool { return statusOf(t, b.process).Layouts[0].Breaker.State == "closed" }, "B's probe to close its breaker")
	waitFor(t, func() bool { return statusOf(t, a.process).memberBreaker("node-b") == "closed" }, "A to hear B closed")
	onB = 0
	for i := 0; i < 40; i++ {
		s, err := converse(t, client, a.process, i)
		if err != nil || s.status != http.StatusOK || s.body != "fine" {
			t.Fatalf("chat %d after B mended: %+v, %v", i, s, err)
		}
		if s.node == "node-b" {
			onB++
		}
	}
	if onB == 0 {
		t.Fatal("A sent B none of 40 conversations after its breaker closed")
	}
}
