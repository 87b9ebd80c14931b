package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// Goals from the issue.
const (
	goalHopP50   = 300 * time.Microsecond // added to a chat at p50
	goalHopChunk = 10 * time.Microsecond  // CPU added per chunk
	goalConverge = 2 * time.Second        // 5 nodes
	goalKilled   = time.Second            // SIGKILL routed around
	goalSilent   = 5 * time.Second        // silent node routed around
	goalScale3   = 2.7                    // 3 nodes over 1
	// Saturation: 3 nodes over 1 through one gateway, its p99 time to the
	// first chunk, and 3 nodes over 1 through two gateways at once.
	goalSat1   = 2.85
	goalSatTTF = 50 * time.Millisecond
	goalSat2   = 2.7
)

type report struct {
	machine  proc.Machine
	command  string
	o        options
	took     time.Duration
	hop      *hopResult
	converge []convergeResult
	kill     *failoverResult
	stop     *failoverResult
	scale    []scaleRow
	saturate []satRow
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d)/float64(time.Microsecond)) }
func sec(d time.Duration) string {
	if d < time.Second {
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

func signedMS(d time.Duration) string {
	if d >= 0 {
		return "+" + ms(d)
	}
	return "−" + ms(-d)
}

func signedUS(d time.Duration) string {
	if d >= 0 {
		return "+" + us(d)
	}
	return "−" + us(-d)
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.machine
	p("# Troupe cluster benchmark\n\n")
	p("- Machine: %s, %d cores; %s; %s. Every node is its own process on 127.0.0.1, unpinned, sharing the cores with the load generator.\n", m.CPU, m.Cores, m.Go, m.Date)
	p("- Command: `%s` (took %s).\n\n", strings.TrimSpace(r.command), r.took.Round(time.Second))

	p("## Summary\n\n| Goal | Measured | Met |\n|---|---|---|\n")
	if h := r.hop; h != nil {
		d := h.remote.p50 - h.local.p50
		p("| a remote hop adds < %s to a chat at p50 | %s | %s |\n", ms(goalHopP50), signedMS(d), met(d < goalHopP50))
		c := h.remote.cpuPerChunk - h.local.cpuPerChunk
		p("| a remote hop adds < %s of CPU per chunk | %s | %s |\n", us(goalHopChunk), signedUS(c), met(c < goalHopChunk))
	}
	if len(r.converge) > 0 {
		med, worst, over := convergeStats(r.converge)
		p("| 5 nodes converge in < %s | median %s; %d of %d rounds over %s (worst %s) | %s |\n",
			sec(goalConverge), optSec(med), over, len(r.converge), sec(goalConverge), convergedText(worst), met(over == 0))
	}
	if k := r.kill; k != nil {
		p("| a killed process is routed around in < %s | %s | %s |\n", sec(goalKilled), sec(k.routedAround()), met(k.routedAround() < goalKilled && k.noticed >= 0))
	}
	if s := r.stop; s != nil {
		p("| a silent node is routed around in < %s | %s | %s |\n", sec(goalSilent), sec(s.routedAround()), met(s.routedAround() < goalSilent && s.noticed >= 0))
	}
	if len(r.scale) == 3 && r.scale[0].rate > 0 {
		x := r.scale[2].rate / r.scale[0].rate
		p("| 3 nodes give ≥ %.1fx the throughput of one | %.2fx | %s |\n", goalScale3, x, met(x >= goalScale3))
	}
	if s := r.saturate; len(s) >= 3 && s[0].rate > 0 {
		x1, x2 := s[1].rate/s[0].rate, s[2].rate/s[0].rate
		p("| saturated, 3 nodes through 1 gateway give ≥ %.2fx one node | %.2fx | %s |\n", goalSat1, x1, met(x1 >= goalSat1))
		p("| saturated, 3 nodes through 1 gateway: p99 time to first chunk < %s | %s | %s |\n", ms(goalSatTTF), ms(s[1].ttfcP99), met(s[1].ttfcP99 < goalSatTTF))
		p("| saturated, 3 nodes through 2 gateways at once give ≥ %.1fx one node | %.2fx | %s |\n", goalSat2, x2, met(x2 >= goalSat2))
	}
	if s := r.saturate; len(s) >= 4 {
		p("| saturated in rounds (every place filled at once), 1 gateway: no chat waits while a place is free | %d of %d waited; first chunk p99 %s | %s |\n", s[3].waited, s[3].sent, ms(s[3].ttfcP99), met(s[3].waited == 0))
	}
	p("\n")

	if h := r.hop; h != nil {
		p("## Remote hop\n\n")
		p("Two nodes serving different LLMs; chats ask for node hop-b's. \"One node\": sent to hop-b, they run there. \"Remote hop\": sent to hop-a, which does not serve that LLM, they run on hop-b and every chunk crosses back. reflect with `chunk: 1` streams one chunk per rune. Best of %d alternating rounds, each %v after a %v warm-up.\n\n", r.o.rounds, r.o.duration, r.o.warmup)
		p("| | One node | Remote hop | Added by the hop |\n|---|--:|--:|--:|\n")
		p("| chat latency p50 (%d runes = %d chunks, 1 client) | %s | %s | %s |\n", h.shortRunes, h.shortRunes, ms(h.local.p50), ms(h.remote.p50), signedMS(h.remote.p50-h.local.p50))
		p("| chat latency p99 (same) | %s | %s | %s |\n", ms(h.local.p99), ms(h.remote.p99), signedMS(h.remote.p99-h.local.p99))
		p("| CPU per chunk, both nodes (%d chunks a chat, %d clients) | %s | %s | %s |\n", h.longRunes, h.cpuClients, us(h.local.cpuPerChunk), us(h.remote.cpuPerChunk), signedUS(h.remote.cpuPerChunk-h.local.cpuPerChunk))
		p("| long chats/s in that run | %.1f | %.1f | |\n", h.local.longRate, h.remote.longRate)
		p("| long chat latency p50 in that run | %s | %s | %s |\n", ms(h.local.longP50), ms(h.remote.longP50), signedMS(h.remote.longP50-h.local.longP50))
		p("| chats measured (short; long) | %d; %d | %d; %d | |\n\n", h.local.chats, h.local.chunks/int64(max(h.longRunes, 1)), h.remote.chats, h.remote.chunks/int64(max(h.longRunes, 1)))
	}
	if len(r.converge) > 0 {
		p("## Convergence\n\n")
		p("%d nodes started at once, all joining the first; the clock starts before the first process does. \"Serving\": the last node printed its address. \"Converged\": every node's `/metrics` counts %d members alive (polled every 5 ms).\n\n", convergeNodes, convergeNodes)
		p("| Round | All serving | Converged |\n|--:|--:|--:|\n")
		for i, c := range r.converge {
			p("| %d | %s | %s |\n", i+1, sec(c.serving), convergedText(c.converged))
		}
		p("\n")
	}
	if r.kill != nil || r.stop != nil {
		p("## A node lost under load\n\n")
		p("A gateway node serving another LLM and two nodes serving the one its %d clients ask for (ten characters 5 ms apart); every chat crosses to one of the two. After %v of steady load one of them gets the signal: SIGKILL (its connections drop at once) or SIGSTOP (silent: its sockets stay open and nothing answers, as in a partition). A chat is *disturbed* if it was cut mid-answer, failed, answered by the victim after the signal, or took longer than the threshold (2 x the p99 before the signal + 50 ms). \"Routed around\" is the later of: when the gateway logged it stopped routing there, and when the last disturbed chat was sent.\n\n", r.o.failoverClients, r.o.steady)
		p("| | SIGKILL | SIGSTOP (silent) |\n|---|--:|--:|\n")
		rows := []struct {
			name string
			f    func(*failoverResult) string
		}{
			{"routed around after", func(x *failoverResult) string { return sec(x.routedAround()) }},
			{"gateway stopped routing there after", func(x *failoverResult) string {
				if x.noticed < 0 {
					return "not logged"
				}
				return sec(x.noticed) + " (" + x.noticedHow + ")"
			}},
			{"last disturbed chat sent after", func(x *failoverResult) string { return optSec(x.lastDisturbed) }},
			{"every client served normally again after", func(x *failoverResult) string { return optSec(x.restored) }},
			{"declared dead after", func(x *failoverResult) string { return optSec(x.dead) }},
			{"chats in flight at or sent after the signal", func(x *failoverResult) string { return fmt.Sprint(x.affected) }},
			{"... cut mid-answer (short error note)", func(x *failoverResult) string { return fmt.Sprint(x.cut) }},
			{"... failed with an error status", func(x *failoverResult) string { return fmt.Sprint(x.failed) }},
			{"... delayed past the threshold", func(x *failoverResult) string {
				return fmt.Sprintf("%d (threshold %s)", x.delayed, ms(x.threshold))
			}},
			{"... answered by the victim", func(x *failoverResult) string { return fmt.Sprint(x.victimAfter) }},
			{"re-routed by the gateway", func(x *failoverResult) string { return fmt.Sprint(x.reroutes) }},
			{"chats in the run", func(x *failoverResult) string { return fmt.Sprint(x.chats) }},
		}
		cell := func(x *failoverResult, f func(*failoverResult) string) string {
			if x == nil {
				return "not run"
			}
			return f(x)
		}
		for _, row := range rows {
			p("| %s | %s | %s |\n", row.name, cell(r.kill, row.f), cell(r.stop, row.f))
		}
		for _, x := range []*failoverResult{r.kill, r.stop} {
			if x != nil && x.firstFailure != "" {
				p("\n%s: first error a client saw: `%s`\n", x.signal, x.firstFailure)
			}
		}
		p("\n")
	}
	if len(r.scale) > 0 {
		p("## Scale-out\n\n")
		p("All chats through the first node's gateway; each node's model runs %d chats at once (queue %d), each %d characters with %v of sleep before all but the first, so the models, not the CPUs, are the limit. Clients: %d per node, closed loop, %v after a %v warm-up. \"Models allow\": nodes x %d / chat time.\n\n",
			scaleConcurrency, scaleQueue, scaleChars, r.o.scaleDelay, scaleConcurrency+scaleQueue/2, r.o.duration, r.o.warmup, scaleConcurrency)
		p("| Nodes | Clients | chats/s | vs one node | of what the models allow | p50 | failed | by node |\n|--:|--:|--:|--:|--:|--:|--:|---|\n")
		for _, row := range r.scale {
			names := make([]string, 0, len(row.byNode))
			for n := range row.byNode {
				names = append(names, n)
			}
			slices.Sort(names)
			var parts []string
			for _, n := range names {
				parts = append(parts, fmt.Sprintf("%s %d", n, row.byNode[n]))
			}
			p("| %d | %d | %.1f | %.2fx | %.0f%% | %s | %d | %s |\n", row.nodes, row.clients, row.rate, row.rate/r.scale[0].rate,
				100*row.rate/row.ideal, ms(row.p50), row.failed, strings.Join(parts, ", "))
		}
		p("\n")
	}
	if len(r.saturate) > 0 {
		p("## Saturation\n\n")
		p("Every node's model (`dummy`) runs %d chats at once (queue %d), each %v: \"a\" at once, \"b\" at the end. As many clients as places (%d per node), closed loop, %v after a %v warm-up, starting one after the other over one chat; with two gateways, half the clients send to each; \"in rounds\": all clients send at once, and again once every answer is in. Time to first chunk: from sending the request to reading the answer's first byte; a chat that queued behind a full model waits most of a chat for it (\"waited\": over half a chat). Re-routed: chats a gateway moved after a node refused them.\n\n",
			satConcurrency, satQueue, r.o.satChat, satConcurrency, r.o.duration, r.o.warmup)
		p("| Run | Clients | chats/s | vs one node | first chunk p50 | p99 | waited | chat p50 | p99 | re-routed | failed | by node |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
		for _, row := range r.saturate {
			p("| %s | %d | %.1f | %.2fx | %s | %s | %d of %d | %s | %s | %.0f | %d | %s |\n", row.name, row.clients, row.rate, row.rate/r.saturate[0].rate,
				ms(row.ttfcP50), ms(row.ttfcP99), row.waited, row.sent, ms(row.p50), ms(row.p99), row.rerouted, row.failed, byNode(row.byNode))
		}
		for _, row := range r.saturate {
			if row.firstErr != "" {
				p("\n%s: first error a client saw: `%s`\n", row.name, row.firstErr)
			}
		}
		p("\n")
	}
	return b.String()
}

func byNode(m map[string]int) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	slices.Sort(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, m[n]))
	}
	return strings.Join(parts, ", ")
}

// convergeStats returns the median and worst convergence time (-1 stands
// for a round that did not converge, and is the worst) and how many rounds
// missed the goal.
func convergeStats(rs []convergeResult) (median, worst time.Duration, over int) {
	var ds []time.Duration
	for _, r := range rs {
		d := r.converged
		if d < 0 {
			d = time.Duration(1<<63 - 1)
		}
		if d >= goalConverge {
			over++
		}
		ds = append(ds, d)
	}
	slices.Sort(ds)
	median, worst = ds[(len(ds)-1)/2], ds[len(ds)-1]
	if median == time.Duration(1<<63-1) {
		median = -1
	}
	if worst == time.Duration(1<<63-1) {
		worst = -1
	}
	return median, worst, over
}

func convergedText(d time.Duration) string {
	if d < 0 {
		return fmt.Sprintf("not within %s", sec(convergeLimit))
	}
	return sec(d)
}

func optSec(d time.Duration) string {
	if d < 0 {
		return "none"
	}
	return sec(d)
}
