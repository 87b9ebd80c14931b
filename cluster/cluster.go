package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/eventstream"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

// ErrNoNode is returned by Route when no node serves the layout now.
var ErrNoNode = errors.New("no node serves this LLM now")

// unreachableFor is how long a peer whose remote connection dropped gets no
// new chats, unless memberlist declares it dead (or back) first.
const unreachableFor = 5 * time.Second

// suspectAfter is how long a member may stay silent before it gets no new
// chats: every node reports its load at least once a second, so this is
// two and a half missed reports, well before memberlist declares it dead.
// (memberlist does not expose its own suspect state: Node.State is never
// set on what Members returns.)
const suspectAfter = 2500 * time.Millisecond

// reconnectFor is how long after a member died this node keeps trying to
// join it again, so that both sides of a healed partition find each other
// even when neither is alone.
const reconnectFor = 5 * time.Minute

// Cluster is this node's membership in the cluster.
type Cluster struct {
	cfg     Config
	system  *actor.ActorSystem
	remote  *remote.Remote
	ml      *memberlist.Memberlist
	queue   *memberlist.TransmitLimitedQueue
	logger  *slog.Logger
	metrics *metrics
	guard   *guard
	layouts *actors.LayoutSet // served by this node
	meta    atomic.Pointer[[]byte]
	host    *host
	events  *eventstream.Subscription

	// routeMu makes each routing decision and its booking one step, so
	// that chats routed at once never count the same free place twice.
	routeMu sync.Mutex

	mu        sync.RWMutex
	members   map[string]*Member // other nodes, by name
	dead      map[string]deadMember
	refused   map[string]bool // nodes refused for their protocol version, logged once
	onDown    []func(*actors.NodeMeta)
	lastLoad  []byte
	lastTold  map[string][]byte // the last direct report to each member, by name
	sinceSent int
	seq       uint64
	draining  bool

	stop chan struct{}
	wg   sync.WaitGroup
	// handlers are the OnMemberDead calls running; shutdown waits for
	// them once memberlist, which starts them, has stopped.
	handlers sync.WaitGroup
	// left makes Leave safe to call more than once.
	left sync.Once
}

// deadMember is a member that died: when, and where to reach it again.
type deadMember struct {
	at   time.Time
	addr string
}

// Member is another node of the cluster, as this node sees it.
type Member struct {
	Name  string
	Meta  *actors.NodeMeta
	chats *actor.PID
	gone  context.Context
	kill  context.CancelFunc

	mu sync.Mutex
	// load is the newest broadcast's, by layout: capacity, queue limit,
	// health, and everybody's chats running and queued.
	load map[string]*actors.LayoutLoad
	seq  uint64
	// others counts, by layout, the chats running and queued there that
	// this node did not send, as of the newest direct report (direct is its
	// seq); nil until one came. recent keeps the last few.
	others map[string]int
	direct uint64
	recent recentReports
	// mine counts, by layout, the chats this node's gateway has there now:
	// from Route until the chat's Target.Done, exactly.
	mine        map[string]int
	suspect     bool // silent for longer than suspectAfter
	silent      context.Context
	hush        context.CancelFunc // ends silent when it turns suspect
	heard       time.Time          // its last load report
	draining    bool               // it said it is shutting down
	unreachable time.Time          // no new chats before this
}

