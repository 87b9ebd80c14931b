package gateway

import (
	"context"
	_ "embed"
	"encoding/json"
	"maps"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/julienschmidt/httprouter"
	dto "github.com/prometheus/client_model/go"
)

// The status page: GET / is a page (HTML and JavaScript embedded in the
// binary, nothing to download) that reads GET /status.json every two
// seconds. The JSON is one snapshot, built in one place (Status) from the
// layouts, the cluster's member list, and the node's own metrics registry,
// so that the page, the JSON and /metrics never disagree on a number.

//go:embed status.html
var statusPage []byte

// Status is a snapshot of one node.
type Status struct {
	Node     string         `json:"node"`
	Version  string         `json:"version,omitempty"`
	Time     time.Time      `json:"time"`
	Started  time.Time      `json:"started"`
	Ready    bool           `json:"ready"`
	Reason   string         `json:"ready_reason"`
	Draining bool           `json:"draining"`
	InFlight int            `json:"in_flight"`
	Agent    AgentStatus    `json:"agent"`
	Members  []MemberStatus `json:"members"`
	Layouts  []LayoutStatus `json:"layouts"`
}

// AgentStatus is the node's registration with the Agent.
type AgentStatus struct {
	URL string `json:"url,omitempty"`
	// State is one of uninitialized, trying, registered, failed,
	// unregistered; "ignored" when the node does not register.
	State    string  `json:"state"`
	Attempts float64 `json:"attempts"`
	Failures float64 `json:"failures"`
}

// LayoutStatus is one layout this node runs, with its tree of actors.
type LayoutStatus struct {
	Name       string `json:"name"`
	Healthy    bool   `json:"healthy"`
	Reason     string `json:"reason,omitempty"`
	Capacity   int    `json:"capacity"`
	Running    int    `json:"running"`
	Queued     int    `json:"queued"`
	QueueLimit int    `json:"queue_limit"`
	// Breaker is the layout's circuit breaker on this node.
	Breaker    BreakerStatus `json:"breaker"`
	FirstChunk Latency       `json:"first_chunk"`
	// Chats counts the layout's chats on this node by outcome.
	Chats map[string]float64 `json:"chats"`
	Root  *ActorStatus       `json:"tree"`
}

// BreakerStatus is a layout's circuit breaker on this node.
type BreakerStatus struct {
	// State is closed, open, half-open (the next chat probes) or probing.
	State string    `json:"state"`
	Since time.Time `json:"since"`
	// Until is when an open breaker lets its probe through.
	Until time.Time `json:"until,omitzero"`
	// Reason is why it last opened, Cooldown (in seconds) for how long.
	Reason   string  `json:"reason,omitempty"`
	Cooldown float64 `json:"cooldown"`
	// FailuresInRow counts the chats that failed in a row while closed.
	FailuresInRow int `json:"failures_in_row"`
	// Opens and Refused count its openings and the chats it refused.
	Opens   float64 `json:"opens"`
	Refused float64 `json:"refused"`
}

// ActorStatus is one node of a layout's tree. Inner nodes whose path is
// not an actor's (such as "egress" in "egress/0/opencc") group their
// children and carry no numbers.
type ActorStatus struct {
	Name     string         `json:"name"`
	Path     string         `json:"path"`
	Actor    bool           `json:"actor"`
	InFlight *float64       `json:"in_flight,omitempty"` // when the actor reports it
	Queued   float64        `json:"queued"`              // messages in its mailbox
	Messages float64        `json:"messages"`
	Restarts float64        `json:"restarts"`
	Failures float64        `json:"failures"`
	First    Latency        `json:"first_chunk"` // its share of the time to first chunk
	Children []*ActorStatus `json:"children,omitempty"`
}

