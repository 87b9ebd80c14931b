package main

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// runResult is what one mode's run measured.
type runResult struct {
	mode mode

	idleRSS, heldRSS, afterRSS int64
	idleGo, heldGo             series // /metrics idle, and at mid-hold
	held0, held1               series // /metrics at the start and the end of the hold
	opening                    time.Duration
	held                       float64 // the node's connections at mid-hold
	connects, cutOff, refused  int64   // over the hold
	dialErrs                   int64
	cpu                        time.Duration // the node's, over the hold
	others                     time.Duration // other processes' on the node's CPU, over the hold
	before, with, after        *latencies
}

// measure runs one mode: a baseline of chats alone, then the slow clients
// opened over the ramp and held with the chats going on, then the chats
// alone again once the slow clients have gone.
func measure(ctx context.Context, o options, n *node, m mode) (*runResult, error) {
	r := &runResult{mode: m, before: &latencies{}, with: &latencies{}, after: &latencies{}}
	if err := proc.WaitQuiet(ctx, nodeCPU, o.quiet); err != nil {
		return nil, err
	}
	fmt.Fprintf(os.Stderr, "%s: warming up...\n", m)
	for range 50 {
		if err := chat(n.addr, chatRequest()); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	// The node returns what the warm-up freed to the OS once chats stop.
	if err := proc.Sleep(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	var err error
	if r.idleRSS, err = proc.RSS(n.Pid); err != nil {
		return nil, err
	}
	if r.idleGo, err = n.scrape(); err != nil {
		return nil, err
	}

	chatCtx, stopChats := context.WithCancel(ctx)
	ch := &chatters{addr: n.addr, pause: o.pause}
	var chatting sync.WaitGroup
	for range o.chatters {
		chatting.Go(func() { ch.run(chatCtx) })
	}
	defer func() {
		stopChats()
		chatting.Wait()
	}()
	fmt.Fprintf(os.Stderr, "%s: chats alone for %v...\n", m, o.settle)
	ch.record.Store(r.before)
	if err := proc.Sleep(ctx, o.settle); err != nil {
		return nil, err
	}
	ch.record.Store(nil)

	fmt.Fprintf(os.Stderr, "%s: opening %d clients over %v...\n", m, o.clients, o.ramp)
	a := &attackers{addr: n.addr, mode: m, every: o.every}
	attackCtx, stopAttack := context.WithCancel(ctx)
	var attacking sync.WaitGroup
	defer func() {
		stopAttack()
		attacking.Wait()
	}()
	start := time.Now()
	gap := o.ramp / time.Duration(o.clients)
	for i := range o.clients {
		if d := time.Until(start.Add(time.Duration(i) * gap)); d > 0 {
			if err := proc.Sleep(ctx, d); err != nil {
				return nil, err
			}
		}
		attacking.Go(func() { a.client(attackCtx) })
	}
	r.opening = time.Since(start)
	if err := proc.Sleep(ctx, o.settle); err != nil {
		return nil, err
	}

	fmt.Fprintf(os.Stderr, "%s: holding %d clients for %v...\n", m, o.clients, o.hold)
	r.held0, err = n.scrape()
	if err != nil {
		return nil, err
	}
	connects0, cutOff0, refused0, dialErrs0 := a.connects.Load(), a.cutOff.Load(), a.refused.Load(), a.dialErrs.Load()
	cpu0, _ := proc.CPUTime(n.Pid)
	busy0, _ := proc.CPUBusy(nodeCPU)
	ch.record.Store(r.with)
	from := time.Now()
	to := from.Add(o.hold)
	for t := from; t.Before(to); t = time.Now() {
		if rss, err := proc.RSS(n.Pid); err == nil {
			r.heldRSS = max(r.heldRSS, rss)
		}
		if r.heldGo == nil && t.Sub(from) >= o.hold/2 {
			if r.heldGo, err = n.scrape(); err != nil {
				return nil, err
			}
			r.held = r.heldGo.connections()
		}
		if err := proc.Sleep(ctx, min(100*time.Millisecond, time.Until(to))); err != nil {
			return nil, err
		}
	}
	ch.record.Store(nil)
	cpu1, _ := proc.CPUTime(n.Pid)
	busy1, _ := proc.CPUBusy(nodeCPU)
	r.cpu = cpu1 - cpu0
	r.others = max(0, busy1-busy0-r.cpu)
	r.connects, r.cutOff, r.refused, r.dialErrs = a.connects.Load()-connects0, a.cutOff.Load()-cutOff0, a.refused.Load()-refused0, a.dialErrs.Load()-dialErrs0
	if r.held1, err = n.scrape(); err != nil {
		return nil, err
	}

	fmt.Fprintf(os.Stderr, "%s: closing the clients...\n", m)
	stopAttack()
	attacking.Wait()
	ch.record.Store(r.after)
	if err := proc.Sleep(ctx, o.settle); err != nil {
		return nil, err
	}
	ch.record.Store(nil)
	stopChats()
	chatting.Wait()
	// Chats stopped: the node returns what the clients left free.
	if err := proc.Sleep(ctx, 2*time.Second); err != nil {
		return nil, err
	}
	if r.afterRSS, err = proc.RSS(n.Pid); err != nil {
		return nil, err
	}
	return r, n.Alive()
}

// chatRequest is a chat on a connection of its own.
func chatRequest() []byte {
	return fmt.Appendf(nil, "POST /v1/completion HTTP/1.1\r\nHost: node\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		len(chatBody), chatBody)
}