// New prepares this node's membership: it resolves the configuration and
// starts the actor remote on system. It must run before anything is spawned
// on system, because every PID carries the address the remote sets.
func New(cfg Config, system *actor.ActorSystem) (*Cluster, error) {
	if err := cfg.withDefaults(); err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg:     cfg,
		system:  system,
		logger:  cfg.Logger.With("node", cfg.NodeName),
		members: map[string]*Member{},
		dead:    map[string]deadMember{},
		refused: map[string]bool{},
		stop:    make(chan struct{}),
		// Reports of a restarted node must supersede its old ones.
		seq: uint64(time.Now().UnixNano()),
	}
	if err := checkFree(cfg.BindAddress, cfg.RemotePort); err != nil {
		return nil, fmt.Errorf("remote port: %w", err)
	}
	c.guard = newGuard(c.logger, cfg.Registerer)
	opts, err := c.remoteOptions()
	if err != nil {
		return nil, err
	}
	rcfg := remote.Configure(cfg.BindAddress, cfg.RemotePort, append(opts, remote.WithAdvertisedHost(c.remoteAddress()))...)
	// A dead peer's address is retried once, not five times two seconds
	// apart, so a chat sent to it is re-routed in about two seconds.
	rcfg.MaxRetryCount = 1
	c.remote = remote.NewRemote(system, rcfg)
	c.remote.Start()
	return c, nil
}

func (c *Cluster) remoteAddress() string {
	return net.JoinHostPort(c.cfg.AdvertiseAddress, strconv.Itoa(c.cfg.RemotePort))
}

// Start joins (or founds) the cluster serving the given local layouts: it
// starts memberlist, the load gossip, and the host that runs chats other
// nodes send here.
func (c *Cluster) Start(layouts map[string]*actors.Layout) error {
	cfg := c.cfg
	c.layouts = actors.NewLayoutSet(maps.Clone(layouts))
	c.metrics = newMetrics(cfg.Registerer, c)
	meta, err := c.nodeMeta(c.layouts.Names())
	if err != nil {
		return err
	}
	c.meta.Store(&meta)

	c.host = startHost(c.system, c.layouts, c.logger, c.metrics, c.applyDirect)
	c.events = c.system.EventStream.Subscribe(func(evt any) {
		if e, ok := evt.(*remote.EndpointTerminatedEvent); ok {
			c.peerDisconnected(e.Address)
		}
	})

	mlc := memberlist.DefaultLocalConfig()
	mlc.Name = cfg.NodeName
	mlc.BindAddr = cfg.BindAddress
	mlc.BindPort = cfg.GossipPort
	mlc.AdvertiseAddr = cfg.AdvertiseAddress
	mlc.AdvertisePort = cfg.GossipPort
	mlc.Delegate = (*delegate)(c)
	mlc.Events = (*delegate)(c)
	mlc.Alive = (*delegate)(c)
	mlc.Merge = (*delegate)(c)
	mlc.SecretKey = cfg.Key
	// The local preset sends each broadcast twice per log10(nodes);
	// with 4-9 nodes, news of a node joining then sometimes misses a
	// member until the next full sync 15 s later, and load reports reach
	// too few peers.
	mlc.RetransmitMult = 4
	mlc.Logger = log.New(&logWriter{c.logger}, "", 0)
	c.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return c.numMembers() + 1 },
		RetransmitMult: mlc.RetransmitMult,
	}
	ml, err := memberlist.Create(mlc)
	if err != nil {
		c.host.stop()
		return fmt.Errorf("gossip on %s:%d: %w", cfg.BindAddress, cfg.GossipPort, err)
	}
	c.ml = ml
	c.logger.Info("cluster node started", "gossip", c.GossipAddress(), "remote", c.remoteAddress(), "encrypted", len(cfg.Key) > 0)

	c.wg.Add(2)
	go c.joinLoop()
	go c.loadLoop()
	return nil
}

// Close stops the remote of a cluster that was never started.
func (c *Cluster) Close() { c.remote.Shutdown(false) }

func checkFree(ip string, port int) error {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
	if err != nil {
		return err
	}
	return ln.Close()
}

// Name is this node's name in the cluster.
func (c *Cluster) Name() string { return c.cfg.NodeName }

// GossipAddress is where other nodes join this one.
func (c *Cluster) GossipAddress() string {
	return net.JoinHostPort(c.cfg.AdvertiseAddress, strconv.Itoa(c.cfg.GossipPort))
}

