package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// Goals from the issue.
const (
	goalPerStream = 24 << 10 // bytes
	goalDelayP99  = 10 * time.Millisecond
)

type report struct {
	o       options
	machine proc.Machine
	command string
	pinned  bool
	chunks  int

	idleRSS, heldRSS int64
	idleGo, heldGo   goStats
	gcGoal           float64 // the highest heap goal while measured
	gcs0, gcs        float64 // collections while measured
	opening          time.Duration
	cpu              time.Duration
	others           time.Duration // on the node's CPU, by other processes, while measured
	clientCPU        time.Duration
	delays           []int32 // microseconds, sorted
	errs             int
	firstErr         error
}

func (r *report) perStream(v float64) float64 { return v / float64(r.o.streams) / 1024 }

func (r *report) delay(q float64) time.Duration {
	if len(r.delays) == 0 {
		return 0
	}
	i := min(len(r.delays)-1, max(0, int(q*float64(len(r.delays))+0.5)-1))
	return time.Duration(r.delays[i]) * time.Microsecond
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.machine
	per := r.perStream(float64(r.heldRSS - r.idleRSS))
	p("# Troupe: %d streams on one node\n\n", r.o.streams)
	pin := "the node pinned to CPU " + nodeCPU + " with GOMAXPROCS=1, the clients to CPU " + clientCPU
	if !r.pinned {
		pin = "not pinned (no taskset, or one CPU)"
	}
	p("- Machine: %s, %d cores; %s; %s; %s.\n", m.CPU, m.Cores, m.Go, m.Date, pin)
	p("- Command: `%s`.\n", strings.TrimSpace(r.command))
	filters := "none"
	if r.o.filters {
		filters = "OpenCC s2twp before and after the model"
	}
	p("- Each chat: the `benchclock` model, a chunk every %v (the time it was emitted), %d chunks; filters: %s. Each client a kept-alive connection on 127.0.0.1 reading the chunked answer as it comes. %d streams opened evenly over %v (took %v), then %v to settle, then measured for %v.\n\n",
		r.o.every, r.chunks, filters, r.o.streams, r.o.ramp, r.opening.Round(time.Millisecond), r.o.settle, r.o.hold)
	p("| Goal | Measured | Met |\n|---|---|---|\n")
	p("| memory per stream < %d KiB, all in (RSS) | %.1f KiB | %s |\n", goalPerStream>>10, per, met(per < goalPerStream>>10))
	p("| p99 chunk delay (model emit to client read) < %v | %s | %s |\n", goalDelayP99, ms(r.delay(0.99)), met(r.delay(0.99) < goalDelayP99 && len(r.delays) > 0))
	p("| no error | %d of %d streams failed | %s |\n\n", r.errs, r.o.streams, met(r.errs == 0))
	p("| | idle | %d streams open | per stream |\n|---|--:|--:|--:|\n", r.o.streams)
	p("| RSS | %.1f MiB | %.1f MiB | %.1f KiB |\n", mib(float64(r.idleRSS)), mib(float64(r.heldRSS)), per)
	p("| Go heap in use | %.1f MiB | %.1f MiB | %.1f KiB |\n", mib(r.idleGo.heapInuse), mib(r.heldGo.heapInuse), r.perStream(r.heldGo.heapInuse-r.idleGo.heapInuse))
	p("| goroutine stacks | %.1f MiB | %.1f MiB | %.1f KiB |\n", mib(r.idleGo.stackInuse), mib(r.heldGo.stackInuse), r.perStream(r.heldGo.stackInuse-r.idleGo.stackInuse))
	p("| goroutines | %.0f | %.0f | %.2f |\n", r.idleGo.goroutines, r.heldGo.goroutines, (r.heldGo.goroutines-r.idleGo.goroutines)/float64(r.o.streams))
	p("| heap goal of the garbage collector (highest) | %.1f MiB | %.1f MiB | %.1f KiB |\n\n", mib(r.idleGo.nextGC), mib(r.gcGoal), r.perStream(r.gcGoal-r.idleGo.nextGC))
	p("RSS is the highest sampled every 100 ms while measured; the Go figures are the node's own (`/metrics`), the heap in use and stacks at mid-measure. The heap grows to the collector's goal (the live heap plus as much again, stacks counted, at the default GOGC=100) before each collection, %.0f while measured, and the runtime keeps about a tenth more resident: RSS follows the goal, not the live heap.\n\n", r.gcs)
	p("Chunk delay over the %d chunks emitted while measured: p50 %s, p99 %s, p99.9 %s, max %s. While measured: node CPU %.0f%% of one core (%.1f µs per chunk), other processes on its CPU %.0f%%%s, clients' CPU %.0f%%.\n",
		len(r.delays), ms(r.delay(0.5)), ms(r.delay(0.99)), ms(r.delay(0.999)), ms(r.delay(1)),
		pct(r.cpu, r.o.hold), float64(r.cpu.Microseconds())/float64(max(1, len(r.delays))), pct(r.others, r.o.hold), noisy(r.others, r.o.hold), pct(r.clientCPU, r.o.hold))
	if r.firstErr != nil {
		p("\nFirst error: `%v`\n", r.firstErr)
	}
	return b.String()
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
func mib(v float64) float64     { return v / (1 << 20) }

func pct(d, of time.Duration) float64 { return 100 * d.Seconds() / of.Seconds() }

// noisy flags a run in which other processes took more than 5% of the
// node's CPU: its delays are not the node's alone.
func noisy(others, of time.Duration) string {
	if others.Seconds() > 0.05*of.Seconds() {
		return " (**noisy**: not measured alone)"
	}
	return ""
}
