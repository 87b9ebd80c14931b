package cluster

import (
	"context"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/troupe-llm/troupe/actors"
)

// Member states as Members reports them.
const (
	StateAlive       = "alive"       // reports its load and takes chats
	StateDraining    = "draining"    // shutting down: finishes its chats, takes no new ones
	StateSuspect     = "suspect"     // silent for a while: no new chats until it speaks
	StateUnreachable = "unreachable" // its connection dropped: no new chats for a few seconds
	StateDead        = "dead"        // gone without leaving; this node tries to reach it again
)

// MemberStatus is one node of the cluster as this node sees it.
type MemberStatus struct {
	Name  string
	Self  bool
	State string
	// Gossip is where the node gossips (host:port; empty for a dead node
	// that memberlist forgot), Remote where chats reach it, HTTPBase its
	// HTTP address as it announced it.
	Gossip   string
	Remote   string
	HTTPBase string
	// Heard is when its last load report came (zero for this node); for a
	// dead node, when it died.
	Heard   time.Time
	Layouts []LayoutStatus
}

// LayoutStatus is one layout's load on one node, as last reported.
type LayoutStatus struct {
	Name                                  string
	Capacity, Running, Queued, QueueLimit int
	Healthy                               bool
	// Breaker is the state of the layout's circuit breaker on the node;
	// BreakerUntil, while it is open, when its cool-down ends.
	Breaker      actors.BreakerState
	BreakerUntil time.Time
}

// Members returns a snapshot of the cluster: this node first, then the
// other members by name, then the members that died recently.
func (c *Cluster) Members() []MemberStatus {
	c.mu.RLock()
	draining := c.draining
	c.mu.RUnlock()
	self := MemberStatus{
		Name:     c.cfg.NodeName,
		Self:     true,
		State:    StateAlive,
		Gossip:   c.GossipAddress(),
		Remote:   c.RemoteAddress(),
		HTTPBase: c.cfg.HTTPBase,
	}
	if draining {
		self.State = StateDraining
	}
	for name, l := range c.layouts.Map() {
		running, queued := l.Admission.Load()
		b := l.Breaker.Status()
		self.Layouts = append(self.Layouts, LayoutStatus{
			Name: name, Capacity: l.Admission.Capacity(), Running: running, Queued: queued,
			QueueLimit: l.Admission.QueueLimit(), Healthy: l.Health().Healthy, Breaker: b.State, BreakerUntil: b.Until,
		})
	}
	sortLayouts(self.Layouts)

	gossip := map[string]string{}
	if c.ml != nil {
		for _, n := range c.ml.Members() {
			gossip[n.Name] = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
		}
	}
	now := time.Now()
	var others, dead []MemberStatus
	c.mu.RLock()
	for name, m := range c.members {
		m.mu.Lock()
		s := MemberStatus{
			Name:     name,
			State:    StateAlive,
			Gossip:   gossip[name],
			Remote:   m.Meta.GetRemoteAddress(),
			HTTPBase: m.Meta.GetHttpBase(),
			Heard:    m.heard,
		}
		switch {
		case m.draining:
			s.State = StateDraining
		case now.Before(m.unreachable):
			s.State = StateUnreachable
		case m.suspect:
			s.State = StateSuspect
		}
		for layout, l := range m.load {
			ls := LayoutStatus{
				Name: layout, Capacity: int(l.GetCapacity()), Running: int(l.GetRunning()), Queued: int(l.GetQueued()),
				QueueLimit: int(l.GetQueueLimit()), Healthy: l.GetHealthy(), Breaker: l.GetBreaker(),
			}
			if ms := l.GetBreakerUntilUnixMilli(); ms != 0 {
				ls.BreakerUntil = time.UnixMilli(ms)
			}
			s.Layouts = append(s.Layouts, ls)
		}
		m.mu.Unlock()
		sortLayouts(s.Layouts)
		others = append(others, s)
	}
	for name, d := range c.dead {
		if _, back := c.members[name]; !back {
			dead = append(dead, MemberStatus{Name: name, State: StateDead, Gossip: d.addr, Heard: d.at})
		}
	}
	c.mu.RUnlock()
	byName := func(a, b MemberStatus) int { return strings.Compare(a.Name, b.Name) }
	slices.SortFunc(others, byName)
	slices.SortFunc(dead, byName)
	return append(append([]MemberStatus{self}, others...), dead...)
}

func sortLayouts(ls []LayoutStatus) {
	slices.SortFunc(ls, func(a, b LayoutStatus) int { return strings.Compare(a.Name, b.Name) })
}

// RemoteAddress is where other nodes send this node chats (host:port).
func (c *Cluster) RemoteAddress() string { return c.remoteAddress() }

// Joined reports whether this node is part of its cluster: it was given
// no seeds (it founds the cluster others join), it sees another member, or
// its seeds resolve to no address but its own (it is the first node of a
// service, whose other nodes join it). A node whose seeds name others that
// it cannot reach has not joined yet.
func (c *Cluster) Joined(ctx context.Context) bool {
	if len(c.cfg.Join) == 0 || c.numMembers() > 0 {
		return true
	}
	own := c.GossipAddress()
	for _, s := range c.cfg.Join {
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			continue
		}
		if net.ParseIP(host) != nil {
			if s != own {
				return false
			}
			continue
		}
		addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
		if err != nil {
			return false // its seeds may not be in DNS yet
		}
		for _, a := range addrs {
			if net.JoinHostPort(a.IP.String(), port) != own {
				return false
			}
		}
	}
	return true
}
