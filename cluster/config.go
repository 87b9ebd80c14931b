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
	// Join lists gossip addresses (host or host:port) of existing members.
	// A DNS name stands for all its addresses. Empty: a cluster of one,
	// until others join it.
	Join []string
	// Key turns on gossip encryption: 16, 24 or 32 bytes (AES-128/192/256).
	// Use ParseKey for a user's CLUSTER_KEY.
	Key []byte
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
	var err error
	if c.GossipPort == 0 {
		if c.GossipPort, err = freePort(c.BindAddress, true); err != nil {
			return err
		}
	}
	if c.RemotePort == 0 {
		if c.RemotePort, err = freePort(c.BindAddress, false); err != nil {
			return err
		}
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
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
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