// Latency summarises a histogram: how many, their mean, and the median and
// 95th percentile estimated from the buckets (0 when there is none).
type Latency struct {
	Count float64 `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
}

// Status builds the node's snapshot.
func (s *Server) Status(ctx context.Context) Status {
	st := Status{
		Node:    s.status.cfg.Node,
		Version: s.status.cfg.Version,
		Time:    time.Now(),
		Started: s.started,
		Members: []MemberStatus{},
		Layouts: []LayoutStatus{},
	}
	st.Ready, st.Reason = s.Ready(ctx)
	s.mu.Lock()
	st.Draining = s.draining || s.status.draining.Load()
	st.InFlight = len(s.running)
	s.mu.Unlock()
	if c := s.status.cfg.Cluster; c != nil {
		st.Members = c.Members()
	}

	series := s.gather()
	st.Agent = AgentStatus{URL: s.status.cfg.AgentURL, State: "ignored"}
	if st.Agent.URL != "" {
		st.Agent.State = stateUninitialized
		for _, m := range series["troupe_agent_registration_state"] {
			if m.GetGauge().GetValue() == 1 {
				st.Agent.State = label(m, "state")
			}
		}
		for _, m := range series["troupe_agent_register_attempts_total"] {
			st.Agent.Attempts += m.GetCounter().GetValue()
			if label(m, "result") == "error" {
				st.Agent.Failures += m.GetCounter().GetValue()
			}
		}
	}

	layouts := s.layouts.Map()
	for _, name := range slices.Sorted(maps.Keys(layouts)) {
		l := layouts[name]
		h := l.Health()
		running, queued := l.Admission.Load()
		b := l.Breaker.Status()
		ls := LayoutStatus{
			Name: name, Healthy: h.Healthy, Reason: h.Reason,
			Capacity: l.Admission.Capacity(), Running: running, Queued: queued, QueueLimit: l.Admission.QueueLimit(),
			Breaker: BreakerStatus{State: b.State.Word(), Since: b.Since, Until: b.Until, Reason: b.Reason,
				Cooldown: b.Cooldown.Seconds(), FailuresInRow: b.FailuresInRow},
			Chats: map[string]float64{},
		}
		for _, m := range series["troupe_layout_breaker_opens_total"] {
			if label(m, "layout") == name {
				ls.Breaker.Opens = m.GetCounter().GetValue()
			}
		}
		for _, m := range series["troupe_layout_breaker_refused_total"] {
			if label(m, "layout") == name {
				ls.Breaker.Refused = m.GetCounter().GetValue()
			}
		}
		for _, m := range series["troupe_chat_first_chunk_seconds"] {
			if label(m, "layout") == name {
				ls.FirstChunk = latency(m.GetHistogram())
			}
		}
		for _, m := range series["troupe_chats_total"] {
			if label(m, "layout") == name {
				ls.Chats[label(m, "outcome")] += m.GetCounter().GetValue()
			}
		}
		ls.Root = actorTree(name, series)
		st.Layouts = append(st.Layouts, ls)
	}
	return st
}

// gather reads the registry once, by metric name.
func (s *Server) gather() map[string][]*dto.Metric {
	families, err := s.cfg.Gatherer.Gather()
	if err != nil && len(families) == 0 {
		s.logger.Warn("status: reading the metrics registry", "err", err)
	}
	out := make(map[string][]*dto.Metric, len(families))
	for _, f := range families {
		if strings.HasPrefix(f.GetName(), "troupe_") {
			out[f.GetName()] = f.GetMetric()
		}
	}
	return out
}

// actorTree builds a layout's tree from the paths of its actors' series:
// every series labelled with the layout and an actor path is one actor,
// and the path's segments are the tree's levels.
func actorTree(layout string, series map[string][]*dto.Metric) *ActorStatus {
	root := &ActorStatus{Name: layout}
	byPath := map[string]*ActorStatus{}
	node := func(path string) *ActorStatus {
		if n, ok := byPath[path]; ok {
			return n
		}
		parent := root
		for i, seg := range strings.Split(path, "/") {
			p := strings.Join(strings.Split(path, "/")[:i+1], "/")
			n, ok := byPath[p]
			if !ok {
				n = &ActorStatus{Name: seg, Path: p}
				byPath[p] = n
				parent.Children = append(parent.Children, n)
			}
			parent = n
		}
		parent.Actor = true
		return parent
	}
	each := func(name string, f func(*ActorStatus, *dto.Metric)) {
		for _, m := range series[name] {
			if label(m, "layout") == layout && label(m, "actor") != "" {
				f(node(label(m, "actor")), m)
			}
		}
	}
	each("troupe_actor_messages_total", func(a *ActorStatus, m *dto.Metric) { a.Messages = m.GetCounter().GetValue() })
	each("troupe_actor_mailbox_depth", func(a *ActorStatus, m *dto.Metric) { a.Queued = m.GetGauge().GetValue() })
	each("troupe_actor_restarts_total", func(a *ActorStatus, m *dto.Metric) { a.Restarts = m.GetCounter().GetValue() })
	each("troupe_actor_failures_total", func(a *ActorStatus, m *dto.Metric) { a.Failures = m.GetCounter().GetValue() })
	each("troupe_actor_first_chunk_seconds", func(a *ActorStatus, m *dto.Metric) { a.First = latency(m.GetHistogram()) })
	each("troupe_actor_in_flight", func(a *ActorStatus, m *dto.Metric) {
		v := m.GetGauge().GetValue()
		a.InFlight = &v
	})
	var sortTree func(*ActorStatus)
	sortTree = func(a *ActorStatus) {
		slices.SortStableFunc(a.Children, func(x, y *ActorStatus) int { return comparePath(x.Name, y.Name) })
		for _, c := range a.Children {
			sortTree(c)
		}
	}
	sortTree(root)
	return root
}

// comparePath orders a tree's levels as a reader expects: the way in before
// the model before the way out, and numbered children by number.
func comparePath(a, b string) int {
	rank := func(s string) int {
		switch s {
		case "root":
			return -1
		case "pipeline":
			return 0
		case "ingress":
			return 1
		case "model":
			return 2
		case "egress":
			return 3
		}
		return 4
	}
	if ra, rb := rank(a), rank(b); ra != rb {
		return ra - rb
	}
	if len(a) != len(b) && isDigits(a) && isDigits(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// latency summarises a histogram; quantiles are interpolated linearly in
// their bucket, as PromQL's histogram_quantile does.
func latency(h *dto.Histogram) Latency {
	n := float64(h.GetSampleCount())
	if n == 0 {
		return Latency{}
	}
	return Latency{Count: n, Mean: h.GetSampleSum() / n, P50: quantile(0.5, h), P95: quantile(0.95, h)}
}

func quantile(q float64, h *dto.Histogram) float64 {
	n := float64(h.GetSampleCount())
	rank := q * n
	lower, below := 0.0, 0.0
	for _, b := range h.GetBucket() {
		upper, count := b.GetUpperBound(), float64(b.GetCumulativeCount())
		if count >= rank {
			if math.IsInf(upper, 1) {
				return lower
			}
			if count == below {
				return upper
			}
			return lower + (upper-lower)*(rank-below)/(count-below)
		}
		lower, below = upper, count
	}
	return lower
}

func (s *Server) handleStatusJSON(w http.ResponseWriter, r *http.Request, _ httprouter.Params) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	_ = enc.Encode(s.Status(ctx))
}

func (s *Server) handleStatusPage(w http.ResponseWriter, _ *http.Request, _ httprouter.Params) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
	_, _ = w.Write(statusPage)
}
