package main

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// failoverLayout is a small model: ten characters 5 ms apart, about 45 ms
// a chat, so that many chats are in flight at any moment.
const failoverLayout = "version: 1\nllm:\n  class: dummy\n  args: {content: \"0123456789\", delay: 5ms}\n  concurrency: 8\n  queue: 8\n"

const failoverAnswer = "0123456789"

// failoverResult is what the gateway's clients saw when one of the two
// nodes serving their LLM was killed (SIGKILL) or went silent (SIGSTOP,
// which to its peers looks like a partition: its sockets stay open, and
// nothing answers).
type failoverResult struct {
	signal string
	chats  int
	// threshold is the latency above which a chat counts as delayed: twice
	// the p99 before the signal, plus 50 ms.
	threshold time.Duration
	// Chats in flight at the signal or sent after it.
	affected, cut, failed, delayed int
	firstFailure                   string
	// victimAfter counts chats sent after the signal that the victim
	// answered: a SIGKILLed node cannot, a stopped one should not.
	victimAfter int
	// lastDisturbed is when, after the signal, the last chat was sent that
	// failed or was delayed; restored when the last disturbed chat ended.
	// -1: none was.
	lastDisturbed, restored time.Duration
	// noticed is when the gateway logged that it stopped routing to the
	// victim (lost connection, suspect or dead, whichever came first);
	// dead when memberlist declared it dead. -1: not logged.
	noticed, dead time.Duration
	noticedHow    string
	reroutes      float64
}

// routedAround is the time from the signal until no new chat went to the
// victim: the later of the gateway's own word and its clients' evidence.
func (r *failoverResult) routedAround() time.Duration {
	return max(r.noticed, r.lastDisturbed)
}

// failover runs a gateway node that serves another LLM and two nodes that
// serve the one its clients ask for, so every chat crosses to one of them,
// and signals one of the two under steady load.
func (b *bench) failover(ctx context.Context, sig syscall.Signal, after time.Duration) (*failoverResult, error) {
	name := map[syscall.Signal]string{syscall.SIGKILL: "SIGKILL", syscall.SIGSTOP: "SIGSTOP"}[sig]
	fmt.Fprintf(os.Stderr, "failover (%s): starting three nodes\n", name)
	gwLayout, err := b.fleet.layout("fo-gw", "version: 1\nllm:\n  class: reflect\n  concurrency: 4\n")
	if err != nil {
		return nil, err
	}
	workLayout, err := b.fleet.layout("fo", failoverLayout)
	if err != nil {
		return nil, err
	}
	prefix := map[syscall.Signal]string{syscall.SIGKILL: "kill", syscall.SIGSTOP: "stop"}[sig]
	gw, err := b.fleet.start(ctx, nodeSpec{name: prefix + "-gw", llm: "fo-gw", layout: gwLayout})
	if err != nil {
		return nil, err
	}
	defer gw.kill()
	var workers []*node
	for i := range 2 {
		w, err := b.fleet.start(ctx, nodeSpec{name: fmt.Sprintf("%s-w%d", prefix, i+1), llm: "fo", layout: workLayout, join: gw.gossipAddr()})
		if err != nil {
			return nil, err
		}
		defer w.kill()
		workers = append(workers, w)
	}
	victim, survivor := workers[0], workers[1]
	if _, err := waitAlive(ctx, 3, 10*time.Second, gw, victim, survivor); err != nil {
		return nil, err
	}
	hc := newClient(b.o.failoverClients)
	c := newChat("fo", "hi", failoverAnswer)
	url := gw.base + endpoint
	for _, w := range workers {
		if err := waitRoutes(ctx, hc, url, c, w.name, b.o.failoverClients, 10*time.Second); err != nil {
			return nil, err
		}
	}

	fmt.Fprintf(os.Stderr, "failover (%s): %d clients through %s, signal to %s after %v\n", name, b.o.failoverClients, gw.name, victim.name, b.o.steady)
	reroutes0 := gw.metric("troupe_cluster_reroutes_total")
	start := time.Now()
	type loopOut struct{ rs []record }
	done := make(chan loopOut, 1)
	go func() {
		done <- loopOut{closedLoop(ctx, hc, url, c, b.o.failoverClients, start.Add(b.o.steady+after))}
	}()
	var at time.Time
	select {
	case <-time.After(b.o.steady):
		at, err = victim.signal(sig)
	case <-ctx.Done():
		err = ctx.Err()
	}
	out := <-done
	if err != nil {
		return nil, err
	}
	// A stopped node cannot die; it is killed here so that the next
	// benchmark does not wait for it.
	victim.kill()

	r := &failoverResult{signal: name, chats: len(out.rs), lastDisturbed: -1, restored: -1, noticed: -1, dead: -1}
	r.reroutes = gw.metric("troupe_cluster_reroutes_total") - reroutes0
	var before []time.Duration
	for _, x := range out.rs {
		// The first half second warms the connections up.
		if x.ok && x.done.Before(at) && x.sent.After(start.Add(500*time.Millisecond)) {
			before = append(before, x.latency())
		}
	}
	if len(before) == 0 {
		return nil, fmt.Errorf("no chat was answered before the %s", name)
	}
	r.threshold = 2*percentile(before, 0.99) + 50*time.Millisecond
	for _, x := range out.rs {
		if x.done.Before(at) {
			if !x.ok {
				return nil, fmt.Errorf("a chat failed before the %s: %s", name, x.err)
			}
			continue
		}
		r.affected++
		disturbed := true
		switch {
		case x.cut:
			r.cut++
		case !x.ok:
			r.failed++
		case x.latency() > r.threshold:
			r.delayed++
		default:
			disturbed = false
		}
		if !x.ok && r.firstFailure == "" {
			r.firstFailure = x.err
		}
		if !x.sent.Before(at) && x.node == victim.name {
			r.victimAfter++
			disturbed = true
		}
		if !disturbed {
			continue
		}
		r.restored = max(r.restored, x.done.Sub(at))
		if !x.sent.Before(at) {
			r.lastDisturbed = max(r.lastDisturbed, x.sent.Sub(at))
		}
	}
	for _, ev := range []string{"lost the connection to a member", "member silent: no new chats for it", "member died"} {
		t, ok := gw.logEvent(ev, "member", victim.name, at)
		if !ok {
			continue
		}
		if d := t.Sub(at); r.noticed < 0 || d < r.noticed {
			r.noticed, r.noticedHow = max(d, 0), ev
		}
		if ev == "member died" {
			r.dead = max(t.Sub(at), 0)
		}
	}
	return r, nil
}
