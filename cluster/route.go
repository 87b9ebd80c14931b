package cluster

import (
	"context"
	"hash/fnv"
	"io"
	"log/slog"
	"slices"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

// Target is where a chat runs.
type Target struct {
	Node string
	// Local is the layout when the chat runs on this node.
	Local *actors.Layout
	// Admitted says Route already took a place in Local's admission for
	// the chat; Done gives it back.
	Admitted bool
	// Remote is the host of the chosen node otherwise.
	Remote *actor.PID
	// Gone ends when the chosen node is gone (never, for this node).
	Gone context.Context
	// Silent ends when the chosen node falls silent (nil for this node):
	// a chat that has written nothing yet moves elsewhere then, rather
	// than wait seconds more for the node to be declared dead.
	Silent context.Context
	// Done, when not nil, must be called once when the chat's attempt on
	// this node ends, however it ends (an answer, a failure, a refusal, a
	// cancel, the node gone): until then the chat counts against the node.
	Done func()
}

// Serves reports whether any node, this one included, serves layout.
func (c *Cluster) Serves(layout string) bool {
	if _, ok := c.layouts.Get(layout); ok {
		return true
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, m := range c.members {
		if slices.Contains(m.Meta.GetLayouts(), layout) {
			return true
		}
	}
	return false
}

// Layouts returns the names of the layouts served anywhere in the cluster,
// sorted: this node's and those its live members announced.
func (c *Cluster) Layouts() []string {
	local := c.layouts.Map()
	names := make([]string, 0, len(local))
	for name := range local {
		names = append(names, name)
	}
	c.mu.RLock()
	for _, m := range c.members {
		names = append(names, m.Meta.GetLayouts()...)
	}
	c.mu.RUnlock()
	slices.Sort(names)
	return slices.Compact(names)
}

// candidate is a node that could run a chat, with its load as known here.
type candidate struct {
	name       string
	local      *actors.Layout
	member     *Member
	capacity   int
	busy       int // running + queued
	cautious   int // busy with the others' most recent peak
	queueLimit int
	rendezvous uint64
}

func (k candidate) room() bool  { return k.busy < k.capacity }
func (k candidate) queue() bool { return k.busy < k.capacity+k.queueLimit }

// sure reports whether a place is free even by the others' recent peak.
func (k candidate) sure() bool { return k.cautious < k.capacity }

// busy returns the chats running and queued for layout on the member as
// this node knows them: its own chats there, counted from Route to Done,
// and the others' as of the member's last direct report; and the same
// with the others' highest count over the last cautionWindow. Before the
// first direct report it has only the broadcast, whose count holds some of
// this node's chats too: it counts them twice, which errs on the side of
// room elsewhere. m.mu is held.
func (m *Member) busy(layout string, load *actors.LayoutLoad, now time.Time) (busy, cautious int) {
	if m.others == nil {
		busy = int(load.Running+load.Queued) + m.mine[layout]
		return busy, busy
	}
	return m.others[layout] + m.mine[layout], m.recent.peak(now, layout) + m.mine[layout]
}

// cautionWindow is how long a place that another gateway's chat left must
// stay free, report after report, before this node takes it while it has a
// place that is surely free elsewhere. Between the end of one chat and the
// next chat its client sends, the other gateway's place looks free for a
// moment; taking it makes that gateway's next chat wait where it would
// have found room.
const cautionWindow = 100 * time.Millisecond

// recentReports holds the others' counts from a member's direct reports of
// the last cautionWindow, oldest first, and always the newest.
type recentReports []timedReport

type timedReport struct {
	at     time.Time
	others map[string]int // by layout
}

// add records a report's counts and returns them.
func (r *recentReports) add(now time.Time, load *actors.NodeLoad) map[string]int {
	others := make(map[string]int, len(load.GetLayouts()))
	for _, l := range load.GetLayouts() {
		others[l.GetLayout()] = int(l.GetRunning() + l.GetQueued())
	}
	old := 0
	for old < len(*r) && now.Sub((*r)[old].at) > cautionWindow {
		old++
	}
	*r = append((*r)[old:], timedReport{at: now, others: others})
	return others
}

// peak returns the others' highest count on layout in the window.
func (r recentReports) peak(now time.Time, layout string) int {
	most := 0
	for i, rep := range r {
		if i == len(r)-1 || now.Sub(rep.at) <= cautionWindow {
			most = max(most, rep.others[layout])
		}
	}
	return most
}

// overloaded is Route's refusal when every node is full: an
// actors.ErrOverloaded that says how long this node expects to stay full.
type overloaded struct{ wait time.Duration }

func (e *overloaded) Error() string             { return actors.ErrOverloaded.Error() }
func (e *overloaded) Is(target error) bool      { return target == actors.ErrOverloaded }
func (e *overloaded) RetryAfter() time.Duration { return e.wait }

// circuitOpen is Route's refusal when the only nodes that serve a layout
// have taken it out of rotation with their circuit breakers.
type circuitOpen struct{ wait time.Duration }

func (e *circuitOpen) Error() string             { return actors.ErrCircuitOpen.Error() }
func (e *circuitOpen) Is(target error) bool      { return target == actors.ErrCircuitOpen }
func (e *circuitOpen) RetryAfter() time.Duration { return e.wait }

// Route picks the node for a chat of layout: the node its conversation
// (key) sticks to while that node has room; else this node if it has room;
// else the member with the most room (room that stayed free through the
// member's recent reports first); when all are full, the one with the
// shortest queue that still has space, and when even the queues look full,
// the least loaded member, whose own admission has the last word (the
// others' share of its load is a report old). Nodes in tried are skipped.
//
// A member's load is the chats this node sent it that have not ended yet,
// counted exactly, plus the others' as of its last report; this node's own
// is its admission's. Choosing and booking are one step: chats routed at
// once never count the same free place twice, and a chat routed here with
// room has its place already (Target.Admitted).
//
// This node's layout is a candidate whatever its circuit breaker says: the
// gateway asks the breaker itself, as the chat's attempt starts. A
// member's layout is one while its breaker, as last reported, is closed;
// when no such member is left, one whose breaker is half-open (the chat
// is its probe).
//
// It returns an error that is actors.ErrOverloaded when this node is full
// and every member has been tried (with a RetryAfter method: how long until
// this node expects room), one that is actors.ErrCircuitOpen when the only
// members left have their breakers open (with a RetryAfter method: the
// soonest one's cool-down left), and ErrNoNode when none serves the layout
// or all are unhealthy.
func (c *Cluster) Route(layout, key string, tried []string) (Target, error) {
	c.routeMu.Lock()
	defer c.routeMu.Unlock()
	var cands []candidate
	c.mu.RLock()
	draining := c.draining
	c.mu.RUnlock()
	local, serves := c.layouts.Get(layout)
	if serves && !draining && !slices.Contains(tried, c.cfg.NodeName) && local.Health().Healthy {
		running, queued := local.Admission.Load()
		cands = append(cands, candidate{name: c.cfg.NodeName, local: local, capacity: local.Admission.Capacity(),
			busy: running + queued, cautious: running + queued, queueLimit: local.Admission.QueueLimit()})
	}
	now := time.Now()
	// Members whose breaker is half-open take a chat, their probe, only
	// when no other node can: the risk of a model that may still fail
	// stays with as few chats as possible. Those whose breaker is open or
	// probing take none; circuit is the soonest any of them expects to
	// take chats again.
	var probes []candidate
	var circuit time.Duration
	c.mu.RLock()
	for name, m := range c.members {
		if slices.Contains(tried, name) {
			continue
		}
		m.mu.Lock()
		load := m.load[layout]
		if load != nil && load.Healthy && !m.suspect && now.After(m.unreachable) {
			busy, cautious := m.busy(layout, load, now)
			k := candidate{name: name, member: m, capacity: int(load.Capacity),
				busy: busy, cautious: cautious, queueLimit: int(load.QueueLimit)}
			switch load.GetBreaker() {
			case actors.BreakerState_BREAKER_CLOSED:
				cands = append(cands, k)
			case actors.BreakerState_BREAKER_HALF_OPEN:
				probes = append(probes, k)
			default:
				wait := time.UnixMilli(load.GetBreakerUntilUnixMilli()).Sub(now)
				if load.GetBreakerUntilUnixMilli() == 0 || wait < time.Second {
					wait = time.Second // a probe runs, or the news of its end is on its way
				}
				if circuit == 0 || wait < circuit {
					circuit = wait
				}
			}
		}
		m.mu.Unlock()
	}
	c.mu.RUnlock()
	if len(cands) == 0 {
		cands = probes
	}
	if len(cands) == 0 {
		if circuit > 0 {
			return Target{}, &circuitOpen{wait: circuit}
		}
		return Target{}, ErrNoNode
	}

	pick := c.pick(cands, key)
	if pick != nil && pick.local != nil && pick.room() {
		// This node's admission is also taken by chats other gateways
		// send: it may have filled since it was read.
		if local.Admission.TryAcquire() {
			return Target{Node: pick.name, Local: local, Admitted: true, Gone: context.Background(), Done: local.Admission.Release}, nil
		}
		pick.busy, pick.cautious = pick.capacity, pick.capacity
		pick = c.pick(cands, key)
	}
	if pick == nil {
		if c.logger.Enabled(context.Background(), slog.LevelDebug) {
			for _, k := range cands {
				c.logger.Debug("no room", "layout", layout, "candidate", k.name, "busy", k.busy, "capacity", k.capacity, "queue", k.queueLimit)
			}
		}
		var wait time.Duration
		if cands[0].local != nil {
			wait = local.Admission.RetryAfter()
		}
		return Target{}, &overloaded{wait: wait}
	}
	if pick.local != nil {
		// Full, with room in its queue: the gateway waits in it.
		return Target{Node: pick.name, Local: local, Gone: context.Background()}, nil
	}
	m := pick.member
	m.mu.Lock()
	m.mine[layout]++
	silent := m.silent
	m.mu.Unlock()
	return Target{Node: m.Name, Remote: m.chats, Gone: m.gone, Silent: silent, Done: func() {
		m.mu.Lock()
		m.mine[layout]--
		m.mu.Unlock()
	}}, nil
}

// pick chooses among the candidates as Route says, or returns nil.
func (c *Cluster) pick(cands []candidate, key string) *candidate {
	if key != "" {
		// A conversation sticks to its own node only, and only while that
		// node has room; otherwise the load decides.
		top := &cands[0]
		for i := range cands {
			cands[i].rendezvous = rendezvous(key, cands[i].name)
			if cands[i].rendezvous > top.rendezvous {
				top = &cands[i]
			}
		}
		if top.room() {
			return top
		}
	}
	if cands[0].local != nil && cands[0].room() {
		return &cands[0]
	}
	// The member with the most room, preferring room that stayed free
	// through the recent reports to room that may only be between two of
	// another gateway's chats.
	var pick *candidate
	for i := range cands {
		k := &cands[i]
		if k.room() && (pick == nil || k.sure() && !pick.sure() ||
			k.sure() == pick.sure() && freeRatio(k, k.sure()) > freeRatio(pick, pick.sure())) {
			pick = k
		}
	}
	if pick != nil {
		return pick
	}
	for i := range cands {
		k := &cands[i]
		if k.queue() && (pick == nil || freeRatio(k, false) > freeRatio(pick, false)) {
			pick = k
		}
	}
	if pick != nil {
		return pick
	}
	// Before refusing, let the least loaded member's own admission decide:
	// others' chats there may have ended since its report. One that
	// refuses goes to tried.
	for i := range cands {
		if k := &cands[i]; k.member != nil && (pick == nil || freeRatio(k, false) > freeRatio(pick, false)) {
			pick = k
		}
	}
	return pick
}

// freeRatio is the share of a candidate's places and queue that is free, by
// its latest count or, cautious, by the others' recent peak.
func freeRatio(k *candidate, cautious bool) float64 {
	busy := k.busy
	if cautious {
		busy = k.cautious
	}
	return float64(k.capacity+k.queueLimit-busy) / float64(k.capacity+k.queueLimit)
}

// rendezvous is highest-random-weight hashing: each conversation ranks the
// nodes the same way everywhere, and a node leaving moves only its own
// conversations.
func rendezvous(key, node string) uint64 {
	h := fnv.New64a()
	_, _ = io.WriteString(h, key)
	_, _ = h.Write([]byte{0})
	_, _ = io.WriteString(h, node)
	return h.Sum64()
}
