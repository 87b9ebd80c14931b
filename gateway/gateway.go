// Package gateway is Troupe's HTTP edge: the Agent's worker API (chat,
// abort, health), the metrics endpoint, and the Agent client that registers
// the node. It runs chats on layouts it is given; how a layout is built is
// not its business.
package gateway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/julienschmidt/httprouter"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/troupe-llm/troupe/actors"
)

// Config configures a gateway. Zero values take the documented defaults.
type Config struct {
	// Endpoint is the path of the chat endpoint; default "/v1/completion".
	// The gateway also serves Endpoint+"/N" for every slot N the node
	// registers with the Agent, and Endpoint+"/abort" and
	// Endpoint+"/N/abort".
	Endpoint string
	// Layouts maps each LLM name the node serves to its running layout.
	Layouts map[string]*actors.Layout
	// Router chooses the node for each chat; nil runs every chat here.
	Router Router
	// ChatTimeout bounds a chat from admission to its last byte; default
	// 10 minutes.
	ChatTimeout time.Duration
	// Limits bound requests, answers and connections; zero fields take
	// DefaultLimits' values.
	Limits Limits
	// ReleaseMemoryAfter is how long the node must go without chats before
	// it returns the memory they left free to the OS (at most every 10 s);
	// default 200ms, negative never.
	ReleaseMemoryAfter time.Duration
	// APIKeys, when not empty, are the Bearer tokens the OpenAI-compatible
	// API accepts; empty leaves it open. The Agent's API never asks for one:
	// the Agent sends none.
	APIKeys []string
	// Gatherer serves /metrics; nil serves prometheus.DefaultGatherer.
	Gatherer prometheus.Gatherer
	// Registerer receives the gateway's metrics; nil registers nothing.
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

// Server is the HTTP edge of one node.
type Server struct {
	cfg     Config
	system  *actor.ActorSystem
	logger  *slog.Logger
	metrics *metrics
	router  *httprouter.Router
	conns   *connLimiter

	layouts      *actors.LayoutSet
	chatPrefix   string
	chatSeq      atomic.Uint64
	layoutSeries sync.Map // layout name to *chatMetrics
	memory       *memoryReleaser
	apiKeys      apiKeys
	started      time.Time
	status       statusState // status page, readiness and drain (ready.go)

	mu       sync.Mutex
	draining bool
	drained  chan struct{}          // closed when draining and no chat is left
	running  map[string]runningChat // by chat id
}

// runningChat is a chat in flight, as the gateway tracks it for abort and
// for draining.
type runningChat struct {
	slot   string
	cancel context.CancelCauseFunc
}

var (
	errAborted  = errors.New("aborted")
	errShutdown = errors.New("the node is shutting down")
)

// New returns a gateway serving the given layouts on system.
func New(cfg Config, system *actor.ActorSystem) (*Server, error) {
	if cfg.Endpoint == "" {
		cfg.Endpoint = "/v1/completion"
	}
	if !strings.HasPrefix(cfg.Endpoint, "/") || strings.HasSuffix(cfg.Endpoint, "/") {
		return nil, fmt.Errorf("endpoint %q: want a path that starts with / and does not end with it", cfg.Endpoint)
	}
	layouts := actors.NewLayoutSet(maps.Clone(cfg.Layouts))
	if len(cfg.Layouts) == 0 {
		return nil, errors.New("gateway: no layouts to serve")
	}
	if cfg.ChatTimeout <= 0 {
		cfg.ChatTimeout = 10 * time.Minute
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.ReleaseMemoryAfter == 0 {
		cfg.ReleaseMemoryAfter = 200 * time.Millisecond
	}
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.DefaultGatherer
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Router == nil {
		cfg.Router = localRouter{layouts}
	}
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	conns := &connLimiter{max: cfg.Limits.MaxConnections}
	s := &Server{
		cfg:        cfg,
		system:     system,
		logger:     cfg.Logger,
		layouts:    layouts,
		metrics:    newMetrics(cfg.Registerer, layouts, conns),
		conns:      conns,
		chatPrefix: hex.EncodeToString(prefix[:]) + "-",
		running:    map[string]runningChat{},
		memory:     newMemoryReleaser(cfg.ReleaseMemoryAfter, debug.FreeOSMemory, realClock{}, cfg.Registerer),
		drained:    make(chan struct{}),
		apiKeys:    newAPIKeys(cfg.APIKeys),
		started:    time.Now(),
	}
	conns.metrics = s.metrics
	for name := range layouts.Map() {
		s.chatMetrics(name)
	}
	s.metrics.registration.WithLabelValues(stateUninitialized).Set(1)
	r, err := s.routes()
	if err != nil {
		return nil, err
	}
	s.router = r
	return s, nil
}

// routes builds the HTTP routes. httprouter panics on paths that clash (an
// ENDPOINT of "/v1" would put its slots beside /v1/models): that is a bad
// setting, reported as an error.
func (s *Server) routes() (r *httprouter.Router, err error) {
	cfg := s.cfg
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("endpoint %q clashes with another route (%v): choose another ENDPOINT", cfg.Endpoint, p)
		}
	}()
	r = httprouter.New()
	// The chat handlers mark their connection serving once they have
	// their request; the others serve from the start (see connLimiter).
	r.POST(chatCompletionsPath, s.handleChatCompletions)
	r.GET(modelsPath, serving(s.handleModels))
	r.POST(cfg.Endpoint, s.handleChat)
	r.POST(cfg.Endpoint+"/:slot", s.handleChat)
	// httprouter cannot hold both /abort and /:slot at one level, so the
	// slot handler also takes "abort".
	r.GET(cfg.Endpoint+"/:slot", serving(s.handleSlotGet))
	r.GET(cfg.Endpoint+"/:slot/abort", serving(s.handleSlotAbort))
	r.GET("/health", serving(s.handleHealth))
	r.HEAD("/health", serving(s.handleHealth))
	r.GET("/ready", serving(s.handleReady))
	r.HEAD("/ready", serving(s.handleReady))
	r.POST("/drain", serving(s.handleDrain))
	r.GET("/", serving(s.handleStatusPage))
	r.GET("/status.json", serving(s.handleStatusJSON))
	metrics := promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{})
	r.GET("/metrics", serving(func(w http.ResponseWriter, r *http.Request, _ httprouter.Params) { metrics.ServeHTTP(w, r) }))
	return r, nil
}

