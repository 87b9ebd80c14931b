package gateway

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/julienschmidt/httprouter"
)

// Readiness and draining. /health is liveness: 204 while the process
// serves HTTP at all. /ready is readiness, what a load balancer, a
// Kubernetes readinessProbe or a compose healthcheck asks before sending
// chats: 503 with the reason before the node has joined its cluster, while
// it drains, and while none of its layouts is healthy.

// StatusConfig tells the gateway what its status page, readiness and drain
// endpoint need to know beyond its layouts. Give it with SetStatus before
// serving; a gateway without one is ready when a layout is healthy and has
// no drain endpoint.
type StatusConfig struct {
	// Node is this node's name in the cluster.
	Node    string
	Version string
	// AgentURL is the Agent's API base; empty when the node does not
	// register with an Agent.
	AgentURL string
	// Cluster, when not nil, tells readiness whether the node has joined
	// and the status page who the members are.
	Cluster ClusterView
	// Drain, when not nil, is what POST /drain runs (from this host only):
	// it makes the node stop taking chats and finish the ones it has,
	// returning when they are done or ctx ends. The node then waits for its
	// signal to leave and exit. Kubernetes' preStop hook calls it through
	// `troupe drain`.
	Drain func(ctx context.Context) error
}

// ClusterView is what the gateway reads of the cluster for status and
// readiness.
type ClusterView interface {
	// Joined reports whether the node is part of its cluster yet.
	Joined(ctx context.Context) bool
	// Members lists the nodes of the cluster, this one first.
	Members() []MemberStatus
}

// MemberStatus is one node of the cluster, as the status page shows it.
type MemberStatus struct {
	Name     string               `json:"name"`
	Self     bool                 `json:"self,omitempty"`
	State    string               `json:"state"`
	Gossip   string               `json:"gossip,omitempty"`
	Remote   string               `json:"remote,omitempty"`
	HTTPBase string               `json:"http,omitempty"`
	Heard    time.Time            `json:"heard,omitzero"`
	Layouts  []MemberLayoutStatus `json:"layouts,omitempty"`
}

// MemberLayoutStatus is one layout's load on one node.
type MemberLayoutStatus struct {
	Name       string `json:"name"`
	Capacity   int    `json:"capacity"`
	Running    int    `json:"running"`
	Queued     int    `json:"queued"`
	QueueLimit int    `json:"queue_limit"`
	Healthy    bool   `json:"healthy"`
	// Breaker is the layout's circuit breaker there (closed, open,
	// half-open, probing); BreakerUntil, while open, when it lets a probe
	// through.
	Breaker      string    `json:"breaker,omitempty"`
	BreakerUntil time.Time `json:"breaker_until,omitzero"`
}

// statusState is the gateway's part for status, readiness and drain.
type statusState struct {
	cfg    StatusConfig
	joined atomic.Bool // once joined, membership no longer affects readiness
	// draining is set from the first drain request (or the gateway's own
	// draining) on: readiness then answers 503 for good.
	draining atomic.Bool
	drainMu  sync.Mutex // one drain at a time; later requests wait for it
}

// SetStatus gives the gateway what its status page, readiness and drain
// endpoint need. Call it before serving.
func (s *Server) SetStatus(cfg StatusConfig) { s.status.cfg = cfg }

// Ready reports whether the node should be sent chats, and why not.
func (s *Server) Ready(ctx context.Context) (bool, string) {
	s.mu.Lock()
	draining := s.draining
	s.mu.Unlock()
	if draining || s.status.draining.Load() {
		return false, "draining: finishing its chats, taking no new ones"
	}
	if c := s.status.cfg.Cluster; c != nil && !s.status.joined.Load() {
		if !c.Joined(ctx) {
			return false, "not joined to its cluster yet (JOIN)"
		}
		s.status.joined.Store(true)
	}
	var unhealthy []string
	layouts := s.layouts.Map()
	for _, name := range slices.Sorted(maps.Keys(layouts)) {
		h := layouts[name].Health()
		if h.Healthy {
			return true, "ready"
		}
		unhealthy = append(unhealthy, fmt.Sprintf("%s: %s", name, h.Reason))
	}
	return false, "no healthy layout (" + strings.Join(unhealthy, "; ") + ")"
}

func (s *Server) handleReady(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	ok, reason := s.Ready(ctx)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if !ok {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if r.Method != http.MethodHead {
		fmt.Fprintln(w, reason)
	}
}

// handleDrain runs the node's drain for a client on this host: the preStop
// hook of Kubernetes, through `troupe drain`. It answers 204 once the
// node's chats are done, 504 when they were cut at the drain timeout.
func (s *Server) handleDrain(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	drain := s.status.cfg.Drain
	if drain == nil {
		http.NotFound(w, r)
		return
	}
	if !fromLoopback(r) {
		http.Error(w, "drain is only taken from this host (troupe drain)", http.StatusForbidden)
		return
	}
	// The drain takes as long as the chats in flight: the time limit of
	// the request's arrival, which would end its context, must not.
	_ = http.NewResponseController(w).SetReadDeadline(time.Time{})
	s.status.draining.Store(true)
	s.status.drainMu.Lock()
	defer s.status.drainMu.Unlock()
	s.logger.Info("drain requested", "client", r.RemoteAddr)
	if err := drain(r.Context()); err != nil {
		code := http.StatusGatewayTimeout
		if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
			return // the client went away; the drain goes on
		}
		http.Error(w, "drain: "+err.Error(), code)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func fromLoopback(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
