package cluster

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cluster's series; member counts are read at scrape time.
type metrics struct {
	received prometheus.Counter
	members  *membersCollector
}

func newMetrics(reg prometheus.Registerer, c *Cluster) *metrics {
	m := &metrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_cluster_chats_received_total",
			Help: "Chats other nodes' gateways sent to this node to run.",
		}),
		members: &membersCollector{c: c, desc: prometheus.NewDesc("troupe_cluster_members",
			"Cluster members as this node sees them, itself included, by state (alive, suspect, dead).",
			[]string{"state"}, nil)},
	}
	if reg != nil {
		reg.MustRegister(m.received, m.members)
	}
	return m
}

type membersCollector struct {
	c    *Cluster
	desc *prometheus.Desc
}

func (mc *membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- mc.desc }

// Collect counts this node and its members; a dead member counts for 15 s,
// as long as memberlist gossips about it.
func (mc *membersCollector) Collect(ch chan<- prometheus.Metric) {
	c := mc.c
	alive, suspect, dead := 1, 0, 0
	c.mu.Lock()
	for _, m := range c.members {
		m.mu.Lock()
		if m.suspect {
			suspect++
		} else {
			alive++
		}
		m.mu.Unlock()
	}
	for _, d := range c.dead {
		if time.Since(d.at) < 15*time.Second {
			dead++
		}
	}
	c.mu.Unlock()
	for state, n := range map[string]int{"alive": alive, "suspect": suspect, "dead": dead} {
		ch <- prometheus.MustNewConstMetric(mc.desc, prometheus.GaugeValue, float64(n), state)
	}
}