// OnMemberDead registers f to be called (on its own goroutine) with the
// metadata of every member that dies, not when one leaves gracefully.
func (c *Cluster) OnMemberDead(f func(*actors.NodeMeta)) {
	c.mu.Lock()
	c.onDown = append(c.onDown, f)
	c.mu.Unlock()
}

// joinLoop joins the seeds, and keeps trying while no member is alive: the
// seeds may not be up yet, may have restarted and forgotten this node, or a
// partition may have cut it off. It also tries to join members that died
// recently, so that both sides of a healed partition find each other again.
func (c *Cluster) joinLoop() {
	defer c.wg.Done()
	wait, failures := 200*time.Millisecond, 0
	for {
		if len(c.cfg.Join) > 0 && !c.anyAlive() {
			if err := c.tryJoin(); err != nil {
				// Seeds that start later are normal: say so now and then,
				// not at every try.
				if failures%10 == 0 {
					c.logger.Warn("cannot join the cluster yet; still trying", "join", c.cfg.Join, "err", err)
				}
				failures++
				wait = min(wait*2, 5*time.Second)
			} else {
				failures, wait = 0, time.Second
			}
		} else {
			wait = time.Second
		}
		c.reconnectDead()
		select {
		case <-c.stop:
			return
		case <-time.After(wait):
		}
	}
}

// anyAlive reports whether some member is neither silent nor cut off.
func (c *Cluster) anyAlive() bool {
	now := time.Now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, m := range c.members {
		m.mu.Lock()
		alive := !m.suspect && now.After(m.unreachable)
		m.mu.Unlock()
		if alive {
			return true
		}
	}
	return false
}

// reconnectDead tries to join the members that died in the last few
// minutes and have not come back, as serf's reconnect does.
func (c *Cluster) reconnectDead() {
	var addrs []string
	c.mu.Lock()
	for name, d := range c.dead {
		if time.Since(d.at) > reconnectFor {
			delete(c.dead, name)
			continue
		}
		addrs = append(addrs, d.addr)
	}
	c.mu.Unlock()
	if len(addrs) == 0 {
		return
	}
	if n, err := c.ml.Join(addrs); n > 0 {
		c.logger.Info("reached members that had died", "contacted", n)
	} else {
		c.logger.Debug("dead members still unreachable", "addrs", addrs, "err", err)
	}
}

func (c *Cluster) tryJoin() error {
	seeds := resolveSeeds(c.cfg.Join, c.cfg.GossipPort)
	seeds = slices.DeleteFunc(seeds, func(s string) bool { return s == c.GossipAddress() })
	if len(seeds) == 0 {
		return errors.New("no seed address resolves")
	}
	n, err := c.ml.Join(seeds)
	if n == 0 {
		return err
	}
	c.logger.Info("joined the cluster", "contacted", n)
	return nil
}

// loadLoop tells each member this node's load, as that member's gateway
// needs it, when it changed, at most tellsPerInterval times per
// LoadInterval (and every ten intervals anyway); gossips the whole load when it changed, at most once per
// LoadInterval and at least every ten; and watches for suspect members.
func (c *Cluster) loadLoop() {
	defer c.wg.Done()
	t := time.NewTicker(c.cfg.LoadInterval / tellsPerInterval)
	defer t.Stop()
	for tick := 0; ; tick++ {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		// Now and then everybody is told again, in case a member lost its
		// view of this node (a dropped connection makes it start afresh).
		c.tellLoad(tick%(10*tellsPerInterval) == 0)
		if tick%tellsPerInterval == 0 {
			c.broadcastLoad(false)
			c.watchSuspects()
		}
	}
}

// tellsPerInterval is how many times per LoadInterval members are told a
// changed load directly: what gateways route on is worth a fresher view
// than gossip carries, and a direct report is one small message.
const tellsPerInterval = 5

