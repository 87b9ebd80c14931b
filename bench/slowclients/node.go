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
	addr string // host:port
}

// startNode starts troupe on nodeCPU (when taskset is there) with
// GOMAXPROCS=1 and its default limits unless -env says otherwise, and
// waits until it serves.
func startNode(ctx context.Context, o options, taskset, layout string) (*node, error) {
	args := []string{o.node}
	if taskset != "" && os.Getenv(pinnedEnv) != "" {
		args = []string{taskset, "-c", nodeCPU, o.node}
	}
	n, err := proc.StartNode(ctx, args, append([]string{
		"PATH=" + os.Getenv("PATH"),
		"GOMAXPROCS=1",
		"IGNORE_AGENT=1",
		"PORT=0", "GOSSIP_PORT=0", "REMOTE_PORT=0",
		"PUBLIC_ADDRESS=127.0.0.1", "BIND_ADDRESS=127.0.0.1",
		"LLM_NAME=slowclients",
		"LAYOUT_CONFIG=" + layout,
		"DRAIN_TIMEOUT=1s",
	}, o.env...))
	if err != nil {
		return nil, err
	}
	return &node{Node: n, addr: strings.TrimPrefix(n.Base, "http://")}, nil
}

// scrapeClient has a connection of its own, kept alive: at the limit it
// is one of the node's connections like the others.
var scrapeClient = &http.Client{Timeout: 10 * time.Second}

// series is what the node says of itself on /metrics, by series as
// written there (name and labels).
type series map[string]float64

// scrape reads the node's /metrics.
func (n *node) scrape() (series, error) {
	resp, err := scrapeClient.Get(n.Base + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("/metrics: %s", resp.Status)
	}
	s := series{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			s[line[:i]] = v
		}
	}
	return s, sc.Err()
}

// goMemory is the heap in use and the goroutines' stacks.
func (s series) goMemory() float64 {
	return s["go_memstats_heap_inuse_bytes"] + s["go_memstats_stack_inuse_bytes"]
}

func (s series) connections() float64 {
	return s[`troupe_http_connections{state="serving"}`] + s[`troupe_http_connections{state="waiting"}`]
}

func (s series) limit(name string) float64 { return s[`troupe_limit_hits_total{limit="`+name+`"}`] }
