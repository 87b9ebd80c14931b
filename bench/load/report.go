package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// Goals the project is judged on.
const (
	goalRatio     = 1.25 // troupe within this factor of bare, at goalClients
	goalClients   = 8
	goalIdleRSS   = 40 << 20 // bytes
	goalPerStream = 16 << 10 // bytes per in-flight streaming chat
	goalPerChunk  = 5 * time.Microsecond
)

type report struct {
	machine          proc.Machine
	command          string
	duration, warmup time.Duration
	rounds           int
	inputs           []string
	runs             []runResult
	memory           []memory
	chunked          *runResult
	chunks           int // chunks per chat in the chunked run
	streams          *streamStats
}

func (r *report) find(target, input string, clients int) *runResult {
	for i := range r.runs {
		x := &r.runs[i]
		if x.target == target && x.input == input && x.clients == clients {
			return x
		}
	}
	return nil
}

// releasesUnderLoad sums the memory releases of the runs that count them.
func (r *report) releasesUnderLoad() (runs, releases int) {
	all := append([]runResult{}, r.runs...)
	if r.chunked != nil {
		all = append(all, *r.chunked)
	}
	for _, x := range all {
		if x.releases >= 0 {
			runs++
			releases += x.releases
		}
	}
	return runs, releases
}

func (r *report) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m := r.machine
	p("# Troupe load benchmark\n\n")
	p("- Machine: %s, %d cores; servers built with %s; %s.\n", m.CPU, m.Cores, m.Go, m.Date)
	p("- Each server runs alone, pinned to CPU 0 with GOMAXPROCS=1, on 127.0.0.1; the load generator is pinned to CPU 1. \"CPU 0 others\" is the CPU other processes took on the server's CPU during the run.\n")
	p("- Closed loop over keep-alive connections: %v per run after a %v warm-up", r.duration, r.warmup)
	if r.rounds > 1 {
		p("; each run measured %d times, the round least disturbed by other processes kept", r.rounds)
	}
	p(". Every answer is checked: 200, text/plain, the expected converted text.\n")
	p("- Inputs (one user message): %s.\n", strings.Join(r.inputs, "; "))
	p("- Command: `%s`\n\n", strings.TrimSpace(r.command))

	p("## Chats\n\n")
	p("| server | input | clients | chats/s | p50 | p99 | errors | server CPU/chat | server CPU | CPU 0 others | load gen. CPU | peak RSS |\n")
	p("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	var errs, noisyRuns []string
	row := func(x *runResult) {
		p("| %s | %s | %d | %.0f | %s | %s | %d | %s | %s | %s | %s | %s |\n",
			x.target, x.input, x.clients, x.rate(), dur(percentile(x.latencies, 0.5)), dur(percentile(x.latencies, 0.99)),
			x.errs, dur(x.cpuPerChat()), pct(x.serverCPU, x.elapsed), pct(x.othersCPU, x.elapsed), pct(x.genCPU, x.elapsed), mib(x.peakRSS))
		if x.othersCPU.Seconds() > noisy*x.elapsed.Seconds() {
			noisyRuns = append(noisyRuns, fmt.Sprintf("%s %s x%d", x.target, x.input, x.clients))
		}
		if x.firstErr != nil {
			errs = append(errs, fmt.Sprintf("%s %s x%d: %d errors, the first: %v", x.target, x.input, x.clients, x.errs, x.firstErr))
		}
	}
	for i := range r.runs {
		row(&r.runs[i])
	}
	if r.chunked != nil {
		row(r.chunked)
	}
	p("\n")
	for _, e := range errs {
		p("- %s\n", e)
	}
	if len(noisyRuns) > 0 {
		p("- **Noisy**: something else used more than %.0f%% of CPU 0 during %s; rerun on a quiet machine before trusting those rows.\n", 100*noisy, strings.Join(noisyRuns, ", "))
	}
	if len(errs)+len(noisyRuns) > 0 {
		p("\n")
	}

	p("## Troupe against bare\n\n")
	p("| input | clients | chats/s, bare ÷ troupe | p99, troupe ÷ bare | CPU/chat, troupe ÷ bare |\n")
	p("|---|--:|--:|--:|--:|\n")
	for i := range r.runs {
		t := &r.runs[i]
		if t.target != "troupe" {
			continue
		}
		bare := r.find("bare", t.input, t.clients)
		if bare == nil {
			continue
		}
		p("| %s | %d | %.2f | %.2f | %.2f |\n", t.input, t.clients,
			bare.rate()/t.rate(), ratio(percentile(t.latencies, 0.99), percentile(bare.latencies, 0.99)),
			ratio(t.cpuPerChat(), bare.cpuPerChat()))
	}
	p("\n")

	p("## Memory\n\n")
	p("| server | RSS once started | idle RSS after warm-up | peak RSS under load |\n|---|--:|--:|--:|\n")
	for _, mem := range r.memory {
		p("| %s | %s | %s | %s |\n", mem.name, mib(mem.started), mib(mem.idle), mib(mem.peak))
	}
	p("\n")
	if runs, releases := r.releasesUnderLoad(); runs > 0 {
		p("Troupe returned memory to the OS %d times during its %d measured runs (it does so only after a quiet spell without chats).\n\n", releases, runs)
	}

	perChunk, marginal := r.chunkCosts()
	if r.chunked != nil {
		p("## Streaming\n\n")
		p("- Chunked answers (reflect `chunk: 1`, long input, %d clients, %d chunks per chat): %s CPU per chunk all in (CPU per chat ÷ chunks)", r.chunked.clients, r.chunks, durFine(perChunk))
		if marginal > 0 {
			p(", %s per chunk over the unchunked run (CPU per chat, chunked − unchunked, ÷ chunks)", durFine(marginal))
		}
		p(".\n")
	}
	if s := r.streams; s != nil {
		p("- %d streaming chats in flight at once (dummy model, %s runes at %s each): RSS %s idle, %s with all open: %s per stream; %d of %d answered correctly.\n",
			s.streams, fmt.Sprint(streamRunes), streamDelay, mib(s.idleRSS), mib(s.heldRSS), kib(s.perStream()), s.ok, s.streams)
		if s.firstErr != nil {
			p("- Streams: %d errors, the first: %v\n", s.errs, s.firstErr)
		}
	}
	p("\n")

	p("## Goals\n\n| goal | measured | met |\n|---|---|---|\n")
	for _, in := range []string{"short", "long"} {
		t, bare := r.find("troupe", in, goalClients), r.find("bare", in, goalClients)
		if t == nil || bare == nil {
			continue
		}
		q := bare.rate() / t.rate()
		p("| chats/s within %.2fx of bare, %s, %d clients | %.2fx | %s |\n", goalRatio, in, goalClients, q, met(q <= goalRatio))
		q = ratio(percentile(t.latencies, 0.99), percentile(bare.latencies, 0.99))
		p("| p99 within %.2fx of bare, %s, %d clients | %.2fx | %s |\n", goalRatio, in, goalClients, q, met(q <= goalRatio))
	}
	for _, mem := range r.memory {
		if mem.name == "troupe" {
			p("| idle RSS < %s | %s | %s |\n", mib(goalIdleRSS), mib(mem.idle), met(mem.idle < goalIdleRSS))
		}
	}
	if s := r.streams; s != nil {
		p("| < %s per in-flight streaming chat | %s | %s |\n", kib(goalPerStream), kib(s.perStream()), met(s.perStream() < goalPerStream))
	}
	if r.chunked != nil {
		p("| < %v CPU per chunk (all in) | %s | %s |\n", goalPerChunk, durFine(perChunk), met(perChunk < goalPerChunk))
	}
	return b.String()
}

// chunkCosts returns the chunked run's CPU per chunk, all in, and over the
// same load unchunked (0 when that run is missing).
func (r *report) chunkCosts() (all, marginal time.Duration) {
	if r.chunked == nil || r.chunks == 0 {
		return 0, 0
	}
	all = r.chunked.cpuPerChat() / time.Duration(r.chunks)
	if base := r.find("troupe", "long", r.chunked.clients); base != nil {
		marginal = (r.chunked.cpuPerChat() - base.cpuPerChat()) / time.Duration(r.chunks)
	}
	return all, marginal
}

func (s *streamStats) perStream() int64 {
	if s.streams == 0 {
		return 0
	}
	return (s.heldRSS - s.idleRSS) / int64(s.streams)
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// noisy is the share of the server's CPU taken by other work above which a
// run is flagged.
const noisy = 0.05

func pct(d, of time.Duration) string {
	if of <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*d.Seconds()/of.Seconds())
}

func met(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

func dur(d time.Duration) string {
	if d < time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func durFine(d time.Duration) string {
	return fmt.Sprintf("%.2f µs", float64(d)/float64(time.Microsecond))
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
func kib(n int64) string { return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10)) }
