package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"time"
	"unicode/utf8"
)

// hopResult compares the same chats served where they arrive ("local")
// and sent across one remote hop ("remote").
type hopResult struct {
	shortRunes, longRunes int
	cpuClients            int
	local, remote         hopSide
}

type hopSide struct {
	p50, p99     time.Duration // short chat, one client
	chats        int           // short chats measured
	cpuPerChunk  time.Duration // both nodes' CPU over the chunks of the long chats
	longRate     float64       // long chats per second in the CPU run
	longP50      time.Duration
	chunks       int64
	cpu          time.Duration
	failed       int
	firstFailure string
}

// hop runs two nodes serving different LLMs. A chat for hop-b sent to node
// hop-b runs there; sent to node hop-a, which does not serve it, it crosses
// to hop-b and every chunk crosses back. Both are the same HTTP request to
// a node, so the difference is the hop. reflect with chunk 1 streams one
// chunk per rune, so the long input makes chunks the bulk of the work.
func (b *bench) hop(ctx context.Context) (*hopResult, error) {
	fmt.Fprintln(os.Stderr, "remote hop: starting two nodes")
	layout, err := b.fleet.layout("hop", "version: 1\nllm:\n  class: reflect\n  args: {chunk: 1}\n  concurrency: 16\n  queue: 16\n")
	if err != nil {
		return nil, err
	}
	a, err := b.fleet.start(ctx, nodeSpec{name: "hop-a", llm: "hop-a", layout: layout})
	if err != nil {
		return nil, err
	}
	defer a.kill()
	bn, err := b.fleet.start(ctx, nodeSpec{name: "hop-b", llm: "hop-b", layout: layout, join: a.gossipAddr()})
	if err != nil {
		return nil, err
	}
	defer bn.kill()
	if _, err := waitAlive(ctx, 2, 10*time.Second, a, bn); err != nil {
		return nil, err
	}
	hc := newClient(b.o.cpuClients)
	short := newChat("hop-b", b.short, b.short)
	long := newChat("hop-b", b.long, b.long)
	// Members' load arrives by gossip after the join; until it does, a
	// node does not route to them.
	if err := waitRoutes(ctx, hc, a.base+endpoint, short, "hop-b", 1, 10*time.Second); err != nil {
		return nil, err
	}

	res := &hopResult{shortRunes: utf8.RuneCountInString(b.short), longRunes: utf8.RuneCountInString(b.long), cpuClients: b.o.cpuClients}
	sides := []struct {
		name string
		url  string
		out  *hopSide
	}{{"local", bn.base + endpoint, &res.local}, {"remote", a.base + endpoint, &res.remote}}
	// Rounds alternate the two sides, and each keeps its best round: on a
	// shared machine that is the one others disturbed least.
	for round := range b.o.rounds {
		for _, s := range sides {
			fmt.Fprintf(os.Stderr, "remote hop: %s, round %d of %d\n", s.name, round+1, b.o.rounds)
			side, err := b.hopSide(ctx, hc, s.url, short, long, res.longRunes, a, bn)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name, err)
			}
			if round == 0 {
				*s.out = side
				continue
			}
			if side.p50 < s.out.p50 {
				s.out.p50, s.out.p99, s.out.chats = side.p50, side.p99, side.chats
			}
			if side.cpuPerChunk < s.out.cpuPerChunk {
				s.out.cpuPerChunk, s.out.cpu, s.out.chunks, s.out.longRate, s.out.longP50 =
					side.cpuPerChunk, side.cpu, side.chunks, side.longRate, side.longP50
			}
			s.out.failed += side.failed
		}
	}
	return res, nil
}

func (b *bench) hopSide(ctx context.Context, hc *http.Client, url string, short, long chat, longRunes int, nodes ...*node) (hopSide, error) {
	var side hopSide
	rs, w := measured(ctx, hc, url, short, 1, b.o.warmup, b.o.duration, func() {})
	_, sent := within(rs, w)
	st := summarise(sent)
	side.p50, side.p99, side.chats, side.failed, side.firstFailure = st.p50, st.p99, st.ok, st.failed, st.firstErr
	if err := ctx.Err(); err != nil {
		return side, err
	}

	var cpu []time.Duration
	var cpuErr error
	rs, w = measured(ctx, hc, url, long, b.o.cpuClients, b.o.warmup, b.o.duration, func() {
		c, err := cpuOf(nodes...)
		if err != nil {
			cpuErr = err
		}
		cpu = append(cpu, c)
	})
	if cpuErr != nil {
		return side, cpuErr
	}
	if len(cpu) != 2 {
		return side, ctx.Err()
	}
	ended, sent := within(rs, w)
	est := summarise(ended)
	side.failed += est.failed
	if side.firstFailure == "" {
		side.firstFailure = est.firstErr
	}
	if est.ok == 0 {
		return side, fmt.Errorf("no long chat was answered: %s", est.firstErr)
	}
	side.cpu = cpu[1] - cpu[0]
	side.chunks = int64(est.ok) * int64(longRunes)
	side.cpuPerChunk = side.cpu / time.Duration(side.chunks)
	side.longRate = float64(est.ok) / w.dur().Seconds()
	side.longP50 = summarise(sent).p50
	if side.failed > 0 {
		return side, fmt.Errorf("%d chats failed, first: %s", side.failed, side.firstFailure)
	}
	return side, nil
}
