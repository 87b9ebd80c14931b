package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// convergeNodes is how many nodes start at once.
const convergeNodes = 5

// convergeLimit bounds the wait for one round. memberlist's push/pull state
// sync, every 15 s on each node, heals any view gossip left incomplete, so
// a round that takes longer is stuck, not slow.
const convergeLimit = 35 * time.Second

// convergeBudget keeps the whole run near five minutes when rounds get
// stuck: no round starts after it.
const convergeBudget = 90 * time.Second

// convergeResult is one start of a cluster from nothing.
type convergeResult struct {
	serving   time.Duration // until the last node served HTTP
	converged time.Duration // until every node saw all alive; -1: not within convergeLimit
}

// converge starts convergeNodes nodes at once, all joining the first, and
// times how long until every node's /metrics counts all of them alive.
// The clock starts before the first process is started, so process
// start-up and join retries are in it, as they are for a user.
func (b *bench) converge(ctx context.Context) ([]convergeResult, error) {
	layout, err := b.fleet.layout("converge", "version: 1\nllm:\n  class: reflect\n  concurrency: 4\n")
	if err != nil {
		return nil, err
	}
	var out []convergeResult
	began := time.Now()
	for round := range b.o.convergeRounds {
		if time.Since(began) > convergeBudget {
			fmt.Fprintf(os.Stderr, "convergence: stopping after %d rounds, %v\n", round, convergeBudget)
			break
		}
		fmt.Fprintf(os.Stderr, "convergence: %d nodes, round %d of %d\n", convergeNodes, round+1, b.o.convergeRounds)
		r, err := b.convergeOnce(ctx, layout, round)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

func (b *bench) convergeOnce(ctx context.Context, layout string, round int) (convergeResult, error) {
	var r convergeResult
	gossip := make([]int, convergeNodes)
	for i := range gossip {
		p, err := b.fleet.port()
		if err != nil {
			return r, err
		}
		gossip[i] = p
	}
	seed := fmt.Sprintf("127.0.0.1:%d", gossip[0])
	nodes := make([]*node, convergeNodes)
	errs := make([]error, convergeNodes)
	served := make([]time.Time, convergeNodes)
	// Every node of the round is killed when it ends, whatever happened.
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.kill()
			}
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	for i := range nodes {
		spec := nodeSpec{name: fmt.Sprintf("conv%d-%d", round, i), llm: "conv", layout: layout, gossip: gossip[i]}
		if i > 0 {
			spec.join = seed
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			nodes[i], errs[i] = b.fleet.start(ctx, spec)
			served[i] = time.Now()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return r, err
		}
	}
	r.serving = slices.MaxFunc(served, time.Time.Compare).Sub(start)
	at, err := waitAlive(ctx, convergeNodes, convergeLimit, nodes...)
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	if err != nil {
		// Recorded, not fatal: how often this happens is part of the answer.
		fmt.Fprintf(os.Stderr, "  %v\n", err)
		r.converged = -1
		return r, nil
	}
	r.converged = at.Sub(start)
	return r, nil
}
