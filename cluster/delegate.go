package cluster

import (
	"fmt"
	"time"

	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

// delegate is the Cluster seen through memberlist's callback interfaces.
// memberlist calls them from its own goroutines; none may block.
type delegate Cluster

var (
	_ memberlist.Delegate      = (*delegate)(nil)
	_ memberlist.EventDelegate = (*delegate)(nil)
	_ memberlist.AliveDelegate = (*delegate)(nil)
	_ memberlist.MergeDelegate = (*delegate)(nil)
)

func (d *delegate) c() *Cluster { return (*Cluster)(d) }

// NodeMeta implements memberlist.Delegate.
func (d *delegate) NodeMeta(limit int) []byte { return *d.meta.Load() }

// NotifyMsg implements memberlist.Delegate: a load report from a member.
// What cannot be read is dropped and counted.
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 1 || b[0] != msgLoad {
		d.guard.gossipMalformed("message", fmt.Errorf("%d bytes, not a load report", len(b)))
		return
	}
	var load actors.NodeLoad
	if err := proto.Unmarshal(b[1:], &load); err != nil {
		d.guard.gossipMalformed("message", err)
		return
	}
	d.c().applyLoad(&load)
}

// GetBroadcasts implements memberlist.Delegate.
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

// LocalState implements memberlist.Delegate: the push/pull exchange carries
// this node's load, so a node that joins knows everyone's at once.
func (d *delegate) LocalState(join bool) []byte {
	load := d.c().localLoad("")
	d.mu.RLock()
	load.Seq = d.seq
	d.mu.RUnlock()
	b, _ := proto.Marshal(load)
	return b
}

// MergeRemoteState implements memberlist.Delegate: a member's load, as
// LocalState gave it.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	var load actors.NodeLoad
	if err := proto.Unmarshal(buf, &load); err != nil {
		d.guard.gossipMalformed("state", err)
		return
	}
	d.c().applyLoad(&load)
}

// NotifyAlive implements memberlist.AliveDelegate: a node speaking another
// version of the message protocol never becomes a peer, because a message
// type it does not know would crash it (or us).
func (d *delegate) NotifyAlive(peer *memberlist.Node) error {
	return d.c().admit(peer)
}

// NotifyMerge implements memberlist.MergeDelegate: the same check when two
// clusters merge on join.
func (d *delegate) NotifyMerge(peers []*memberlist.Node) error {
	for _, p := range peers {
		if err := d.c().admit(p); err != nil {
			return err
		}
	}
	return nil
}

// NotifyJoin implements memberlist.EventDelegate.
func (d *delegate) NotifyJoin(n *memberlist.Node) {
	c := d.c()
	if n.Name == c.cfg.NodeName {
		return
	}
	meta, err := c.decodeMeta(n)
	if err != nil {
		return
	}
	c.mu.Lock()
	if old, ok := c.members[n.Name]; ok {
		old.kill()
	}
	c.members[n.Name] = newMember(n.Name, meta)
	delete(c.dead, n.Name)
	c.mu.Unlock()
	c.logger.Info("member joined", "member", n.Name, "layouts", meta.GetLayouts())
	// Tell the newcomer our load now rather than at the next change.
	c.broadcastLoad(true)
	c.tellLoad(true)
}

// NotifyLeave implements memberlist.EventDelegate: a member left
// gracefully or was declared dead.
func (d *delegate) NotifyLeave(n *memberlist.Node) {
	c := d.c()
	c.mu.Lock()
	m, ok := c.members[n.Name]
	if !ok {
		c.mu.Unlock()
		return
	}
	delete(c.members, n.Name)
	// memberlist does not say whether a node left or died (Node.State is
	// not set here); a node that leaves gracefully has told us first.
	m.mu.Lock()
	died := !m.draining
	m.mu.Unlock()
	if died {
		c.dead[n.Name] = deadMember{at: time.Now(), addr: n.Address()}
	}
	handlers := append([]func(*actors.NodeMeta){}, c.onDown...)
	c.mu.Unlock()
	m.kill()
	c.host.gatewayGone(m.Meta.GetRemoteAddress())
	if died {
		c.logger.Warn("member died", "member", n.Name)
		// A handler may call out (the Agent); memberlist's callback must
		// not wait for it. The cluster's shutdown waits for them all.
		for _, f := range handlers {
			c.handlers.Add(1)
			go func() {
				defer c.handlers.Done()
				f(m.Meta)
			}()
		}
	} else {
		c.logger.Info("member left", "member", n.Name)
	}
}

