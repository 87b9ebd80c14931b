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

// guardMetrics count what the guard turned away: they exist from New on,
// before the remote listens, so they are built apart from the others,
// which need a started cluster.
type guardMetrics struct {
	refused *prometheus.CounterVec
	dropped *prometheus.CounterVec
	panics  prometheus.Counter
	gossip  *prometheus.CounterVec
}

func newGuardMetrics(reg prometheus.Registerer) *guardMetrics {
	m := &guardMetrics{
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_remote_refused_total",
			Help: "Connections to the remote port refused at the TLS handshake, by reason (no_certificate, bad_certificate, not_tls, incomplete, handshake).",
		}, []string{"reason"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_remote_dropped_total",
			Help: "Messages from the remote link dropped before protoactor saw them, by reason (unknown_type, undecodable, malformed, serializer, unary_call).",
		}, []string{"reason"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_remote_panics_total",
			Help: "Panics recovered in the remote link's stream handler; each ended only its own stream.",
		}),
		gossip: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_gossip_malformed_total",
			Help: "Gossip from members that could not be read and was dropped, by part (message, state, meta).",
		}, []string{"part"}),
	}
	// Every reason shows from the start, at 0, so that an alert on a rise
	// has a series to compare with.
	for _, r := range refusalReasons {
		m.refused.WithLabelValues(r)
	}
	for _, r := range dropReasons {
		m.dropped.WithLabelValues(r)
	}
	for _, p := range gossipParts {
		m.gossip.WithLabelValues(p)
	}
	if reg != nil {
		reg.MustRegister(m.refused, m.dropped, m.panics, m.gossip)
	}
	return m
}