// Drain makes this node take no new chats: the cluster hears it has no
// room, and chats other gateways still send it are refused as "full", so
// they go elsewhere. Chats already running go on.
func (c *Cluster) Drain() {
	c.mu.Lock()
	c.draining = true
	c.mu.Unlock()
	c.host.drain()
	c.broadcastLoad(true)
	c.tellLoad(true)
}

// WaitHosted waits until the chats other nodes sent here have ended, or
// cancels them when ctx ends first.
func (c *Cluster) WaitHosted(ctx context.Context) error { return c.host.wait(ctx) }

// localLoad is this node's load as told to the member at address origin:
// the chats that member's gateway sent here are left out, because it counts
// them itself, exactly. An empty origin leaves nothing out: the load
// broadcast to everybody.
func (c *Cluster) localLoad(origin string) *actors.NodeLoad {
	load := &actors.NodeLoad{Node: c.cfg.NodeName}
	c.mu.RLock()
	draining := c.draining
	c.mu.RUnlock()
	load.Draining = draining
	for name, l := range c.layouts.Map() {
		if draining {
			load.Layouts = append(load.Layouts, &actors.LayoutLoad{Layout: name})
			continue
		}
		running, queued := l.Admission.LoadExcluding(origin)
		breaker := l.Breaker.Status()
		load.Layouts = append(load.Layouts, &actors.LayoutLoad{
			Layout:     name,
			Capacity:   uint32(l.Admission.Capacity()),
			Running:    uint32(running),
			Queued:     uint32(queued),
			QueueLimit: uint32(l.Admission.QueueLimit()),
			Healthy:    l.Health().Healthy,
			// A change of state goes out with the next report, within
			// LoadInterval, as any change of load does.
			Breaker:               breaker.State,
			BreakerUntilUnixMilli: breaker.UntilUnixMilli(),
		})
	}
	slices.SortFunc(load.Layouts, func(a, b *actors.LayoutLoad) int { return strings.Compare(a.Layout, b.Layout) })
	return load
}

const msgLoad byte = 1

// broadcastLoad gossips this node's whole load when it changed (or when
// forced, or every ten calls): it is how every member learns this node's
// layouts' health and capacity, and that it is alive.
func (c *Cluster) broadcastLoad(force bool) {
	load := c.localLoad("")
	body, err := proto.Marshal(load)
	if err != nil {
		return
	}
	c.mu.Lock()
	c.sinceSent++
	changed := string(body) != string(c.lastLoad)
	if !force && !changed && c.sinceSent < 10 {
		c.mu.Unlock()
		return
	}
	c.seq++
	load.Seq = c.seq
	c.lastLoad, c.sinceSent = body, 0
	c.mu.Unlock()
	msg, _ := proto.Marshal(load)
	c.queue.QueueBroadcast(&loadBroadcast{node: c.cfg.NodeName, msg: append([]byte{msgLoad}, msg...)})
}

// tellLoad sends each member whose view of this node's load changed (all
// of them when forced) the load its gateway routes on: the whole load less
// the chats that gateway sent here, which it counts itself, exactly. A
// direct report goes over the remote, in microseconds, where gossip takes
// up to a few hundred milliseconds.
func (c *Cluster) tellLoad(force bool) {
	type direct struct {
		name, addr string
		to         *actor.PID
		load       *actors.NodeLoad
		body       []byte // load without its seq, to see a change
	}
	now := time.Now()
	var directs []direct
	c.mu.RLock()
	for name, m := range c.members {
		m.mu.Lock()
		reachable := !m.suspect && now.After(m.unreachable)
		m.mu.Unlock()
		if reachable {
			directs = append(directs, direct{name: name, addr: m.Meta.GetRemoteAddress(), to: m.chats})
		}
	}
	c.mu.RUnlock()
	var err error
	for i := range directs {
		d := &directs[i]
		d.load = c.localLoad(d.addr)
		if d.body, err = proto.Marshal(d.load); err != nil {
			return
		}
	}
	c.mu.Lock()
	if c.lastTold == nil {
		c.lastTold = map[string][]byte{}
	}
	for name := range c.lastTold {
		if _, ok := c.members[name]; !ok {
			delete(c.lastTold, name)
		}
	}
	n := 0
	for _, d := range directs {
		if force || string(d.body) != string(c.lastTold[d.name]) {
			c.lastTold[d.name] = d.body
			directs[n] = d
			n++
		}
	}
	directs = directs[:n]
	var seq uint64
	if n > 0 {
		c.seq++
		seq = c.seq
	}
	c.mu.Unlock()
	for _, d := range directs {
		d.load.Seq = seq
		c.system.Root.Send(d.to, d.load)
	}
}

