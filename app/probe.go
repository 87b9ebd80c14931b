package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The probe subcommands talk to the node that the same settings (PORT,
// BIND_ADDRESS) describe, so that an image with no shell can check and
// drain itself: `troupe health` for Docker's HEALTHCHECK and compose
// healthchecks, `troupe drain` for Kubernetes' preStop hook.

// runHealth asks the node whether it is ready (GET /ready), or with -live
// only whether it is up (GET /health). It returns nil when the answer is
// 2xx: the process then exits 0, else 1.
func runHealth(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("troupe health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	live := fs.Bool("live", false, "check liveness (GET /health) instead of readiness (GET /ready)")
	rawURL := fs.String("url", "", "the node's base URL (default: from PORT and BIND_ADDRESS)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: troupe health [-live] [-url http://host:port] [-timeout 3s]\n\nExits 0 when the node is ready (or, with -live, up), 1 otherwise.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	base, err := probeBase(*rawURL, getenv)
	if err != nil {
		return err
	}
	path := "/ready"
	if *live {
		path = "/health"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	answer := strings.TrimSpace(string(body))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %d %s", base+path, resp.StatusCode, answer)
	}
	if answer == "" {
		answer = "up"
	}
	fmt.Fprintln(stdout, answer)
	return nil
}

// runDrain asks the node to drain (POST /drain, accepted from this host
// only) and waits until it has: it no longer counts as ready, leaves the
// Agent, takes no new chats, and finishes the ones it runs, for up to its
// DRAIN_TIMEOUT. The node then waits for its signal to exit.
func runDrain(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := ParseConfig(nil, getenv, stderr)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("troupe drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	rawURL := fs.String("url", "", "the node's base URL, on this host (default: from PORT and BIND_ADDRESS)")
	timeout := fs.Duration("timeout", cfg.DrainTimeout+15*time.Second, "how long to wait (default: DRAIN_TIMEOUT + 15s)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: troupe drain [-url http://127.0.0.1:port] [-timeout d]\n\nDrains the node on this host; exits 0 once its chats are done.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	base, err := probeBase(*rawURL, getenv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/drain", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("drain: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("drain: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	fmt.Fprintln(stdout, "drained")
	return nil
}

// probeBase is the base URL of the node the settings describe, reached
// from this host.
func probeBase(rawURL string, getenv func(string) string) (string, error) {
	if rawURL != "" {
		return strings.TrimSuffix(rawURL, "/"), nil
	}
	cfg, err := ParseConfig(nil, getenv, io.Discard)
	if err != nil {
		return "", err
	}
	if cfg.Port == 0 {
		return "", errors.New("PORT is 0 (a free port): give the node's URL with -url")
	}
	host := cfg.BindAddress
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip.To4() == nil {
			host = "::1"
		}
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(cfg.Port)), nil
}
