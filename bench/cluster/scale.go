package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Scale-out: each node's model runs scaleConcurrency chats at once, each
// scaleChars characters with a sleep between them, so a node's throughput
// is bounded by its model, not its CPU.
const (
	scaleConcurrency = 4
	scaleQueue       = 8
	scaleChars       = 10
)

// scaleRow is the throughput of n nodes behind one gateway.
type scaleRow struct {
	nodes   int
	clients int
	rate    float64 // chats answered per second
	p50     time.Duration
	failed  int
	byNode  map[string]int
	ideal   float64 // what the models allow: nodes x concurrency / chat time
}

// scale measures chats per second through one node's gateway with 1, then
// 2, then 3 nodes serving the LLM. Clients grow with the nodes (enough to
// fill every node's model and keep half its queue busy), so that each
// model always has a chat waiting: then the only losses are the cluster's.
func (b *bench) scale(ctx context.Context) ([]scaleRow, error) {
	content := "0123456789"[:scaleChars]
	layout, err := b.fleet.layout("scale", fmt.Sprintf("version: 1\nllm:\n  class: dummy\n  args: {content: %q, delay: %s}\n  concurrency: %d\n  queue: %d\n",
		content, b.o.scaleDelay, scaleConcurrency, scaleQueue))
	if err != nil {
		return nil, err
	}
	// The dummy model emits its first character at once and sleeps
	// before each of the others.
	chatTime := time.Duration(scaleChars-1) * b.o.scaleDelay
	c := newChat("scale", "hi", content)
	var nodes []*node
	defer func() {
		for _, n := range nodes {
			n.kill()
		}
	}()
	var rows []scaleRow
	for n := 1; n <= 3; n++ {
		spec := nodeSpec{name: fmt.Sprintf("scale-%d", n), llm: "scale", layout: layout}
		if n > 1 {
			spec.join = nodes[0].gossipAddr()
		}
		nd, err := b.fleet.start(ctx, spec)
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, nd)
		if _, err := waitAlive(ctx, n, 10*time.Second, nodes...); err != nil {
			return nil, err
		}
		clients := n * (scaleConcurrency + scaleQueue/2)
		hc := newClient(clients)
		gw := nodes[0].base + endpoint
		if n > 1 {
			// The newcomer's load reaches the gateway by gossip.
			if err := waitRoutes(ctx, hc, gw, c, nd.name, clients, 10*time.Second); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(os.Stderr, "scale-out: %d node(s), %d clients\n", n, clients)
		rs, w := measured(ctx, hc, gw, c, clients, b.o.warmup, b.o.duration, func() {})
		ended, sent := within(rs, w)
		st := summarise(ended)
		row := scaleRow{nodes: n, clients: clients, failed: st.failed, byNode: map[string]int{},
			rate:  float64(st.ok) / w.dur().Seconds(),
			p50:   summarise(sent).p50,
			ideal: float64(n*scaleConcurrency) / chatTime.Seconds()}
		for _, r := range ended {
			if r.ok {
				row.byNode[r.node]++
			}
		}
		if st.failed > 0 {
			fmt.Fprintf(os.Stderr, "  %d chats failed, first: %s\n", st.failed, st.firstErr)
		}
		rows = append(rows, row)
		hc.CloseIdleConnections()
	}
	return rows, nil
}