// watchSuspects marks members that have gone silent, so they get no new
// chats until they speak again or memberlist declares them dead.
func (c *Cluster) watchSuspects() {
	now := time.Now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	for name, m := range c.members {
		m.mu.Lock()
		if s := now.Sub(m.heard) > suspectAfter; s != m.suspect {
			m.suspect = s
			if s {
				m.hush()
				c.logger.Warn("member silent: no new chats for it", "member", name, "silent_for", now.Sub(m.heard).Round(time.Millisecond))
			} else {
				m.silent, m.hush = context.WithCancel(context.Background())
				c.logger.Info("member speaks again", "member", name)
			}
		}
		m.mu.Unlock()
	}
}

func (c *Cluster) numMembers() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.members)
}

// peerDisconnected reacts at once to a peer whose remote connection
// dropped (a killed process): its chats in flight are told, and it gets
// no new chats for a while, long before gossip declares it dead.
func (c *Cluster) peerDisconnected(address string) {
	c.host.gatewayGone(address)
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, m := range c.members {
		if m.Meta.GetRemoteAddress() != address {
			continue
		}
		c.logger.Warn("lost the connection to a member", "member", name)
		fresh := newMember(name, m.Meta)
		fresh.unreachable = time.Now().Add(unreachableFor)
		m.mu.Lock()
		fresh.draining = m.draining
		m.mu.Unlock()
		m.kill()
		c.members[name] = fresh
	}
}

func newMember(name string, meta *actors.NodeMeta) *Member {
	ctx, cancel := context.WithCancel(context.Background())
	silent, hush := context.WithCancel(context.Background())
	return &Member{
		Name:   name,
		Meta:   meta,
		chats:  actor.NewPID(meta.GetRemoteAddress(), hostName),
		gone:   ctx,
		kill:   func() { cancel(); hush() },
		silent: silent,
		hush:   hush,
		load:   map[string]*actors.LayoutLoad{},
		mine:   map[string]int{},
		heard:  time.Now(),
	}
}

// Leave tells the cluster this node is going, waits up to timeout for the
// message to spread, then stops gossip and the remote.
// Leave is safe to call more than once: the later calls do nothing.
func (c *Cluster) Leave(timeout time.Duration) error {
	var err error
	c.left.Do(func() {
		err = c.ml.Leave(timeout)
		c.shutdown()
	})
	return err
}

func (c *Cluster) shutdown() {
	close(c.stop)
	c.wg.Wait()
	_ = c.ml.Shutdown()
	c.handlers.Wait()
	c.system.EventStream.Unsubscribe(c.events)
	c.host.stop()
	c.remote.Shutdown(true)
	c.mu.Lock()
	for _, m := range c.members {
		m.kill()
	}
	c.mu.Unlock()
}

// logWriter sends memberlist's log lines to slog, at debug level except
// warnings and errors.
type logWriter struct{ logger *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	switch {
	case strings.Contains(line, "[ERR]"):
		w.logger.Error("memberlist: " + line)
	case strings.Contains(line, "[WARN]"):
		w.logger.Warn("memberlist: " + line)
	default:
		w.logger.Debug("memberlist: " + line)
	}
	return len(p), nil
}
