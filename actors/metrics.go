package actors

import (
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the per-actor series, labelled by layout and by the actor's
// path in the layout tree (e.g. "egress/0/opencc"), never by PID or chat, so
// their number stays fixed however many chats run.
type Metrics struct {
	messages   *prometheus.CounterVec
	processing *prometheus.HistogramVec
	restarts   *prometheus.CounterVec
	failures   *prometheus.CounterVec
	cancels    *prometheus.HistogramVec
	firstChunk *prometheus.HistogramVec
	splices    *prometheus.CounterVec
	inFlight   *prometheus.GaugeVec
	mailboxes  *mailboxCollector
	// The layouts' circuit breakers: openings and refusals counted as
	// they happen, the state read at scrape time (an open breaker turns
	// half-open by the clock, with no event to set a gauge on).
	breakerOpens   *prometheus.CounterVec
	breakerRefused *prometheus.CounterVec
	breakers       *breakerCollector
}

// NewMetrics creates the per-actor metrics and registers them with reg; a nil
// reg registers nothing (for tests and benchmarks).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	labels := []string{"layout", "actor"}
	m := &Metrics{
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_actor_messages_total",
			Help: "Messages handled by an actor.",
		}, labels),
		processing: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "troupe_actor_processing_seconds",
			Help:    "Time an actor spent handling one message (a model's generation runs outside it).",
			Buckets: []float64{1e-6, 4e-6, 16e-6, 64e-6, 256e-6, 1e-3, 4e-3, 16e-3, 64e-3, 0.25},
		}, labels),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_actor_restarts_total",
			Help: "Restarts of an actor by its supervisor.",
		}, labels),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_actor_failures_total",
			Help: "Failures (panics) of an actor.",
		}, labels),
		cancels: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "troupe_model_cancel_seconds",
			Help:    "Time from a chat's cancel to its model's generation returning: how fast an upstream request is closed.",
			Buckets: []float64{1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5},
		}, labels),
		firstChunk: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "troupe_actor_first_chunk_seconds",
			Help:    "Time an actor added to a chat's way to its first chunk: its mailbox wait and work on the request (a model: until its first chunk; an output filter: what it held back).",
			Buckets: []float64{1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1, 5, 30},
		}, labels),
		splices: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_fallback_splices_total",
			Help: "Answers a fallback with resume continued on its next child after the failing one had started.",
		}, labels),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "troupe_actor_in_flight",
			Help: "Chats an actor holds now: a model's running and waiting in its host, a fallback's, fan-out's or pool's in progress.",
		}, labels),
		mailboxes: &mailboxCollector{
			desc: prometheus.NewDesc("troupe_actor_mailbox_depth",
				"User messages waiting in an actor's mailbox at scrape time.", labels, nil),
			boxes: map[actorKey]actor.Mailbox{},
		},
		breakerOpens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_layout_breaker_opens_total",
			Help: "Times a layout's circuit breaker opened on this node (a failed probe opens it again).",
		}, []string{"layout"}),
		breakerRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "troupe_layout_breaker_refused_total",
			Help: "Chats a layout's open (or probing) circuit breaker refused on this node; their gateway tried another node or answered 503.",
		}, []string{"layout"}),
		breakers: &breakerCollector{
			desc: prometheus.NewDesc("troupe_layout_breaker_state",
				"A layout's circuit breaker on this node: 0 closed, 1 half-open (its probe chat may or does run), 2 open.", []string{"layout"}, nil),
			byLayout: map[string]*Breaker{},
		},
	}
	if reg != nil {
		reg.MustRegister(m.messages, m.processing, m.restarts, m.failures, m.cancels, m.firstChunk, m.splices, m.inFlight, m.mailboxes,
			m.breakerOpens, m.breakerRefused, m.breakers)
	}
	return m
}

type actorKey struct{ layout, path string }

