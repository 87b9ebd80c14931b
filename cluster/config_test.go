package cluster

import (
	"net"
	"slices"
	"strconv"
	"testing"
)

// A default port that is taken falls back to a free one; a port the user
// chose is kept, to fail where it is bound with the setting's name.
func TestDefaultPortFallsBack(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().(*net.TCPAddr).Port
	cfg := Config{BindAddress: "127.0.0.1", GossipPort: taken, GossipPortFallback: true, RemotePort: taken}
	if err := cfg.withDefaults(); err != nil {
		t.Fatal(err)
	}
	if cfg.GossipPort == taken || cfg.GossipPort == 0 {
		t.Errorf("default gossip port %d taken: got %d, want another", taken, cfg.GossipPort)
	}
	if cfg.RemotePort != taken {
		t.Errorf("chosen remote port %d: got %d", taken, cfg.RemotePort)
	}
	if err := portFree("127.0.0.1", cfg.GossipPort, true); err != nil {
		t.Errorf("fallback gossip port %d is not free on TCP and UDP: %v", cfg.GossipPort, err)
	}
}

// A seed without a port is at the default gossip port, or at the port all
// nodes were given.
func TestSeedPorts(t *testing.T) {
	for _, tt := range []struct {
		port     int
		fallback bool
		want     string
	}{
		{0, false, "troupe:" + strconv.Itoa(DefaultGossipPort)},
		{DefaultGossipPort, true, "troupe:" + strconv.Itoa(DefaultGossipPort)},
		{17000, false, "troupe:17000"},
	} {
		// A chosen port is not bound here, so 17000 need not be free.
		cfg := Config{BindAddress: "127.0.0.1", GossipPort: tt.port, GossipPortFallback: tt.fallback, Join: []string{"troupe", "10.0.0.1:7000", " "}}
		if err := cfg.withDefaults(); err != nil {
			t.Fatal(err)
		}
		if want := []string{tt.want, "10.0.0.1:7000"}; !slices.Equal(cfg.Join, want) {
			t.Errorf("port %d fallback %v: seeds %q, want %q", tt.port, tt.fallback, cfg.Join, want)
		}
	}
}
