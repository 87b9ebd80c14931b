package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/troupe-llm/troupe/cluster"
	"github.com/troupe-llm/troupe/gateway"
)

// helpOK turns a request for help into ErrHelp, which exits 0.
func helpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return ErrHelp
	}
	return err
}

// newLogHandler returns the handler for LOG_FORMAT: text (key=value, for
// people) or json (one object a line, for log collectors).
func newLogHandler(format string, w io.Writer, level slog.Leveler) slog.Handler {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// checkClusterPorts stops a node whose explicitly set cluster port is
// taken, naming the setting; ports left to their defaults fall back to
// free ones instead (see cluster.Config).
func checkClusterPorts(cfg Config) error {
	for _, p := range []struct {
		env  string
		port int
		udp  bool
	}{{"GOSSIP_PORT", cfg.GossipPort, true}, {"REMOTE_PORT", cfg.RemotePort, false}} {
		if !cfg.IsSet(p.env) || p.port == 0 {
			continue
		}
		if err := portFree(cfg.BindAddress, p.port, p.udp); err != nil {
			return fmt.Errorf("%s %d: cannot listen on %s: %v (set %s to another port, 0 for any free one, or leave it unset to take a free one when the default is taken)",
				p.env, p.port, net.JoinHostPort(cfg.BindAddress, strconv.Itoa(p.port)), cause(err), p.env)
		}
	}
	return nil
}

// logPortFallbacks says which cluster ports left to their defaults were
// taken (by another node on this host, say) and where the node listens
// instead, so that others can join it.
func logPortFallbacks(logger *slog.Logger, cfg Config, node *cluster.Cluster) {
	for _, p := range []struct {
		env, addr string
		want      int
	}{{"GOSSIP_PORT", node.GossipAddress(), cfg.GossipPort}, {"REMOTE_PORT", node.RemoteAddress(), cfg.RemotePort}} {
		_, port, _ := net.SplitHostPort(p.addr)
		if cfg.IsSet(p.env) || port == strconv.Itoa(p.want) {
			continue
		}
		msg := p.env + " not set and its default is taken (another node on this host?): using a free port"
		if p.env == "GOSSIP_PORT" {
			logger.Warn(msg+"; other nodes join this one at its address", "default", p.want, "port", port, "join", p.addr)
		} else {
			logger.Warn(msg, "default", p.want, "port", port)
		}
	}
}

// portFree reports whether port can be bound now on ip, TCP and, when udp,
// UDP too.
func portFree(ip string, port int, udp bool) error {
	addr := net.JoinHostPort(ip, strconv.Itoa(port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	defer ln.Close()
	if udp {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return err
		}
		pc.Close()
	}
	return nil
}

// cause returns the innermost error: "address already in use" rather than
// the whole chain of the listen call.
func cause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// drainer runs the node's drain once, on a goroutine it owns, for whoever
// asks first (a signal or POST /drain); every caller waits for the same
// result.
type drainer struct {
	run  func() error
	once sync.Once
	done chan struct{}
	err  error
}

func newDrainer(run func() error) *drainer { return &drainer{run: run, done: make(chan struct{})} }

// drain starts the drain if it has not started, and waits until it is done
// or ctx ends; the drain itself goes on, bounded by DRAIN_TIMEOUT.
func (d *drainer) drain(ctx context.Context) error {
	d.once.Do(func() {
		go func() {
			defer close(d.done)
			d.err = d.run()
		}()
	})
	select {
	case <-d.done:
		return d.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// clusterView lets the gateway's status page and readiness read the
// cluster.
type clusterView struct{ c *cluster.Cluster }

func (v clusterView) Joined(ctx context.Context) bool { return v.c.Joined(ctx) }

func (v clusterView) Members() []gateway.MemberStatus {
	members := v.c.Members()
	out := make([]gateway.MemberStatus, len(members))
	for i, m := range members {
		out[i] = gateway.MemberStatus{Name: m.Name, Self: m.Self, State: m.State, Gossip: m.Gossip,
			Remote: m.Remote, HTTPBase: m.HTTPBase, Heard: m.Heard}
		for _, l := range m.Layouts {
			out[i].Layouts = append(out[i].Layouts, gateway.MemberLayoutStatus{Name: l.Name, Capacity: l.Capacity,
				Running: l.Running, Queued: l.Queued, QueueLimit: l.QueueLimit, Healthy: l.Healthy,
				Breaker: l.Breaker.Word(), BreakerUntil: l.BreakerUntil})
		}
	}
	return out
}
