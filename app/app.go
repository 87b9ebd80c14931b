// Package app is the troupe command: settings, wiring, signals, graceful
// shutdown, and the layout and probe subcommands. It links no kind: a
// binary imports the kinds it wants (as cmd/troupe does for the built-in
// ones) and calls Main, which is how a program adds kinds of its own.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/cluster"
	"github.com/troupe-llm/troupe/gateway"
	"github.com/troupe-llm/troupe/layout"
)

// Main runs the troupe command with the process's arguments and
// environment until SIGINT or SIGTERM, and exits: 0 after a graceful
// shutdown, 1 with the error on standard error otherwise.
func Main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "troupe:", err)
		os.Exit(1)
	}
}

// ErrHelp is what Run returns when help was asked for and printed.
var ErrHelp = errors.New("help requested")

// Run runs the troupe command: a subcommand, or a node until ctx ends, then shuts it down gracefully: unregister
// from the Agent, stop taking chats, finish the ones in flight (bounded),
// stop the actors.
func Run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "version", "-version", "--version":
			fmt.Fprintln(stdout, "troupe", version())
			return nil
		case "health":
			return helpOK(runHealth(ctx, args[1:], getenv, stdout, stderr))
		case "drain":
			return helpOK(runDrain(ctx, args[1:], getenv, stdout, stderr))
		case "layout":
			return helpOK(layoutCommand(args[1:], stdout, stderr))
		}
	}
	cfg, err := ParseConfig(args, getenv, stderr)
	if err != nil {
		return helpOK(err)
	}
	level := slog.LevelInfo
	if cfg.Debug {
		level = slog.LevelDebug
	}
	logger := slog.New(newLogHandler(cfg.LogFormat, stderr, level))
	// Kinds that log through slog's default logger (actors/kuwa) follow
	// LOG_FORMAT too.
	slog.SetDefault(logger)

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(),
	)

	apiKeys, err := cfg.apiKeys()
	if err != nil {
		return err
	}
	file, err := layout.Load(cfg.LayoutConfig)
	if err != nil {
		return err
	}
	specs, err := layout.CompileAll(file, cfg.LLMName, actors.DefaultRegistry)
	if err != nil {
		return err
	}
	var names []string
	for _, s := range specs {
		names = append(names, s.Name)
	}
	info := layoutInfo(names, file.Name)
	reg.MustRegister(info)

	// protoactor logs every restart and dead letter at info; ours are
	// logged by the layout, so its own go to warn unless debugging.
	actorLevel := slog.LevelWarn
	if cfg.Debug {
		actorLevel = slog.LevelDebug
	}
	actorLogger := slog.New(newLogHandler(cfg.LogFormat, stderr, actorLevel))
	system := actors.NewActorSystem(actor.Configure(
		actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return actorLogger })))
	defer system.Shutdown()

	addr := net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("PORT %d: cannot listen on %s: %v (set PORT to another port, or 0 for any free one)", cfg.Port, addr, cause(err))
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	publicBase := "http://" + net.JoinHostPort(cfg.PublicAddress, strconv.Itoa(port))

	key, err := cluster.ParseKey(cfg.ClusterKey)
	if err != nil {
		return err
	}
	if err := checkClusterPorts(cfg); err != nil {
		return err
	}
	node, err := cluster.New(cluster.Config{
		NodeName:           cfg.NodeName,
		BindAddress:        cfg.BindAddress,
		AdvertiseAddress:   cfg.PublicAddress,
		GossipPort:         cfg.GossipPort,
		RemotePort:         cfg.RemotePort,
		GossipPortFallback: !cfg.IsSet("GOSSIP_PORT"),
		RemotePortFallback: !cfg.IsSet("REMOTE_PORT"),
		Join:               splitList(cfg.Join),
		Key:                key,
		TLS:                cluster.TLSFiles{Cert: cfg.TLSCert, Key: cfg.TLSKey, CA: cfg.TLSCA},
		HTTPBase:           publicBase,
		EndpointPath:       cfg.Endpoint,
		Logger:             logger,
		Registerer:         reg,
	}, system)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	logPortFallbacks(logger, cfg, node)
	actorMetrics := actors.NewMetrics(reg)
	layouts, err := startLayouts(system, specs, actorMetrics, logger)
	if err != nil {
		node.Close()
		return err
	}
	if err := node.Start(layouts); err != nil {
		node.Close()
		return fmt.Errorf("cluster: %w", err)
	}

	gw, err := gateway.New(gateway.Config{
		Endpoint:    cfg.Endpoint,
		Layouts:     layouts,
		Router:      router{node},
		ChatTimeout: cfg.ChatTimeout,
		Limits:      cfg.Limits,
		APIKeys:     apiKeys,
		Gatherer:    reg,
		Registerer:  reg,
		Logger:      logger,
	}, system)
	if err != nil {
		_ = node.Leave(time.Second)
		return err
	}

	var registrar *gateway.Registrar
	agentDone := make(chan struct{})
	agentCtx, stopAgent := context.WithCancel(context.Background())
	defer stopAgent()
	if cfg.IgnoreAgent {
		close(agentDone)
	} else {
		registrar, err = gw.NewRegistrar(gateway.AgentConfig{
			URL:        cfg.AgentEndpoint,
			Endpoints:  slotURLs(gw, publicBase, names),
			RetryCount: cfg.RetryCount,
			Refresh:    cfg.AgentRefresh,
		})
		if err != nil {
			_ = node.Leave(time.Second)
			return err
		}
	}

	// Draining: unregister from the Agent first (while still serving), so
	// that it stops sending chats before the node starts refusing them;
	// then stop taking chats: the cluster hears this node is full, its
	// gateway refuses new chats, and the chats in flight (its own and those
	// other nodes sent it) finish within the drain timeout. A signal runs
	// it, and so does POST /drain (Kubernetes' preStop, through `troupe
	// drain`), after which the node waits for its signal to leave.
	drain := newDrainer(func() error {
		stopAgent()
		<-agentDone
		if registrar != nil {
			uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := registrar.Unregister(uctx); err != nil {
				logger.Warn("could not unregister from the Agent", "err", err)
			}
			cancel()
		}
		dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
		defer cancel()
		node.Drain()
		var errs []error
		if err := gw.Drain(dctx); err != nil {
			logger.Warn("drain timed out; chats in flight were cancelled", "timeout", cfg.DrainTimeout)
			errs = append(errs, fmt.Errorf("chats in flight cancelled after DRAIN_TIMEOUT %s", cfg.DrainTimeout))
		}
		if err := node.WaitHosted(dctx); err != nil {
			logger.Warn("drain timed out; chats from other nodes were cancelled", "timeout", cfg.DrainTimeout)
			errs = append(errs, fmt.Errorf("chats from other nodes cancelled after DRAIN_TIMEOUT %s", cfg.DrainTimeout))
		}
		logger.Info("drained")
		return errors.Join(errs...)
	})
	status := gateway.StatusConfig{
		Node:    node.Name(),
		Version: version(),
		Cluster: clusterView{node},
		Drain:   drain.drain,
	}
	if !cfg.IgnoreAgent {
		status.AgentURL = cfg.AgentEndpoint
	}
	gw.SetStatus(status)

	srv := gw.HTTPServer()
	srv.ErrorLog = slog.NewLogLogger(logger.Handler(), slog.LevelWarn)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(gw.Listen(ln)) }()
	fmt.Fprintf(stdout, "troupe %s: serving %s (%s) on http://%s%s\n", version(), quoteList(names), file.Name, ln.Addr(), cfg.Endpoint)
	logger.Info("node started", "llm", strings.Join(names, ","), "layout", file.Name, "listen", ln.Addr().String(),
		"endpoint", publicBase+cfg.Endpoint, "capacity", capacities(layouts),
		"gossip", node.GossipAddress(), "remote", node.RemoteAddress(), "status", publicBase+"/")

	if registrar != nil {
		go func() {
			defer close(agentDone)
			registrar.Run(agentCtx)
		}()
		// The Agent never notices a dead worker: it would keep sending
		// chats there. Every survivor unregisters a dead member's
		// endpoints; the member registers again when it comes back.
		node.OnMemberDead(func(meta *actors.NodeMeta) {
			ctx, cancel := context.WithTimeout(agentCtx, 10*time.Second)
			defer cancel()
			for _, name := range meta.GetLayouts() {
				if err := registrar.UnregisterEndpoint(ctx, name, meta.GetHttpBase()+meta.GetEndpointPath()); err != nil {
					logger.Warn("could not unregister a dead member from the Agent", "member_endpoint", meta.GetHttpBase(), "err", err)
				} else {
					logger.Info("unregistered a dead member from the Agent", "member_endpoint", meta.GetHttpBase(), "llm", name)
				}
			}
		})
	}

	reloads := newReloader(&reloader{cfg: cfg, system: system, metrics: actorMetrics, logger: logger, gw: gw,
		node: node, registrar: registrar, base: publicBase, info: info, current: layouts}, reg)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reloading := make(chan struct{})
	rctx, stopReloading := context.WithCancel(ctx)
	defer stopReloading()
	go func() {
		defer close(reloading)
		for {
			select {
			case <-rctx.Done():
				return
			case <-hup:
				logger.Info("SIGHUP: reloading the layout file", "file", cfg.LayoutConfig)
				_ = reloads.reload(rctx)
			}
		}
	}()

	select {
	case <-ctx.Done():
		<-reloading
		logger.Info("shutting down", "in_flight", gw.InFlight())
	case err := <-serveErr:
		stopReloading()
		<-reloading
		reloads.close()
		stopAgent()
		<-agentDone
		_ = node.Leave(time.Second)
		return fmt.Errorf("http server: %w", err)
	}
	_ = drain.drain(context.Background())
	if err := node.Leave(5 * time.Second); err != nil {
		logger.Warn("leaving the cluster", "err", err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		logger.Warn("http server did not close in time", "err", err)
	}
	reloads.close()
	for name, l := range reloads.layouts() {
		if err := l.Stop(sctx); err != nil {
			logger.Warn("layout did not stop in time", "layout", name, "err", err)
		}
	}
	logger.Info("stopped")
	return nil
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "troupe_build_info",
		Help: "Always 1; the labels say which Troupe and Go built this node.",
	}, []string{"version", "goversion", "protocol"})
	bi, _ := debug.ReadBuildInfo()
	goVersion := ""
	if bi != nil {
		goVersion = bi.GoVersion
	}
	g.WithLabelValues(version(), goVersion, strconv.Itoa(actors.ProtocolVersion)).Set(1)
	return g
}

func layoutInfo(names []string, file string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "troupe_layout_info",
		Help: "Always 1; the labels name a layout and the file it came from.",
	}, []string{"layout", "file"})
	for _, name := range names {
		g.WithLabelValues(name, file).Set(1)
	}
	return g
}

// router lets the gateway route chats through the cluster.
type router struct{ c *cluster.Cluster }

func (r router) Route(layout, key string, tried []string) (gateway.Target, error) {
	t, err := r.c.Route(layout, key, tried)
	return gateway.Target(t), err
}

func (r router) Serves(layout string) bool { return r.c.Serves(layout) }

func (r router) Layouts() []string { return r.c.Layouts() }

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
