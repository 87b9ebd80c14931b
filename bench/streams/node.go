package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/bench/internal/proc"
)

// node is the node process under test.
type node struct {
	*proc.Node
	url string // the chat endpoint
}

// startNode starts the node on nodeCPU (when taskset is there) with
// GOMAXPROCS=1, and waits until it serves.
func startNode(ctx context.Context, o options, taskset, layout string, chatTimeout time.Duration) (*node, error) {
	args := []string{o.node}
	if taskset != "" && os.Getenv(pinnedEnv) != "" {
		args = []string{taskset, "-c", nodeCPU, o.node}
	}
	n, err := proc.StartNode(ctx, args, []string{
		"PATH=" + os.Getenv("PATH"),
		"GOMAXPROCS=1",
		"IGNORE_AGENT=1",
		"PORT=0", "GOSSIP_PORT=0", "REMOTE_PORT=0",
		"PUBLIC_ADDRESS=127.0.0.1", "BIND_ADDRESS=127.0.0.1",
		"LLM_NAME=streams",
		"LAYOUT_CONFIG=" + layout,
		"CHAT_TIMEOUT=" + chatTimeout.String(),
		// Every stream is a connection, and so is a scrape of /metrics.
		"MAX_CONNECTIONS=" + strconv.Itoa(o.streams+1024),
		"DRAIN_TIMEOUT=1s",
	})
	if err != nil {
		return nil, err
	}
	return &node{Node: n, url: n.Base + "/v1/completion"}, nil
}

var scrapeClient = &http.Client{Timeout: 5 * time.Second}

// goStats are the node's own Go runtime figures, from its /metrics.
type goStats struct {
	heapInuse, stackInuse, goroutines, nextGC, gcs float64
}

func (n *node) goStats() (goStats, error) {
	resp, err := scrapeClient.Get(n.Base + "/metrics")
	if err != nil {
		return goStats{}, err
	}
	defer resp.Body.Close()
	var st goStats
	want := map[string]*float64{
		"go_memstats_heap_inuse_bytes":  &st.heapInuse,
		"go_memstats_stack_inuse_bytes": &st.stackInuse,
		"go_goroutines":                 &st.goroutines,
		"go_memstats_next_gc_bytes":     &st.nextGC,
		"go_gc_duration_seconds_count":  &st.gcs,
	}
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		name, value, ok := strings.Cut(s.Text(), " ")
		if p := want[name]; ok && p != nil {
			if *p, err = strconv.ParseFloat(value, 64); err != nil {
				return goStats{}, fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	return st, s.Err()
}
