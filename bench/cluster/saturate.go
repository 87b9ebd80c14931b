package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Saturation: as many clients as places, so that a chat waits only when the
// cluster sends it to a full node while another has room.
const (
	satConcurrency = 64
	satQueue       = 64
	satAnswer      = "ab" // "a" at once, "b" one chat time later
)

// satRow is one run of the saturation benchmark.
type satRow struct {
	name             string
	nodes, gateways  int
	clients          int
	rate             float64 // chats answered per second
	ttfcP50, ttfcP99 time.Duration
	p50, p99         time.Duration
	// waited counts the chats sent in the window whose first chunk took
	// longer than half a chat (they queued), of sent.
	waited, sent  int
	chats, failed int // ended in the window
	byNode        map[string]int
	firstErr      string
	rerouted      float64 // chats a gateway moved after a node refused them
}

// saturate measures one node with satConcurrency clients, then three nodes
// with three times as many clients through one gateway, then the same
// clients split over two gateways sending at once, then one gateway whose
// clients send in rounds: every place taken at once, the next round when
// every answer is in.
func (b *bench) saturate(ctx context.Context) ([]satRow, error) {
	layout, err := b.fleet.layout("sat", fmt.Sprintf("version: 1\nllm:\n  class: dummy\n  args: {content: %q, delay: %s}\n  concurrency: %d\n  queue: %d\n",
		satAnswer, b.o.satChat, satConcurrency, satQueue))
	if err != nil {
		return nil, err
	}
	c := newChat("sat", "hi", satAnswer)
	var nodes []*node
	defer func() {
		for _, n := range nodes {
			n.kill()
		}
	}()
	start := func(i int) error {
		spec := nodeSpec{name: fmt.Sprintf("sat-%d", i), llm: "sat", layout: layout}
		if i > 1 {
			spec.join = nodes[0].gossipAddr()
		}
		n, err := b.fleet.start(ctx, spec)
		if err != nil {
			return err
		}
		nodes = append(nodes, n)
		return nil
	}
	hc := newClient(3 * satConcurrency)
	defer hc.CloseIdleConnections()
	var rows []satRow
	run := func(name string, gateways []*node, lockstep bool) {
		var shares []loadShare
		for _, g := range gateways {
			// Clients start spread over one chat, so that chats end and
			// begin all the time, as with real users, not in waves; or they
			// move in lockstep, every place filled at once.
			shares = append(shares, loadShare{endpoint: g.base + endpoint, clients: satConcurrency * len(nodes) / len(gateways),
				stagger: b.o.satChat, lockstep: lockstep})
		}
		clients := satConcurrency * len(nodes)
		fmt.Fprintf(os.Stderr, "saturation: %s, %d clients\n", name, clients)
		metric := func(series string) float64 {
			var sum float64
			for _, n := range nodes {
				sum += max(0, n.metric(series))
			}
			return sum
		}
		var reroutes [2]float64
		marks := 0
		rs, w := measuredShares(ctx, hc, shares, c, b.o.warmup, b.o.duration, func() {
			reroutes[marks] = metric("troupe_cluster_reroutes_total")
			marks++
		})
		ended, sent := within(rs, w)
		st := summarise(ended)
		row := satRow{name: name, nodes: len(nodes), gateways: len(gateways), clients: clients,
			rate: float64(st.ok) / w.dur().Seconds(), chats: st.ok, failed: st.failed, firstErr: st.firstErr,
			byNode: map[string]int{}, rerouted: reroutes[1] - reroutes[0]}
		var ttfc []time.Duration
		var lat []time.Duration
		for _, r := range sent {
			if !r.ok {
				continue
			}
			row.sent++
			ttfc = append(ttfc, r.firstChunk())
			lat = append(lat, r.latency())
			if r.firstChunk() > b.o.satChat/2 {
				row.waited++
			}
		}
		row.ttfcP50, row.ttfcP99 = percentile(ttfc, 0.5), percentile(ttfc, 0.99)
		row.p50, row.p99 = percentile(lat, 0.5), percentile(lat, 0.99)
		for _, r := range ended {
			if r.ok {
				row.byNode[r.node]++
			}
		}
		if st.failed > 0 {
			fmt.Fprintf(os.Stderr, "  %d chats failed, first: %s\n", st.failed, st.firstErr)
		}
		rows = append(rows, row)
	}

	if err := start(1); err != nil {
		return nil, err
	}
	run("1 node", nodes[:1], false)
	for i := 2; i <= 3; i++ {
		if err := start(i); err != nil {
			return nil, err
		}
	}
	if _, err := waitAlive(ctx, 3, 10*time.Second, nodes...); err != nil {
		return nil, err
	}
	// Each gateway routes to a member once it has the member's load.
	for _, g := range nodes[:2] {
		for _, to := range nodes {
			if to != g {
				if err := waitRoutes(ctx, hc, g.base+endpoint, c, to.name, 3*satConcurrency, 10*time.Second); err != nil {
					return nil, err
				}
			}
		}
	}
	run("3 nodes, 1 gateway", nodes[:1], false)
	run("3 nodes, 2 gateways", nodes[:2], false)
	run("3 nodes, 1 gateway, in rounds", nodes[:1], true)
	return rows, ctx.Err()
}
