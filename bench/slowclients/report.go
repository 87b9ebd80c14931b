package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

type report struct {
	o       options
	machine proc.Machine
	command string
	pinned  bool
	runs    []*runResult
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.machine
	p("# Troupe: %d idle or slow clients on one node\n\n", r.o.clients)
	pin := "the node pinned to CPU " + nodeCPU + " with GOMAXPROCS=1, the clients to CPU " + clientCPU
	if !r.pinned {
		pin = "not pinned (no taskset, or one CPU)"
	}
	p("- Machine: %s, %d cores; %s; %s; %s.\n", m.CPU, m.Cores, m.Go, m.Date, pin)
	p("- Command: `%s`.\n", strings.TrimSpace(r.command))
	settings := "the defaults"
	if len(r.o.env) > 0 {
		settings = "the defaults but " + strings.Join(r.o.env, ", ")
	}
	p("- The node: troupe with the `reflect` model, %s. Each run: a node of its own; %d chatters each chat on a new connection and pause %v; after %v of chats alone, %d clients connect evenly over %v, each opening a new connection as soon as the node closes one; %v later they are measured for %v, the chats going on; then they close, and the chats go on alone for %v.\n\n",
		settings, r.o.chatters, r.o.pause, r.o.settle, r.o.clients, r.o.ramp, r.o.settle, r.o.hold, r.o.settle)

	p("| clients | connections held (node) | RSS idle | RSS held | per connection | Go heap + stacks per connection | RSS after | node CPU | others on its CPU | cut off /s | refused /s | reclaimed /s |\n")
	p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, run := range r.runs {
		hold := r.o.hold.Seconds()
		p("| %s | %.0f | %.1f MiB | %.1f MiB | %.2f KiB | %.2f KiB | %.1f MiB | %.0f%% | %.0f%%%s | %.0f | %.0f | %.0f |\n",
			r.modeName(run.mode), run.held, mib(float64(run.idleRSS)), mib(float64(run.heldRSS)), run.perConn(float64(run.heldRSS-run.idleRSS)),
			run.perConn(run.heldGo.goMemory()-run.idleGo.goMemory()), mib(float64(run.afterRSS)), 100*run.cpu.Seconds()/hold,
			100*run.others.Seconds()/hold, noisy(run.others.Seconds() > 0.05*hold), float64(run.cutOff)/hold, float64(run.refused)/hold,
			(run.held1[`troupe_http_connections_reclaimed_total`]-run.held0[`troupe_http_connections_reclaimed_total`])/hold)
	}
	p("\nChats meanwhile (each on a new connection: connect, send, read the whole answer):\n\n")
	p("| clients | | chats | p50 | p99 | max | errors |\n|---|---|--:|--:|--:|--:|--:|\n")
	var firstErrs []string
	for _, run := range r.runs {
		for _, w := range []struct {
			name string
			l    *latencies
		}{{"alone, before", run.before}, {"with the clients", run.with}, {"alone, after", run.after}} {
			d, errs, first := w.l.sorted()
			p("| %s | %s | %d | %s | %s | %s | %d |\n", r.modeName(run.mode), w.name, len(d), q(d, 0.5), q(d, 0.99), q(d, 1), errs)
			if first != nil {
				firstErrs = append(firstErrs, fmt.Sprintf("First error of %s, %s: `%v`", run.mode, w.name, first))
			}
		}
	}
	for _, e := range firstErrs {
		p("\n%s\n", e)
	}
	p("\nLimits that acted while held (the node's `troupe_limit_hits_total`):\n\n| clients | header_timeout | idle_timeout | body_timeout | connections |\n|---|--:|--:|--:|--:|\n")
	for _, run := range r.runs {
		d := func(name string) float64 { return run.held1.limit(name) - run.held0.limit(name) }
		p("| %s | %.0f | %.0f | %.0f | %.0f |\n", r.modeName(run.mode), d("header_timeout"), d("idle_timeout"), d("body_timeout"), d("connections"))
	}
	p("\nRSS held is the highest sampled every 100 ms while held; per connection divides what it added to the idle RSS by the connections the node held at mid-hold (its `troupe_http_connections`), chatters' included. The Go figures are the node's own, idle and at mid-hold.\n")
	return b.String()
}

func (r *report) modeName(m mode) string {
	if m == modeSlow {
		return fmt.Sprintf("%d slow (a head byte every %v)", r.o.clients, r.o.every)
	}
	if m == modeKeepAlive {
		return fmt.Sprintf("%d kept alive (one request, then nothing)", r.o.clients)
	}
	return fmt.Sprintf("%d idle (send nothing)", r.o.clients)
}

func (run *runResult) perConn(v float64) float64 {
	if run.held <= 0 {
		return 0
	}
	return v / run.held / 1024
}

// q returns the quantile of sorted latencies.
func q(d []time.Duration, quantile float64) string {
	if len(d) == 0 {
		return "-"
	}
	i := min(len(d)-1, max(0, int(quantile*float64(len(d))+0.5)-1))
	return fmt.Sprintf("%.2f ms", float64(d[i])/float64(time.Millisecond))
}

func mib(v float64) float64 { return v / (1 << 20) }

// noisy flags a run in which other processes took more than 5% of the
// node's CPU: its latencies are not the node's alone.
func noisy(yes bool) string {
	if yes {
		return " (**noisy**)"
	}
	return ""
}
