package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// The Agent client's states, as the Python original's state enum had them.
const (
	stateUninitialized = "uninitialized"
	stateTrying        = "trying"
	stateRegistered    = "registered"
	stateFailed        = "failed"
	stateUnregistered  = "unregistered"
)

var allStates = []string{stateUninitialized, stateTrying, stateRegistered, stateFailed, stateUnregistered}

// AgentConfig configures the node's relation with the Agent.
type AgentConfig struct {
	// URL is the Agent's API base, e.g. "http://localhost:9000/v1.0/".
	URL string
	// Endpoints maps each LLM name to the chat endpoint URLs to register
	// under it (see Server.SlotURLs).
	Endpoints map[string][]string
	// RetryCount is how many failed rounds in a row turn the state to
	// "failed"; the client keeps trying all the same. Default 5.
	RetryCount int
	// InitialBackoff is the wait after the first failed round, doubling up
	// to MaxBackoff; defaults 1s and 30s.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// Refresh is how often registrations are renewed once they succeeded,
	// so that an Agent that restarted (and forgot its table) or dropped an
	// endpoint learns it again. A duplicate registration is harmless: the
	// Agent answers "Failed" and keeps the one it has. Default 15s.
	Refresh time.Duration
	Client  *http.Client
}

// Registrar keeps the node registered with the Agent. The relation is one
// sequential conversation, so a single goroutine (Run) owns it.
type Registrar struct {
	cfg     AgentConfig
	base    *url.URL
	logger  *slog.Logger
	metrics *metrics

	mu        sync.Mutex
	state     string
	endpoints map[string][]string // by LLM name; replaced by SetEndpoints
	kick      chan struct{}       // SetEndpoints asks Run to register now
}

// NewRegistrar returns the Agent client for the gateway's node.
func (s *Server) NewRegistrar(cfg AgentConfig) (*Registrar, error) {
	base := cfg.URL
	if !strings.HasSuffix(base, "/") {
		base += "/"
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("agent endpoint %q: want a URL such as http://localhost:9000/v1.0/", cfg.URL)
	}
	if cfg.RetryCount <= 0 {
		cfg.RetryCount = 5
	}
	if cfg.InitialBackoff <= 0 {
		cfg.InitialBackoff = time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = 15 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	return &Registrar{cfg: cfg, base: u, logger: s.logger.With("agent", u.String()), metrics: s.metrics,
		state: stateUninitialized, endpoints: cfg.Endpoints, kick: make(chan struct{}, 1)}, nil
}

func (r *Registrar) currentEndpoints() map[string][]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.endpoints
}

// SetEndpoints replaces what the node registers, as a reload of its layout
// file does: a name it no longer serves, or serves with fewer places, is
// unregistered first (the Agent removes every endpoint of this host under
// a name at once), then Run registers the new set without waiting for its
// next round.
func (r *Registrar) SetEndpoints(ctx context.Context, endpoints map[string][]string) error {
	r.mu.Lock()
	old := r.endpoints
	r.endpoints = endpoints
	r.mu.Unlock()
	var errs []error
	for name, eps := range old {
		if len(eps) == 0 || len(endpoints[name]) >= len(eps) {
			continue
		}
		if err := r.UnregisterEndpoint(ctx, name, eps[0]); err != nil {
			errs = append(errs, err)
		}
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
	return errors.Join(errs...)
}

// State returns the client's current state.
func (r *Registrar) State() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

func (r *Registrar) setState(state string) {
	r.mu.Lock()
	r.state = state
	r.mu.Unlock()
	for _, s := range allStates {
		v := 0.0
		if s == state {
			v = 1
		}
		r.metrics.registration.WithLabelValues(s).Set(v)
	}
}

// Run registers the node and keeps it registered until ctx ends. It never
// gives up: an Agent that is down now may be up later.
func (r *Registrar) Run(ctx context.Context) {
	r.setState(stateTrying)
	failures := 0
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.kick:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		wait := r.cfg.Refresh
		if err := r.registerAll(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			r.metrics.regAttempts.WithLabelValues("error").Inc()
			wait = r.backoff(failures)
			if failures == r.cfg.RetryCount {
				r.setState(stateFailed)
				r.logger.Error("cannot register with the Agent; still trying", "attempts", failures, "err", err, "retry_in", wait)
			} else {
				r.logger.Warn("cannot register with the Agent", "attempt", failures, "err", err, "retry_in", wait)
			}
		} else {
			r.metrics.regAttempts.WithLabelValues("ok").Inc()
			if r.State() != stateRegistered {
				r.logger.Info("registered with the Agent", "names", len(r.currentEndpoints()))
			}
			failures = 0
			r.setState(stateRegistered)
		}
		timer.Reset(wait)
	}
}

func (r *Registrar) backoff(failures int) time.Duration {
	d := r.cfg.InitialBackoff
	for i := 1; i < failures && d < r.cfg.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, r.cfg.MaxBackoff)
}

// registerAll registers every endpoint under its name. "Success" means the
// Agent did not have it (a first registration, or an Agent that forgot);
// "Failed" means it already had it.
func (r *Registrar) registerAll(ctx context.Context) error {
	added := 0
	for name, endpoints := range r.currentEndpoints() {
		for _, ep := range endpoints {
			answer, err := r.call(ctx, "worker/register", name, ep)
			if err != nil {
				return err
			}
			if answer == "Success" {
				added++
			}
		}
	}
	if added > 0 && r.State() == stateRegistered {
		r.logger.Warn("the Agent had forgotten endpoints of this node; registered them again", "endpoints", added)
	}
	return nil
}

// Unregister removes the node's endpoints from the Agent. The Agent compares
// only scheme, host and port, so one call per name removes them all.
func (r *Registrar) Unregister(ctx context.Context) error {
	var errs []error
	for name, endpoints := range r.currentEndpoints() {
		if len(endpoints) == 0 {
			continue
		}
		if err := r.UnregisterEndpoint(ctx, name, endpoints[0]); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	r.setState(stateUnregistered)
	r.logger.Info("unregistered from the Agent")
	return nil
}

// UnregisterEndpoint removes every endpoint of endpoint's host:port under
// name. A node calls it for a member that died, because the Agent never
// notices a dead worker by itself: it would keep sending chats there.
func (r *Registrar) UnregisterEndpoint(ctx context.Context, name, endpoint string) error {
	if _, err := r.call(ctx, "worker/unregister", name, endpoint); err != nil {
		return fmt.Errorf("unregister %q at %s: %w", name, endpoint, err)
	}
	return nil
}

// call posts one form to the Agent and returns its answer's body.
func (r *Registrar) call(ctx context.Context, path, name, endpoint string) (string, error) {
	form := url.Values{"name": {name}, "endpoint": {endpoint}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base.JoinPath(path).String(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := r.cfg.Client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: HTTP %d", path, resp.StatusCode)
	}
	return strings.TrimSpace(string(body)), nil
}
