package gateway

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/troupe-llm/troupe/actors"
)

// Chat outcomes, the values of the outcome label.
const (
	outcomeCompleted = "completed"
	outcomeFailed    = "failed"
	outcomeRejected  = "rejected"
	outcomeCancelled = "cancelled" // the client went away
	outcomeAborted   = "aborted"   // stopped through the abort endpoint
	outcomeTimedOut  = "timed_out"
	outcomeCut       = "cut" // the answer reached MaxAnswerBytes
)

// metrics are the gateway's series, built in one place against an injected
// registerer.
type metrics struct {
	chats        *prometheus.CounterVec
	badRequests  *prometheus.CounterVec
	queueWait    *prometheus.HistogramVec
	firstChunk   *prometheus.HistogramVec
	chunkGap     *prometheus.HistogramVec
	duration     *prometheus.HistogramVec
	outputChars  *prometheus.HistogramVec
	outputSpeed  *prometheus.HistogramVec
	tokens       *prometheus.CounterVec
	layoutLoads  *layoutCollector
	registration *prometheus.GaugeVec
	regAttempts  *prometheus.CounterVec
	sent         prometheus.Counter
	reroutes     prometheus.Counter
	dispatch     prometheus.Histogram
	limitHits    *prometheus.CounterVec
	reclaimed    prometheus.Counter
	connections  *connCollector
}

var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

func newMetrics(reg prometheus.Registerer, layouts *actors.LayoutSet, conns *connLimiter) *metrics {
	l := []string{"layout"}
	m := &metrics{
		chats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_chats_total",
			Help: "Chats by layout and outcome (completed, failed, rejected, cancelled, aborted, timed_out, cut).",
		}, []string{"layout", "outcome"}),
		badRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_chat_bad_requests_total",
			Help: "Chat requests refused with 4xx before reaching a layout, by reason.",
		}, []string{"reason"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "troupe_chat_queue_wait_seconds", Help: "Time a chat waited for a place in its layout.",
			Buckets: latencyBuckets,
		}, l),
		firstChunk: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "troupe_chat_first_chunk_seconds", Help: "Time from admission to a chat's first output chunk.",
			Buckets: latencyBuckets,
		}, l),
		chunkGap: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "troupe_chat_chunk_interval_seconds", Help: "Time between consecutive output chunks of a chat.",
			Buckets: latencyBuckets,
		}, l),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "troupe_chat_duration_seconds", Help: "Time from admission to a chat's last byte.",
			Buckets: latencyBuckets,
		}, l),
		outputChars: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "troupe_chat_output_characters", Help: "Characters (runes) of a chat's answer.",
			Buckets: prometheus.ExponentialBuckets(16, 4, 8),
		}, l),
		outputSpeed: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "troupe_chat_output_characters_per_second", Help: "A completed chat's output characters over its duration.",
			Buckets: prometheus.ExponentialBuckets(10, 4, 10),
		}, l),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_chat_tokens_total",
			Help: "Tokens of completed chats as their model reported them, by kind (prompt, completion).",
		}, []string{"layout", "kind"}),
		layoutLoads: &layoutCollector{
			layouts: layouts,
			inFlight: prometheus.NewDesc("troupe_chats_in_flight",
				"Chats running in a layout now.", l, nil),
			queued: prometheus.NewDesc("troupe_chats_queued",
				"Chats waiting for a place in a layout now.", l, nil),
			capacity: prometheus.NewDesc("troupe_layout_capacity",
				"Chats a layout runs at once.", l, nil),
			healthy: prometheus.NewDesc("troupe_layout_healthy",
				"1 when a layout takes chats, 0 while it recovers from failures.", l, nil),
		},
		registration: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "troupe_agent_registration_state",
			Help: "The Agent client's state: 1 for the current one of uninitialized, trying, registered, failed, unregistered.",
		}, []string{"state"}),
		regAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_agent_register_attempts_total",
			Help: "Registration rounds with the Agent, by result (ok, error).",
		}, []string{"result"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_cluster_chats_sent_total",
			Help: "Chats this node's gateway sent to other nodes to run.",
		}),
		reroutes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_cluster_reroutes_total",
			Help: "Chats tried on another node because theirs was full or went away before answering.",
		}),
		dispatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "troupe_cluster_dispatch_seconds",
			Help:    "Time from sending a chat to another node until its generation began there (the hop both ways plus its queue).",
			Buckets: latencyBuckets,
		}),
		limitHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_limit_hits_total",
			Help: "Requests, answers and connections a limit stopped, by limit (body, history_messages, history_bytes, answer, chat_timeout, header_size, header_timeout, body_timeout, idle_timeout, connections).",
		}, []string{"limit"}),
		reclaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "troupe_http_connections_reclaimed_total",
			Help: "Connections closed at MAX_CONNECTIONS to make room for a new one: the one that had waited longest without a request being served.",
		}),
		connections: &connCollector{
			conns: conns,
			open: prometheus.NewDesc("troupe_http_connections",
				"HTTP connections open now, streams taken over from net/http included, by state: serving a request, or waiting (idle, or a request arriving).",
				[]string{"state"}, nil),
			limit: prometheus.NewDesc("troupe_http_connections_limit",
				"The most HTTP connections open at once (MAX_CONNECTIONS).", nil, nil),
		},
	}
	for _, limit := range limitNames {
		m.limitHits.WithLabelValues(limit)
	}
	if reg != nil {
		reg.MustRegister(m.chats, m.badRequests, m.queueWait, m.firstChunk, m.chunkGap, m.duration,
			m.outputChars, m.outputSpeed, m.tokens, m.layoutLoads, m.registration, m.regAttempts, m.sent, m.reroutes, m.dispatch,
			m.limitHits, m.reclaimed, m.connections)
	}
	return m
}

// connCollector reads the HTTP connections at scrape time.
type connCollector struct {
	conns       *connLimiter
	open, limit *prometheus.Desc
}

func (c *connCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.open
	ch <- c.limit
}

func (c *connCollector) Collect(ch chan<- prometheus.Metric) {
	serving, waiting := c.conns.counts()
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(serving), "serving")
	ch <- prometheus.MustNewConstMetric(c.open, prometheus.GaugeValue, float64(waiting), "waiting")
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(c.conns.max))
}

// layoutCollector reads each layout's load and health at scrape time.
type layoutCollector struct {
	layouts                             *actors.LayoutSet
	inFlight, queued, capacity, healthy *prometheus.Desc
}

func (c *layoutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inFlight
	ch <- c.queued
	ch <- c.capacity
	ch <- c.healthy
}

func (c *layoutCollector) Collect(ch chan<- prometheus.Metric) {
	for name, l := range c.layouts.Map() {
		running, queued := l.Admission.Load()
		healthy := 0.0
		if l.Health().Healthy {
			healthy = 1
		}
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(running), name)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(queued), name)
		ch <- prometheus.MustNewConstMetric(c.capacity, prometheus.GaugeValue, float64(l.Admission.Capacity()), name)
		ch <- prometheus.MustNewConstMetric(c.healthy, prometheus.GaugeValue, healthy, name)
	}
}