// serving marks the connection of h's requests serving while h runs.
func serving(h httprouter.Handle) httprouter.Handle {
	return func(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
		c := connOf(r)
		c.serve()
		defer c.rest()
		h(w, r, ps)
	}
}

// Handler returns the gateway's HTTP handler.
func (s *Server) Handler() http.Handler { return s.router }

// SlotURLs returns the chat endpoint URLs to register with the Agent for an
// LLM name, one per chat the layout runs at once: the Agent sends one chat
// at a time to each URL, so this is how it learns the node's capacity.
func (s *Server) SlotURLs(base, name string) []string {
	l, _ := s.layouts.Get(name)
	if l == nil {
		return nil
	}
	urls := make([]string, l.Admission.Capacity())
	urls[0] = base + s.cfg.Endpoint
	for i := 1; i < len(urls); i++ {
		urls[i] = base + s.cfg.Endpoint + "/" + strconv.Itoa(i)
	}
	return urls
}

// SetLayouts replaces the layouts the node serves, as a reload of its
// layout file does: new chats go to the new set, chats in flight keep the
// layout they started on. It returns the layouts it replaced, for the
// caller to stop once their chats have ended.
func (s *Server) SetLayouts(layouts map[string]*actors.Layout) map[string]*actors.Layout {
	old := s.layouts.Swap(maps.Clone(layouts))
	for name := range layouts {
		s.chatMetrics(name)
	}
	return old
}

// StartDraining makes the gateway refuse new chats with 503; chats in flight
// go on.
func (s *Server) StartDraining() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.draining {
		s.draining = true
		s.memory.stop()
		if len(s.running) == 0 {
			close(s.drained)
		}
	}
}

// Drain refuses new chats and waits for the ones in flight to finish. When
// ctx ends first it cancels them, waits for their handlers to answer, and
// returns ctx's error.
func (s *Server) Drain(ctx context.Context) error {
	s.StartDraining()
	select {
	case <-s.drained:
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for _, c := range s.running {
		c.cancel(errShutdown)
	}
	s.mu.Unlock()
	<-s.drained
	return ctx.Err()
}

// InFlight returns the number of chats the gateway is serving.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.running)
}

func (s *Server) handleHealth(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) newChatID() string {
	var buf [32]byte
	return string(strconv.AppendUint(append(buf[:0], s.chatPrefix...), s.chatSeq.Add(1), 36))
}

// chatMetrics are one layout's per-chat series, bound once so that a chat
// does no label lookups.
type chatMetrics struct {
	completed   prometheus.Counter
	queueWait   prometheus.Observer
	firstChunk  prometheus.Observer
	chunkGap    prometheus.Observer
	duration    prometheus.Observer
	outputChars prometheus.Observer
	outputSpeed prometheus.Observer
	// Tokens as the model reported them.
	promptTokens     prometheus.Counter
	completionTokens prometheus.Counter
}

// chatMetrics returns a layout's series. The layouts of other nodes are
// bound on their first chat here; their names come from the cluster, so
// there are few.
func (s *Server) chatMetrics(layout string) *chatMetrics {
	if m, ok := s.layoutSeries.Load(layout); ok {
		return m.(*chatMetrics)
	}
	m, _ := s.layoutSeries.LoadOrStore(layout, &chatMetrics{
		completed:        s.metrics.chats.WithLabelValues(layout, outcomeCompleted),
		queueWait:        s.metrics.queueWait.WithLabelValues(layout),
		firstChunk:       s.metrics.firstChunk.WithLabelValues(layout),
		chunkGap:         s.metrics.chunkGap.WithLabelValues(layout),
		duration:         s.metrics.duration.WithLabelValues(layout),
		outputChars:      s.metrics.outputChars.WithLabelValues(layout),
		outputSpeed:      s.metrics.outputSpeed.WithLabelValues(layout),
		promptTokens:     s.metrics.tokens.WithLabelValues(layout, "prompt"),
		completionTokens: s.metrics.tokens.WithLabelValues(layout, "completion"),
	})
	return m.(*chatMetrics)
}

// track records a chat in flight; it reports false while draining.
func (s *Server) track(id, slot string, cancel context.CancelCauseFunc) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	s.running[id] = runningChat{slot: slot, cancel: cancel}
	s.memory.chatStarted()
	return true
}

func (s *Server) untrack(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.running, id)
	s.memory.chatEnded()
	if s.draining && len(s.running) == 0 {
		close(s.drained)
	}
}

// abortSlot cancels the chats that came in through one endpoint slot.
func (s *Server) abortSlot(slot string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.running {
		if c.slot == slot {
			c.cancel(errAborted)
			n++
		}
	}
	return n
}
