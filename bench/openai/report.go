package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// Goals the openai kind is judged on.
const (
	goalAddedTTFT = time.Millisecond       // troupe's added time to first token, p50
	goalCPURatio  = 2.0                    // troupe's CPU per token over nginx's
	goalCancel    = 100 * time.Millisecond // cancel to upstream close through troupe, p99
	noisy         = 0.05                   // share of CPU 0 others may take before a run is flagged
)

type report struct {
	machine proc.Machine
	nginx   string
	command string
	o       options
	took    time.Duration
	waited  time.Duration // of took, waiting for other processes
	paths   []pathResult
}

func (r *report) path(name string) *pathResult {
	for i := range r.paths {
		if r.paths[i].name == name {
			return &r.paths[i]
		}
	}
	return nil
}

// cpuPerToken is the proxy's CPU per token streamed in a run.
func (r *loadRun) cpuPerToken(tokens int) time.Duration {
	if r.ok == 0 {
		return 0
	}
	return r.proxyCPU / time.Duration(r.ok*tokens)
}

func (r *report) markdown() string {
	var b strings.Builder
	pr := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	m, o := r.machine, r.o
	pr("# Troupe in front of an OpenAI-compatible upstream\n\n")
	pr("- Machine: %s, %d cores; troupe built with %s; %s; %s.\n", m.CPU, m.Cores, m.Go, r.nginx, m.Date)
	pr("- Three paths to the same upstream, all on 127.0.0.1: **direct** (the client calls the upstream), **nginx** (one worker, `proxy_buffering off`, HTTP/1.1 with a keep-alive pool to the upstream) and **troupe** (the node's `/v1/chat/completions`, a layout of the `openai` model kind alone).\n")
	pr("- The proxy runs alone on CPU 0 (troupe with GOMAXPROCS=1, nginx's master and one worker); the client (net/http, keep-alive, its own SSE reader) and the upstream (a Go fake, GOMAXPROCS=1) share CPU 1, and do the same work on every path.\n")
	pr("- Unless a section says otherwise, every chat streams %d tokens", o.tokens)
	if o.delay > 0 {
		pr(", %v apart", o.delay)
	} else {
		pr(" with no pause between them")
	}
	pr(", each its own flushed event, then the finish reason, the usage and `[DONE]`. Every answer is checked whole: status, content type, each content delta, finish reason, usage, `[DONE]`.\n")
	pr("- Command: `%s` (took %s", strings.TrimSpace(r.command), r.took.Round(time.Second))
	if r.waited >= time.Second {
		pr(", %s of it waiting for other processes to leave the CPUs alone", r.waited.Round(time.Second))
	}
	pr(").\n\n")

	direct, ngx, tr := r.path("direct"), r.path("nginx"), r.path("troupe")
	var errs, noisyRuns []string
	note := func(what string, n int, err error) {
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %d errors, the first: %v", what, n, err))
		}
	}

	pr("## Goals\n\n| goal | measured | met |\n|---|---|---|\n")
	if direct != nil && tr != nil && ngx != nil {
		base := percentile(direct.ttft.ttfts, 0.5)
		added := percentile(tr.ttft.ttfts, 0.5) - base
		pr("| troupe adds < %s to the time to first token at p50 | %s (nginx: %s) | %s |\n",
			dur(goalAddedTTFT), signed(added), signed(percentile(ngx.ttft.ttfts, 0.5)-base), met(added < goalAddedTTFT))
		t, n := tr.paced.cpuPerToken(o.tokens), ngx.paced.cpuPerToken(o.tokens)
		q := ratio(t, n)
		pr("| troupe's CPU per streamed token within %.0fx nginx's (paced run) | %s vs %s: %.2fx | %s |\n", goalCPURatio, durFine(t), durFine(n), q, met(n > 0 && q <= goalCPURatio))
	}
	if tr != nil {
		c := &tr.cancel
		p99 := percentile(c.lags, 0.99)
		pr("| a cancel reaches the upstream through troupe in < %s (p99) | p99 %s, max %s, %d of %d not seen | %s |\n",
			dur(goalCancel), dur(p99), dur(maxOf(c.lags)), c.missed, c.cancelled, met(len(c.lags) > 0 && c.missed == 0 && p99 < goalCancel))
	}
	pr("\n")

	pr("## Time to first token\n\n")
	n := len(r.paths)
	pr("One chat at a time on a kept-alive connection, after a warm-up, the paths taking turns in blocks (up to %d blocks a path), so that other work on the machine falls on all of them alike: from sending the request to the first non-empty content delta. \"First token alone\": the upstream pauses %v after the first token, as a model does between tokens (up to %d chats a path, %v in all). \"No pause\": the throughput run's chats, the first token followed at once by the rest (up to %d chats a path, %v in all). \"Added\" is over direct. \"Upstream connections\": those the upstream accepted during the first-token-alone run (0: the path reuses its connections).\n\n",
		turnBlocks, max(o.ttftPause, o.delay), o.ttftChats, time.Duration(n)*o.ttftTime, max(1, o.ttftChats/2), time.Duration(n)*o.ttftTime/2)
	pr("| path | chats | p50 | p99 | added at p50 | added at p99 | upstream connections | no pause: chats | p50 | p99 | whole chat p50 | errors |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, p := range r.paths {
		s, x := &p.ttft, &p.ttftBurst
		addP50, addP99 := "", ""
		if direct != nil && p.name != "direct" {
			addP50 = signed(percentile(s.ttfts, 0.5) - percentile(direct.ttft.ttfts, 0.5))
			addP99 = signed(percentile(s.ttfts, 0.99) - percentile(direct.ttft.ttfts, 0.99))
		}
		pr("| %s | %d | %s | %s | %s | %s | %d | %d | %s | %s | %s | %d |\n", p.name, s.ok, dur(percentile(s.ttfts, 0.5)), dur(percentile(s.ttfts, 0.99)),
			addP50, addP99, p.ttftConns, x.ok, dur(percentile(x.ttfts, 0.5)), dur(percentile(x.ttfts, 0.99)), dur(percentile(x.totals, 0.5)), s.errs+x.errs)
		note(p.name+", time to first token", s.errs, s.firstErr)
		note(p.name+", time to first token, no pause", x.errs, x.firstErr)
	}
	if tr != nil && direct != nil && tr.firstChunk > 0 {
		pr("\nOver troupe's first-token-alone run, the node's own `%s` (from admission to the model's first chunk: the kind's request, the upstream's answer, the first event decoded) averaged %s; the client's time to first token averaged %s, and direct's %s.\n",
			firstChunkMetric, dur(tr.firstChunk), dur(mean(tr.ttft.ttfts)), dur(mean(direct.ttft.ttfts)))
	}
	pr("\n")

	pr("## %d concurrent streams\n\n", o.streams)
	pr("Closed loop: %d clients, each on its own kept-alive connection sending its next chat as soon as the last one ended, %v after a %v warm-up", o.streams, o.duration, o.warmup)
	if o.rounds > 1 {
		pr(", measured %d times, the round other processes disturbed least kept", o.rounds)
	}
	pr(". CPU is `utime + stime` from `/proc/PID/stat` over the run (nginx: master and worker), as a share of one CPU; per token, divided by the tokens of the chats answered. \"Client + upstream\" share CPU 1: near 100%% they, not the proxy, set the pace. \"Others\" is what other processes took on CPU 0 and 1.\n\n")
	pr("| path | chats/s | tokens/s | TTFT p50 | TTFT p99 | chat p50 | chat p99 | errors | proxy CPU | proxy CPU/token | client + upstream CPU | others, CPU 0 / 1 |\n")
	pr("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, p := range r.paths {
		s := &p.load
		rate := float64(s.ok) / s.elapsed.Seconds()
		cpu, per := "-", "-"
		if p.name != "direct" {
			cpu, per = pct(s.proxyCPU, s.elapsed), durFine(s.cpuPerToken(o.tokens))
		}
		if s.disturbed() > noisy {
			noisyRuns = append(noisyRuns, p.name)
		}
		pr("| %s | %.0f | %.0f | %s | %s | %s | %s | %d | %s | %s | %s | %s / %s |\n", p.name, rate, rate*float64(o.tokens),
			dur(percentile(s.ttfts, 0.5)), dur(percentile(s.ttfts, 0.99)), dur(percentile(s.totals, 0.5)), dur(percentile(s.totals, 0.99)),
			s.errs, cpu, per, pct(s.clientCPU+s.upstreamCPU, s.elapsed), pct(s.others0, s.elapsed), pct(s.others1, s.elapsed))
		note(fmt.Sprintf("%s, %d streams", p.name, o.streams), s.errs, s.firstErr)
		if sent := int64(s.ok + s.errs); s.upstreamRequests != sent {
			errs = append(errs, fmt.Sprintf("%s, %d streams: the upstream received %d requests for %d chats", p.name, o.streams, s.upstreamRequests, sent))
		}
	}
	pr("\n")
	if direct != nil && tr != nil && ngx != nil {
		rate := func(p *pathResult) float64 { return float64(p.load.ok) / p.load.elapsed.Seconds() }
		pr("Troupe ÷ nginx: CPU per token %.2fx, chats/s %.2fx. Chats/s over direct: nginx %.2f, troupe %.2f.\n\n",
			ratio(tr.load.cpuPerToken(o.tokens), ngx.load.cpuPerToken(o.tokens)), rate(tr)/rate(ngx), rate(ngx)/rate(direct), rate(tr)/rate(direct))
	}

	pr("## CPU per streamed token\n\n")
	pr("The proxy's CPU per token depends on how the tokens reach it: one read and one write each when they come one at a time, as from a real model, fewer when a busy proxy finds several waiting. The paced run measures the first, the goal's number: %d streams, closed loop, the upstream pausing %v between two tokens (%v after a warm-up), so that nearly every token arrives alone. The throughput run above is the second.\n\n", o.streams, o.pacedDelay, o.duration)
	pr("| path | run | chats/s | tokens/s | proxy CPU | proxy CPU/token | chat p50 | errors | others, CPU 0 / 1 |\n|---|---|--:|--:|--:|--:|--:|--:|--:|\n")
	for _, p := range r.paths {
		if p.name == "direct" {
			continue
		}
		for _, x := range []struct {
			run string
			r   *loadRun
		}{{fmt.Sprintf("paced, %v apart", o.pacedDelay), &p.paced}, {"throughput, no pause", &p.load}} {
			s := x.r
			rate := float64(s.ok) / s.elapsed.Seconds()
			pr("| %s | %s | %.0f | %.0f | %s | %s | %s | %d | %s / %s |\n", p.name, x.run, rate, rate*float64(o.tokens), pct(s.proxyCPU, s.elapsed),
				durFine(s.cpuPerToken(o.tokens)), dur(percentile(s.totals, 0.5)), s.errs, pct(s.others0, s.elapsed), pct(s.others1, s.elapsed))
		}
		note(p.name+", paced", p.paced.errs, p.paced.firstErr)
		if p.paced.disturbed() > noisy {
			noisyRuns = append(noisyRuns, p.name+" (paced)")
		}
	}
	pr("\n")

	pr("## Cancel to upstream close\n\n")
	pr("One chat at a time, the paths taking turns in blocks, each chat cancelled by the client (its connection closed) as soon as the first content delta arrives, %v apart: up to %d a path (%v in all), after %d uncounted. The upstream streams tokens %v apart and records when it notices each client gone; the lag is that time minus the client's cancel (both wall clock, one machine).\n\n", o.cancelGap, o.cancels, time.Duration(len(r.paths))*o.cancelTime, cancelWarm, o.cancelDelay)
	pr("| path | cancels | p50 | p99 | max | not seen by the upstream | errors |\n|---|--:|--:|--:|--:|--:|--:|\n")
	for _, p := range r.paths {
		c := &p.cancel
		pr("| %s | %d | %s | %s | %s | %d | %d |\n", p.name, c.cancelled, dur(percentile(c.lags, 0.5)), dur(percentile(c.lags, 0.99)), dur(maxOf(c.lags)), c.missed, c.errs)
		note(p.name+", cancels", c.errs, c.firstErr)
	}
	if tr != nil {
		c := &tr.cancel
		mean := "-"
		if c.metricCount > 0 {
			mean = dur(time.Duration(c.metricSum / float64(c.metricCount) * float64(time.Second)))
		}
		pr("\nThe node's `%s` over the counted cancels: count %d, mean %s (from the chat's cancel to the model's generation returning).\n", cancelMetric, c.metricCount, mean)
	}
	pr("\n")

	if len(errs)+len(noisyRuns) > 0 {
		pr("## Problems\n\n")
		for _, e := range errs {
			pr("- %s\n", e)
		}
		if len(noisyRuns) > 0 {
			pr("- **Noisy**: other processes took more than %.0f%% of a CPU during the CPU runs of %s; rerun on a quiet machine (or with -rounds 2) before trusting those rows.\n", 100*noisy, strings.Join(noisyRuns, ", "))
		}
		pr("\n")
	}
	return b.String()
}

func mean(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	var sum time.Duration
	for _, x := range d {
		sum += x
	}
	return sum / time.Duration(len(d))
}

func maxOf(sorted []time.Duration) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[len(sorted)-1]
}

func ratio(a, b time.Duration) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

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
	if d < time.Millisecond && d > -time.Millisecond {
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func signed(d time.Duration) string {
	if d < 0 {
		return "−" + dur(-d)
	}
	return "+" + dur(d)
}

func durFine(d time.Duration) string {
	return fmt.Sprintf("%.2f µs", float64(d)/float64(time.Microsecond))
}
