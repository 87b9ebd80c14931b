package app

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/cluster"
	"github.com/troupe-llm/troupe/gateway"
	"github.com/troupe-llm/troupe/layout"
)

// reloader reloads the node's layout file on SIGHUP: it starts the new
// layouts, hands new chats to them (gateway, cluster and Agent
// registration follow the names that came and went), and stops the old
// ones once their chats have ended. A file with errors is refused with
// them, and the old layouts keep serving.
type reloader struct {
	cfg       Config
	system    *actor.ActorSystem
	metrics   *actors.Metrics
	logger    *slog.Logger
	gw        *gateway.Server
	node      *cluster.Cluster
	registrar *gateway.Registrar // nil with IGNORE_AGENT
	base      string             // the node's public base URL
	info      *prometheus.GaugeVec
	reloads   *prometheus.CounterVec

	mu      sync.Mutex
	current map[string]*actors.Layout
	retired sync.WaitGroup // old layouts waiting for their chats to end
	closing chan struct{}  // closed at shutdown: stop the old layouts now
}

func newReloader(r *reloader, reg prometheus.Registerer) *reloader {
	r.closing = make(chan struct{})
	r.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "troupe_layout_reloads_total",
		Help: "Reloads of the layout file (SIGHUP), by result: ok, or error when the file was refused and the old layouts kept serving.",
	}, []string{"result"})
	reg.MustRegister(r.reloads)
	return r
}

// layouts returns the layouts serving now.
func (r *reloader) layouts() map[string]*actors.Layout {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.current
}

// reload loads the file again and switches to it.
func (r *reloader) reload(ctx context.Context) error {
	err := r.switchTo(ctx)
	result := "ok"
	if err != nil {
		result = "error"
		r.logger.Error("layout reload refused; the old layouts keep serving", "file", r.cfg.LayoutConfig, "err", err)
	}
	r.reloads.WithLabelValues(result).Inc()
	return err
}

func (r *reloader) switchTo(ctx context.Context) error {
	file, err := layout.Load(r.cfg.LayoutConfig)
	if err != nil {
		return err
	}
	specs, err := layout.CompileAll(file, r.cfg.LLMName, actors.DefaultRegistry)
	if err != nil {
		return err
	}
	fresh, err := startLayouts(r.system, specs, r.metrics, r.logger)
	if err != nil {
		return err
	}
	if _, err := r.node.SetLayouts(fresh); err != nil {
		stopAll(fresh, r.logger)
		return err
	}
	old := r.gw.SetLayouts(fresh)
	r.mu.Lock()
	r.current = fresh
	r.mu.Unlock()
	names := slices.Sorted(maps.Keys(fresh))
	r.info.Reset()
	for _, name := range names {
		r.info.WithLabelValues(name, file.Name).Set(1)
	}
	if r.registrar != nil {
		if err := r.registrar.SetEndpoints(ctx, slotURLs(r.gw, r.base, names)); err != nil {
			r.logger.Warn("could not unregister the names this node no longer serves from the Agent", "err", err)
		}
	}
	r.logger.Info("layouts reloaded", "file", file.Name, "llm", names, "capacity", capacities(fresh))
	r.retire(old)
	return nil
}

// retire stops the replaced layouts once the chats they run have ended, or
// after the chat timeout, when none can be left.
func (r *reloader) retire(old map[string]*actors.Layout) {
	r.retired.Add(1)
	go func() {
		defer r.retired.Done()
		// Admission tells no one when it empties; a look every 50 ms
		// costs nothing next to a chat.
		deadline := time.NewTimer(r.cfg.ChatTimeout)
		defer deadline.Stop()
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for _, l := range old {
			for idle := false; !idle; {
				if running, queued := l.Admission.Load(); running+queued == 0 {
					break
				}
				select {
				case <-tick.C:
				case <-deadline.C:
					idle = true
				case <-r.closing:
					idle = true
				}
			}
		}
		stopAll(old, r.logger)
	}()
}

// close stops the retired layouts without waiting for their chats (the
// node has drained) and waits for them.
func (r *reloader) close() {
	close(r.closing)
	r.retired.Wait()
}

func stopAll(layouts map[string]*actors.Layout, logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name, l := range layouts {
		if err := l.Stop(ctx); err != nil && !errors.Is(err, context.Canceled) {
			logger.Warn("layout did not stop in time", "layout", name, "err", err)
		}
	}
}