// NotifyUpdate implements memberlist.EventDelegate. A member whose remote
// address changed is a new process under the old name: one restarted
// before memberlist declared the old one dead, which it then never does.
// The chats sent to the old process went with it, and new ones must go to
// the new address, so it is taken in as a member that joined.
func (d *delegate) NotifyUpdate(n *memberlist.Node) {
	c := d.c()
	meta, err := c.decodeMeta(n)
	if err != nil {
		return
	}
	c.mu.Lock()
	m, ok := c.members[n.Name]
	if !ok || m.Meta.GetRemoteAddress() == meta.GetRemoteAddress() {
		if ok {
			m.Meta = meta
		}
		c.mu.Unlock()
		return
	}
	c.members[n.Name] = newMember(n.Name, meta)
	c.mu.Unlock()
	m.kill()
	c.host.gatewayGone(m.Meta.GetRemoteAddress())
	c.logger.Info("member restarted", "member", n.Name, "remote", meta.GetRemoteAddress())
	c.broadcastLoad(true)
	c.tellLoad(true)
}

func (c *Cluster) admit(peer *memberlist.Node) error {
	if peer.Name == c.cfg.NodeName {
		return nil
	}
	meta, err := c.decodeMeta(peer)
	if err == nil && meta.GetProtocolVersion() == actors.ProtocolVersion {
		return nil
	}
	if err == nil {
		err = fmt.Errorf("node %s speaks message protocol v%d, this node v%d: run the same Troupe version on every node",
			peer.Name, meta.GetProtocolVersion(), actors.ProtocolVersion)
	}
	c.mu.Lock()
	logged := c.refused[peer.Name]
	c.refused[peer.Name] = true
	c.mu.Unlock()
	if !logged {
		c.logger.Error("refusing a node", "member", peer.Name, "addr", peer.Address(), "err", err)
	}
	return err
}

// decodeMeta reads a member's metadata; what cannot be read is counted.
func (c *Cluster) decodeMeta(n *memberlist.Node) (*actors.NodeMeta, error) {
	var meta actors.NodeMeta
	err := proto.Unmarshal(n.Meta, &meta)
	switch {
	case len(n.Meta) == 0:
		err = fmt.Errorf("node %s has no Troupe metadata: not a Troupe node", n.Name)
	case err != nil:
		err = fmt.Errorf("node %s: unreadable metadata: %w", n.Name, err)
	default:
		return &meta, nil
	}
	c.guard.gossipMalformed("meta", err)
	return nil, err
}

// applyLoad records a member's load report, broadcast to everybody,
// unless a newer report is known.
func (c *Cluster) applyLoad(load *actors.NodeLoad) { c.apply(load, false) }

// applyDirect records a load report a member sent this node alone: its
// counts leave out the chats this node sent there.
func (c *Cluster) applyDirect(load *actors.NodeLoad) { c.apply(load, true) }

func (c *Cluster) apply(load *actors.NodeLoad, direct bool) {
	c.mu.RLock()
	m, ok := c.members[load.GetNode()]
	c.mu.RUnlock()
	if !ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.heard = now // any report, even a repeated one, is a sign of life
	seq := load.GetSeq()
	if direct {
		if seq > m.direct {
			m.direct = seq
			m.others = m.recent.add(now, load)
		}
		return
	}
	if seq <= m.seq {
		return
	}
	m.seq = seq
	m.draining = load.GetDraining()
	clear(m.load)
	for _, l := range load.GetLayouts() {
		m.load[l.GetLayout()] = l
	}
}

// loadBroadcast is one node's load report in memberlist's broadcast queue;
// a newer report replaces an older one that has not gone out yet.
type loadBroadcast struct {
	node string
	msg  []byte
}

func (b *loadBroadcast) Invalidates(other memberlist.Broadcast) bool {
	o, ok := other.(*loadBroadcast)
	return ok && o.node == b.node
}
func (b *loadBroadcast) Name() string    { return "load/" + b.node }
func (b *loadBroadcast) Message() []byte { return b.msg }
func (b *loadBroadcast) Finished()       {}
