package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// window is when chunks count: those emitted in [from, to). Zero until set.
type window struct{ from, to atomic.Int64 }

func (w *window) get() (time.Time, time.Time) {
	return time.Unix(0, w.from.Load()), time.Unix(0, w.to.Load())
}

// measure opens o.streams chats evenly over the ramp, waits for them to
// settle, samples the node's memory over the hold while every chat
// streams, then reads every answer to its end and checks it.
func measure(ctx context.Context, o options, n *node, chunks int, rep *report) error {
	host := strings.TrimPrefix(n.Base, "http://")
	req := request(host)

	if err := proc.WaitQuiet(ctx, nodeCPU, o.quiet); err != nil {
		return err
	}
	// A first small wave makes what serving streams needs once (pools,
	// the accept path, the actors' first chats), so that it is not
	// counted per stream; then the node returns what it freed to the OS.
	fmt.Fprintln(os.Stderr, "warming up...")
	for range 64 {
		s, err := open(host, req)
		if err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		s.conn.Close()
	}
	if err := proc.Sleep(ctx, 2*time.Second); err != nil {
		return err
	}
	var err error
	if rep.idleRSS, err = proc.RSS(n.Pid); err != nil {
		return err
	}
	if rep.idleGo, err = n.goStats(); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "opening %d streams over %v...\n", o.streams, o.ramp)
	var win window
	var opened atomic.Int64
	allOpen := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all [][]int32
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		rep.errs++
		if rep.firstErr == nil {
			rep.firstErr = err
		}
	}
	count := func() {
		if opened.Add(1) == int64(o.streams) {
			close(allOpen)
		}
	}
	start := time.Now()
	gap := o.ramp / time.Duration(o.streams)
	for i := range o.streams {
		if d := time.Until(start.Add(time.Duration(i) * gap)); d > 0 {
			if err := proc.Sleep(ctx, d); err != nil {
				return err
			}
		}
		wg.Go(func() {
			s, err := open(host, req)
			count()
			if err != nil {
				fail(err)
				return
			}
			if err := s.read(&win, chunks); err != nil {
				fail(err)
				return
			}
			mu.Lock()
			all = append(all, s.delays)
			mu.Unlock()
		})
	}
	select {
	case <-allOpen:
	case <-ctx.Done():
		return ctx.Err()
	}
	rep.opening = time.Since(start)
	if err := proc.Sleep(ctx, o.settle); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "holding %d streams for %v...\n", o.streams, o.hold)
	from := time.Now()
	to := from.Add(o.hold)
	win.from.Store(from.UnixNano())
	win.to.Store(to.UnixNano())
	cpu0, _ := proc.CPUTime(n.Pid)
	busy0, _ := proc.CPUBusy(nodeCPU)
	self0, _ := proc.CPUTime(os.Getpid())
	for t := time.Now(); t.Before(to); t = time.Now() {
		if rss, err := proc.RSS(n.Pid); err == nil {
			rep.heldRSS = max(rep.heldRSS, rss)
			if o.trace {
				g, _ := n.goStats()
				fmt.Fprintf(os.Stderr, "  %5.1fs RSS %.0f MiB, heap %.0f MiB, next GC %.0f MiB, stacks %.0f MiB, GCs %.0f\n",
					t.Sub(from).Seconds(), mib(float64(rss)), mib(g.heapInuse), mib(g.nextGC), mib(g.stackInuse), g.gcs)
			}
		}
		if rep.heldGo.goroutines == 0 && t.Sub(from) >= o.hold/2 {
			if rep.heldGo, err = n.goStats(); err != nil {
				return err
			}
		}
		if g, err := n.goStats(); err == nil {
			rep.gcGoal = max(rep.gcGoal, g.nextGC)
			if rep.gcs0 == 0 {
				rep.gcs0 = g.gcs
			}
			rep.gcs = g.gcs - rep.gcs0
		}
		if err := proc.Sleep(ctx, min(100*time.Millisecond, time.Until(to))); err != nil {
			return err
		}
	}
	cpu1, _ := proc.CPUTime(n.Pid)
	busy1, _ := proc.CPUBusy(nodeCPU)
	self1, _ := proc.CPUTime(os.Getpid())
	rep.cpu = cpu1 - cpu0
	rep.others = max(0, busy1-busy0-rep.cpu)
	rep.clientCPU = self1 - self0

	fmt.Fprintln(os.Stderr, "reading the answers to their end...")
	wg.Wait()
	if err := n.Alive(); err != nil {
		return err
	}
	for _, d := range all {
		rep.delays = append(rep.delays, d...)
	}
	slices.Sort(rep.delays)
	return nil
}
