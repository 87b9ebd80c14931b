// Package cluster makes Troupe nodes one cluster: membership and failure
// detection with hashicorp/memberlist, each node's load gossiped as it
// changes, the choice of the node that runs a chat, and the actor remote
// (gRPC) that carries chats and their chunks between nodes.
//
// It knows actors and layouts as running things, not layout files or HTTP.
package cluster

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a node's membership. Zero values take the documented
// defaults.
type Config struct {
	// NodeName is unique in the cluster; default hostname-gossipport.
	NodeName string
	// BindAddress is the IP gossip and remote listen on.
	BindAddress string
	// AdvertiseAddress is the host other nodes reach this one at (the
	// node's PUBLIC_ADDRESS); a name is resolved once at start-up.
	AdvertiseAddress string
	// GossipPort is memberlist's TCP and UDP port; 0 picks a free one.
	GossipPort int
	// RemotePort is the actor remote's gRPC port; 0 picks a free one.
	RemotePort int
	// GossipPortFallback and RemotePortFallback say that the port was not
	// chosen by the user (it is the default): when it is taken, by another
	// node on the same host say, a free port is used instead and logged,
	// rather than failing. A port the user chose is used or fails.
	GossipPortFallback bool
	RemotePortFallback bool
	// Join lists gossip addresses (host or host:port) of existing members.
	// A DNS name stands for all its addresses. Empty: a cluster of one,
	// until others join it.
	Join []string
	// Key turns on gossip encryption: 16, 24 or 32 bytes (AES-128/192/256).
	// Use ParseKey for a user's CLUSTER_KEY. It also locks the remote link
	// with mutual TLS, unless TLS is given.
	Key []byte
	// TLS, when given, locks the remote link with an operator's
	// certificates instead of the CA derived from Key (which still
	// encrypts gossip). With neither, the link is open.
	TLS TLSFiles
	// LoadInterval is how often a node's load is gossiped when it changed
	// (and every 10 intervals when it did not); default 100ms.
	LoadInterval time.Duration
	// HTTPBase and EndpointPath say where the node's chat endpoint is, so
	// that a surviving node can unregister a dead one from the Agent.
	HTTPBase     string
	EndpointPath string

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// The cluster ports a node takes when none is set: memberlist's usual gossip
// port, and the one next to it for the remote. Both are outside the range
// of HTTP ports that nodes on one host are usually given (8123, 8124, ...),
// so a node's remote never takes the HTTP port of the next node started.
const (
	DefaultGossipPort = 7946
	DefaultRemotePort = 7947
)

// ErrBadKey is returned by ParseKey for a key that is neither a base64 AES
// key nor a passphrase.
var ErrBadKey = errors.New("cluster key")

// ParseKey turns a CLUSTER_KEY into an AES key: base64 of 16, 24 or 32 bytes
// is used as it is; anything else is a passphrase, hashed with SHA-256.
func ParseKey(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && (len(b) == 16 || len(b) == 24 || len(b) == 32) {
		return b, nil
	}
	if len(s) < 12 {
		return nil, fmt.Errorf("%w: a passphrase needs at least 12 characters (or give base64 of a 16, 24 or 32 byte key)", ErrBadKey)
	}
	sum := sha256.Sum256([]byte(s))
	return sum[:], nil
}

func (c *Config) withDefaults() error {
	if c.BindAddress == "" {
		c.BindAddress = "127.0.0.1"
	}
	if net.ParseIP(c.BindAddress) == nil {
		return fmt.Errorf("bind address %q: want an IP address", c.BindAddress)
	}
	if c.AdvertiseAddress == "" || c.AdvertiseAddress == "localhost" {
		c.AdvertiseAddress = c.BindAddress
		if ip := net.ParseIP(c.BindAddress); ip.IsUnspecified() {
			c.AdvertiseAddress = "127.0.0.1"
		}
	}
	if net.ParseIP(c.AdvertiseAddress) == nil {
		ips, err := net.LookupIP(c.AdvertiseAddress)
		if err != nil || len(ips) == 0 {
			return fmt.Errorf("advertise address %q: cannot resolve it: %v", c.AdvertiseAddress, err)
		}
		c.AdvertiseAddress = ips[0].String()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	// A seed given without a port is at the port every node of the cluster
	// was given, or at the default one.
	seedPort := c.GossipPort
	if seedPort == 0 || c.GossipPortFallback {
		seedPort = DefaultGossipPort
	}
	c.Join = withPort(c.Join, seedPort)
	var err error
	if c.GossipPort, err = c.choosePort("gossip", c.GossipPort, c.GossipPortFallback, true); err != nil {
		return err
	}
	if c.RemotePort, err = c.choosePort("remote", c.RemotePort, c.RemotePortFallback, false); err != nil {
		return err
	}
	if c.NodeName == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "troupe"
		}
		c.NodeName = host + "-" + strconv.Itoa(c.GossipPort)
	}
	if c.LoadInterval <= 0 {
		c.LoadInterval = 100 * time.Millisecond
	}
	if n := len(c.Key); n != 0 && n != 16 && n != 24 && n != 32 {
		return fmt.Errorf("%w: %d bytes, want 16, 24 or 32", ErrBadKey, n)
	}
	return c.TLS.check()
}

// choosePort returns the port to use for one listener: port itself when it
// is free or the user chose it (a taken one then fails where it is bound,
// with the setting's name); a free one when port is 0, or when port is the
// default and taken.
func (c *Config) choosePort(what string, port int, fallback, udp bool) (int, error) {
	if port == 0 {
		return freePort(c.BindAddress, udp)
	}
	if !fallback {
		return port, nil
	}
	if err := portFree(c.BindAddress, port, udp); err == nil {
		return port, nil
	}
	free, err := freePort(c.BindAddress, udp)
	if err != nil {
		return 0, err
	}
	c.Logger.Debug("default "+what+" port taken: using a free one", "wanted", port, "port", free)
	return free, nil
}

// portFree reports whether port can be bound now, on TCP and, for gossip,
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

// withPort adds port to every address that has none.
func withPort(addrs []string, port int) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		if a = strings.TrimSpace(a); a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			a = net.JoinHostPort(strings.Trim(a, "[]"), strconv.Itoa(port))
		}
		out = append(out, a)
	}
	return out
}

// freePort finds a port that is free now on both TCP and (for gossip) UDP.
// A tiny race with another process is possible; ports set explicitly have
// none.
func freePort(ip string, udp bool) (int, error) {
	for i := 0; i < 20; i++ {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return 0, fmt.Errorf("finding a free port on %s: %w", ip, err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		if udp {
			pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ln.Close()
				continue
			}
			pc.Close()
		}
		ln.Close()
		return port, nil
	}
	return 0, fmt.Errorf("no free port on %s", ip)
}

// resolveSeeds expands every seed name into all its addresses, so that a
// Kubernetes headless service or a compose service name joins every
// member behind it. Seeds that do not resolve yet are kept for a later try.
func resolveSeeds(seeds []string, defaultPort int) []string {
	var out []string
	for _, s := range seeds {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		host, port, err := net.SplitHostPort(s)
		if err != nil {
			host, port = s, strconv.Itoa(defaultPort)
		}
		if net.ParseIP(host) != nil {
			out = append(out, net.JoinHostPort(host, port))
			continue
		}
		ips, err := net.LookupIP(host)
		if err != nil {
			continue
		}
		for _, ip := range ips {
			out = append(out, net.JoinHostPort(ip.String(), port))
		}
	}
	return out
}
