package main

import (
	"context"
	"debug/buildinfo"
	"fmt"
	"os"
	"runtime"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// settle is how long a server is left alone before its idle RSS is read,
// so that the warm-up's connections are closed and its goroutines gone.
const settle = 500 * time.Millisecond

// rssInterval is how often RSS is sampled under load.
const rssInterval = 25 * time.Millisecond

// streamsLimit bounds the whole many-streams scenario.
const streamsLimit = 45 * time.Second

// bench runs the scenarios and fills the report.
type bench struct {
	o       options
	taskset string
	rep     *report
}

// runResult is one measured closed-loop run.
type runResult struct {
	target, input string
	clients       int
	loadStats
	serverCPU time.Duration
	genCPU    time.Duration
	othersCPU time.Duration // on serverCPU, by anything but the server
	peakRSS   int64
	// releases counts the times the server returned memory to the OS
	// during the run; -1 for a server that does not say (bare).
	releases int
}

func (r *runResult) rate() float64 { return float64(r.ok) / r.elapsed.Seconds() }

func (r *runResult) cpuPerChat() time.Duration {
	if r.ok == 0 {
		return 0
	}
	return r.serverCPU / time.Duration(r.ok)
}

// memory is a server's RSS once started, at idle after a warm-up, and its
// peak under load.
type memory struct {
	name                string
	started, idle, peak int64
}

func (b *bench) start(ctx context.Context, name, bin string, env []string) (*server, error) {
	fmt.Fprintf(os.Stderr, "starting %s...\n", name)
	return startServer(ctx, name, b.taskset, bin, env)
}

// matrix runs every input at every number of clients against one server.
func (b *bench) matrix(ctx context.Context, name, bin string, env []string, inputs []input, chats map[string]chat) error {
	srv, err := b.start(ctx, name, bin, env)
	if err != nil {
		return err
	}
	defer srv.stop()
	mem := memory{name: name}
	if err := sleep(ctx, settle); err != nil {
		return err
	}
	if mem.started, err = proc.RSS(srv.pid); err != nil {
		return err
	}

	// Idle means after one warm-up with every input, which loads what a
	// first chat loads, once its connections are gone.
	for _, in := range inputs {
		conns, err := dialAll(srv.url, chats[in.name], 8)
		if err != nil {
			return err
		}
		closedLoop(ctx, conns, chats[in.name].want, b.o.warmup)
		closeAll(conns)
	}
	if err := sleep(ctx, settle); err != nil {
		return err
	}
	if mem.idle, err = proc.RSS(srv.pid); err != nil {
		return err
	}

	for _, in := range inputs {
		for _, n := range b.o.clients {
			r, err := b.measure(ctx, srv, in.name, chats[in.name], n)
			if err != nil {
				return err
			}
			mem.peak = max(mem.peak, r.peakRSS)
			b.rep.runs = append(b.rep.runs, r)
		}
	}
	b.rep.memory = append(b.rep.memory, mem)
	return nil
}

// measure runs one closed-loop load -rounds times and keeps the round that
// other processes disturbed least: on a shared machine that is the one
// closest to what the server alone can do.
func (b *bench) measure(ctx context.Context, srv *server, inputName string, c chat, clients int) (runResult, error) {
	var best runResult
	for i := range b.o.rounds {
		fmt.Fprintf(os.Stderr, "  %s %s x%d (round %d of %d)\n", srv.name, inputName, clients, i+1, b.o.rounds)
		r, err := b.measureOnce(ctx, srv, inputName, c, clients)
		if err != nil {
			return r, err
		}
		if i == 0 || r.othersCPU.Seconds()/r.elapsed.Seconds() < best.othersCPU.Seconds()/best.elapsed.Seconds() {
			peak := max(best.peakRSS, r.peakRSS)
			best = r
			best.peakRSS = peak
		} else {
			best.peakRSS = max(best.peakRSS, r.peakRSS)
		}
	}
	return best, nil
}

// measureOnce warms up then runs one closed-loop load, with the server's
// CPU and RSS and the generator's CPU around it.
func (b *bench) measureOnce(ctx context.Context, srv *server, inputName string, c chat, clients int) (runResult, error) {
	conns, err := dialAll(srv.url, c, clients)
	if err != nil {
		return runResult{}, err
	}
	defer closeAll(conns)
	closedLoop(ctx, conns, c.want, b.o.warmup)

	r := runResult{target: srv.name, input: inputName, clients: clients}
	cpu0, err := proc.CPUTime(srv.pid)
	if err != nil {
		return r, err
	}
	busy0, err := proc.CPUBusy(serverCPU)
	if err != nil {
		return r, err
	}
	gen0 := selfCPU()
	released0, counted := srv.memoryReleases()
	sampler := sampleRSS(srv.pid, rssInterval)
	r.loadStats = closedLoop(ctx, conns, c.want, b.o.duration)
	r.peakRSS = sampler.stop()
	r.genCPU = selfCPU() - gen0
	r.releases = -1
	if released1, ok := srv.memoryReleases(); counted && ok {
		r.releases = released1 - released0
	}
	cpu1, err := proc.CPUTime(srv.pid)
	if err != nil {
		return r, err
	}
	r.serverCPU = cpu1 - cpu0
	busy1, err := proc.CPUBusy(serverCPU)
	if err != nil {
		return r, err
	}
	// Other work on the server's CPU (other processes, interrupts) takes
	// time from the server; it is reported so that a noisy run shows.
	r.othersCPU = max(0, busy1-busy0-r.serverCPU)
	if err := ctx.Err(); err != nil {
		return r, err
	}
	return r, srv.alive()
}

// chunked measures troupe streaming the long answer one rune per chunk.
func (b *bench) chunked(ctx context.Context, env []string, c chat) error {
	srv, err := b.start(ctx, "troupe (chunk: 1)", b.o.troupe, env)
	if err != nil {
		return err
	}
	defer srv.stop()
	r, err := b.measure(ctx, srv, "long", c, b.o.chunkClients)
	if err != nil {
		return err
	}
	b.rep.chunked = &r
	return nil
}

// streams measures troupe's memory per in-flight streaming chat.
func (b *bench) streams(ctx context.Context, env []string, c chat) error {
	srv, err := b.start(ctx, "troupe (dummy)", b.o.troupe, env)
	if err != nil {
		return err
	}
	defer srv.stop()
	fmt.Fprintf(os.Stderr, "  %d streams held open\n", b.o.streams)
	// A short first wave of the same size warms up what holding many
	// streams needs once (the admission queue, pools, the accept path)
	// without leaving the heap grown by a full wave.
	if err := warmStreams(ctx, srv, c, 16); err != nil {
		return err
	}
	if err := sleep(ctx, settle); err != nil {
		return err
	}
	st, err := holdStreams(ctx, srv, c, b.o.streams, time.Second, streamsLimit)
	if err != nil {
		return err
	}
	b.rep.streams = &st
	return srv.alive()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// serverGoVersion is the Go version a server binary was built with.
func serverGoVersion(bin string) string {
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		return bi.GoVersion
	}
	return runtime.Version()
}