// actorMetrics are one actor's series, bound once at spawn so the per-message
// cost is two clock reads and two atomic adds.
type actorMetrics struct {
	key        actorKey
	messages   prometheus.Counter
	processing prometheus.Observer
	restarts   prometheus.Counter
	failures   prometheus.Counter
	firstChunk prometheus.Observer
	mailbox    actor.Mailbox // the actor's, once made
}

func (m *Metrics) forActor(layout, path string) *actorMetrics {
	return &actorMetrics{
		key:        actorKey{layout, path},
		messages:   m.messages.WithLabelValues(layout, path),
		processing: m.processing.WithLabelValues(layout, path),
		restarts:   m.restarts.WithLabelValues(layout, path),
		failures:   m.failures.WithLabelValues(layout, path),
		firstChunk: m.firstChunk.WithLabelValues(layout, path),
	}
}

// inFlightOf is the in-flight gauge of an actor that holds chats.
func (m *Metrics) inFlightOf(am *actorMetrics) prometheus.Gauge {
	return m.inFlight.WithLabelValues(am.key.layout, am.key.path)
}

// props returns the Props of one of a layout's actors: instrumented, run by
// the layout's dispatcher, with a mailbox the collector can read.
func (m *Metrics) props(am *actorMetrics, d actor.Dispatcher, producer actor.Producer, opts ...actor.PropsOption) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor { return &instrumented{actor: producer(), am: am, m: m} },
		append(opts,
			actor.WithDispatcher(d),
			actor.WithMailbox(func() actor.Mailbox {
				mb := actor.Unbounded()()
				m.mailboxes.set(am.key, mb)
				am.mailbox = mb
				return mb
			}))...)
}

// instrumented counts and times the messages an actor handles. It wraps the
// actor rather than being a receiver middleware because protoactor wraps
// every message in a new envelope for middlewares.
type instrumented struct {
	actor actor.Actor
	am    *actorMetrics
	m     *Metrics
}

func (i *instrumented) Receive(c actor.Context) {
	start := time.Now()
	i.actor.Receive(c)
	i.am.processing.Observe(time.Since(start).Seconds())
	i.am.messages.Inc()
	if _, stopped := c.Message().(*actor.Stopped); stopped {
		// A stopped actor's mailbox leaves the depth gauge with it.
		i.m.mailboxes.remove(i.am.key, i.am.mailbox)
	}
}

// mailboxCollector reads mailbox depths at scrape time: a gauge updated on
// every message would cost more than the messages themselves.
type mailboxCollector struct {
	desc  *prometheus.Desc
	mu    sync.Mutex
	boxes map[actorKey]actor.Mailbox
}

func (c *mailboxCollector) set(k actorKey, mb actor.Mailbox) {
	c.mu.Lock()
	c.boxes[k] = mb
	c.mu.Unlock()
}

// remove drops an actor's mailbox unless a newer actor of the same layout
// and path took its place: after a layout is reloaded, the old tree stops
// while the new one already serves.
func (c *mailboxCollector) remove(k actorKey, mb actor.Mailbox) {
	c.mu.Lock()
	if c.boxes[k] == mb {
		delete(c.boxes, k)
	}
	c.mu.Unlock()
}

func (c *mailboxCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *mailboxCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, mb := range c.boxes {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue,
			float64(mb.UserMessageCount()), k.layout, k.path)
	}
}

// breakerCollector reads the layouts' breaker states at scrape time.
type breakerCollector struct {
	desc     *prometheus.Desc
	mu       sync.Mutex
	byLayout map[string]*Breaker
}

func (c *breakerCollector) set(layout string, b *Breaker) {
	c.mu.Lock()
	c.byLayout[layout] = b
	c.mu.Unlock()
}

// remove drops a layout's breaker unless the layout's reloaded successor
// took its place.
func (c *breakerCollector) remove(layout string, b *Breaker) {
	c.mu.Lock()
	if c.byLayout[layout] == b {
		delete(c.byLayout, layout)
	}
	c.mu.Unlock()
}

func (c *breakerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *breakerCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for layout, b := range c.byLayout {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, b.Status().State.Value(), layout)
	}
}
