package actors

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BreakerConfig configures a layout's circuit breaker: when a layout keeps
// failing, its node stops giving it chats for a cool-down, then lets one
// probe chat through, and takes it back into rotation when the probe
// succeeds. Zero fields take DefaultBreaker's values.
type BreakerConfig struct {
	// Off turns the breaker off: the layout takes chats however often
	// they fail.
	Off bool
	// Failures is how many chats failing in a row open the breaker.
	Failures int
	// Ratio opens the breaker when at least this share of the last Window
	// chats failed (once Window chats have ended): a model that fails every
	// other chat never fails Failures times in a row, yet is not fit to
	// serve. A Ratio of 1 leaves the opening to Failures.
	Ratio  float64
	Window int
	// Cooldown is how long an open breaker refuses chats before it lets a
	// probe through. Each probe that fails doubles it, up to MaxCooldown;
	// a probe that succeeds resets it.
	Cooldown    time.Duration
	MaxCooldown time.Duration
}

// DefaultBreaker is the breaker a layout has unless its file says otherwise.
// Five failures in a row is past what chance explains for a model that is
// fine (a flaky upstream failing one chat in ten does it once in 100,000
// runs of five), and half of twenty is a model that has clearly gone bad;
// ten seconds is long enough to stop hammering an upstream that restarts,
// short enough that users barely notice a model that is back, and two
// minutes bounds how long a model that is back waits for its next probe.
var DefaultBreaker = BreakerConfig{
	Failures:    5,
	Ratio:       0.5,
	Window:      20,
	Cooldown:    10 * time.Second,
	MaxCooldown: 2 * time.Minute,
}

// WithDefaults fills the zero fields from DefaultBreaker.
func (c BreakerConfig) WithDefaults() BreakerConfig {
	d := DefaultBreaker
	if c.Failures <= 0 {
		c.Failures = d.Failures
	}
	if c.Ratio <= 0 {
		c.Ratio = d.Ratio
	}
	if c.Window <= 0 {
		c.Window = d.Window
	}
	if c.Cooldown <= 0 {
		c.Cooldown = d.Cooldown
	}
	if c.MaxCooldown <= 0 {
		c.MaxCooldown = d.MaxCooldown
	}
	c.MaxCooldown = max(c.MaxCooldown, c.Cooldown)
	return c
}

// Verdict is what the end of a chat says about the layout that ran it.
type Verdict int8

const (
	// VerdictNone: nothing. The client went away or aborted the chat, or
	// it was refused for load or for its input before the layout could
	// show what it is worth.
	VerdictNone Verdict = iota
	// VerdictSuccess: the layout answered, by its first choice or by a
	// fallback that rescued the chat.
	VerdictSuccess
	// VerdictFailure: the layout failed the chat: a model's error or
	// crash, a timeout inside the layout, the layout turning unhealthy.
	VerdictFailure
)

// VerdictOf is the verdict on a chat that ended with a Failure of code.
func VerdictOf(code Code) Verdict {
	switch code {
	case Code_CODE_INTERNAL, Code_CODE_UNAVAILABLE, Code_CODE_DEADLINE_EXCEEDED:
		return VerdictFailure
	}
	return VerdictNone
}

// ErrCircuitOpen says a layout's circuit breaker refused a chat: the
// layout failed too often on that node and is out of rotation there until
// its cool-down ends.
var ErrCircuitOpen = errors.New("circuit breaker open")

// probeRetryAfter is what a chat refused while the probe runs is told to
// wait: the probe's end is unknown, and a success lets chats in at once.
const probeRetryAfter = time.Second

// Breaker is a layout's circuit breaker on one node. The chat's owner on
// the node (the gateway for its own chats, the cluster's host for other
// gateways') asks Admit before it sends a chat to the layout and tells the
// ticket how the chat ended. Its state moves from open to half-open on
// reading, when the cool-down is over: no timer runs, so none has to be
// stopped with the layout. A nil *Breaker admits every chat.
type Breaker struct {
	cfg     BreakerConfig
	now     func() time.Time
	logger  *slog.Logger
	opens   prometheus.Counter
	refused prometheus.Counter

	mu    sync.Mutex
	state BreakerState
	// gen changes when the breaker opens or closes: a ticket of an
	// earlier generation is of a chat that started before, whose end no
	// longer counts.
	gen      uint64
	since    time.Time
	until    time.Time     // while open: the end of the cool-down
	cooldown time.Duration // the last cool-down, doubled by a failed probe
	reason   string        // why it last opened
	inRow    int           // failures in a row while closed
	// recent holds the verdicts of the last chats while closed, true for
	// a failure: n of them, failed of those, next is where the next goes.
	recent          []bool
	n, failed, next int
}

// NewBreaker returns a closed breaker for a layout. now is time.Now unless a
// test injects a clock; the counters and logger may be nil.
func NewBreaker(cfg BreakerConfig, now func() time.Time, opens, refused prometheus.Counter, logger *slog.Logger) *Breaker {
	if now == nil {
		now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg = cfg.WithDefaults()
	return &Breaker{cfg: cfg, now: now, logger: logger, opens: opens, refused: refused,
		since: now(), cooldown: cfg.Cooldown, recent: make([]bool, cfg.Window)}
}

// BreakerTicket is a chat the breaker let through. Done must be called
// once, when the chat ends, however it ends.
type BreakerTicket struct {
	b     *Breaker
	gen   uint64
	probe bool
}

// Admit lets a chat through, or refuses it and says how long the breaker
// stays open (the cool-down left, or a second while its probe runs).
func (b *Breaker) Admit() (BreakerTicket, time.Duration, bool) {
	if b == nil || b.cfg.Off {
		return BreakerTicket{}, 0, true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	b.advance(now)
	var wait time.Duration
	switch b.state {
	case BreakerState_BREAKER_CLOSED:
		return BreakerTicket{b: b, gen: b.gen}, 0, true
	case BreakerState_BREAKER_HALF_OPEN:
		b.state, b.since = BreakerState_BREAKER_PROBING, now
		b.logger.Info("circuit breaker half-open: a probe chat goes through")
		return BreakerTicket{b: b, gen: b.gen, probe: true}, 0, true
	case BreakerState_BREAKER_OPEN:
		wait = b.until.Sub(now)
	default:
		wait = probeRetryAfter
	}
	if b.refused != nil {
		b.refused.Inc()
	}
	return BreakerTicket{}, wait, false
}

// Done records how the ticket's chat ended. A probe that succeeds closes
// the breaker, one that fails opens it again for a longer cool-down, and
// one that says nothing (its client went away) leaves the next chat to
// probe.
func (t BreakerTicket) Done(v Verdict) {
	b := t.b
	if b == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t.gen != b.gen {
		return
	}
	now := b.now()
	if t.probe {
		switch v {
		case VerdictSuccess:
			b.close(now)
		case VerdictFailure:
			b.open(now, min(2*b.cooldown, b.cfg.MaxCooldown), "its probe chat failed")
		default:
			b.state, b.since = BreakerState_BREAKER_HALF_OPEN, now
		}
		return
	}
	if b.state != BreakerState_BREAKER_CLOSED || v == VerdictNone {
		return
	}
	failed := v == VerdictFailure
	if failed {
		b.inRow++
	} else {
		b.inRow = 0
	}
	if b.n == len(b.recent) && b.recent[b.next] {
		b.failed--
	}
	b.recent[b.next] = failed
	b.next = (b.next + 1) % len(b.recent)
	b.n = min(b.n+1, len(b.recent))
	if failed {
		b.failed++
	}
	switch {
	case b.inRow >= b.cfg.Failures:
		b.open(now, b.cfg.Cooldown, fmt.Sprintf("%d chats in a row failed", b.inRow))
	case b.n == len(b.recent) && float64(b.failed) >= b.cfg.Ratio*float64(b.n):
		b.open(now, b.cfg.Cooldown, fmt.Sprintf("%d of the last %d chats failed", b.failed, b.n))
	}
}

// advance moves an open breaker whose cool-down is over to half-open.
// b.mu is held.
func (b *Breaker) advance(now time.Time) {
	if b.state == BreakerState_BREAKER_OPEN && !now.Before(b.until) {
		b.state, b.since = BreakerState_BREAKER_HALF_OPEN, b.until
	}
}

func (b *Breaker) open(now time.Time, cooldown time.Duration, reason string) {
	b.gen++
	b.state, b.since, b.until, b.cooldown, b.reason = BreakerState_BREAKER_OPEN, now, now.Add(cooldown), cooldown, reason
	if b.opens != nil {
		b.opens.Inc()
	}
	b.logger.Warn("circuit breaker open: the layout takes no chats on this node", "reason", reason, "cooldown", cooldown)
}

func (b *Breaker) close(now time.Time) {
	b.gen++
	b.state, b.since, b.until, b.cooldown = BreakerState_BREAKER_CLOSED, now, time.Time{}, b.cfg.Cooldown
	b.inRow, b.n, b.failed, b.next = 0, 0, 0, 0
	b.logger.Info("circuit breaker closed: its probe chat succeeded, the layout is back in rotation")
}

// BreakerStatus is a snapshot of a breaker.
type BreakerStatus struct {
	State BreakerState
	// Since is when it entered State.
	Since time.Time
	// Until is when an open breaker's cool-down ends (zero otherwise).
	Until time.Time
	// Reason is why it last opened.
	Reason string
	// Cooldown is the cool-down it last opened for.
	Cooldown time.Duration
	// FailuresInRow are the chats that failed in a row while closed.
	FailuresInRow int
}

// Status returns the breaker's state now; a nil breaker is closed.
func (b *Breaker) Status() BreakerStatus {
	if b == nil {
		return BreakerStatus{}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advance(b.now())
	s := BreakerStatus{State: b.state, Since: b.since, Reason: b.reason, Cooldown: b.cooldown,
		FailuresInRow: b.inRow}
	if b.state == BreakerState_BREAKER_OPEN {
		s.Until = b.until
	}
	return s
}

// UntilUnixMilli is Until in Unix milliseconds, 0 when it is zero.
func (s BreakerStatus) UntilUnixMilli() int64 {
	if s.Until.IsZero() {
		return 0
	}
	return s.Until.UnixMilli()
}

// Value is the state as a number, for the troupe_layout_breaker_state
// gauge: 0 closed, 1 half-open (a probe may or does run), 2 open.
func (s BreakerState) Value() float64 {
	switch s {
	case BreakerState_BREAKER_OPEN:
		return 2
	case BreakerState_BREAKER_HALF_OPEN, BreakerState_BREAKER_PROBING:
		return 1
	}
	return 0
}

// Word names the state for people: closed, open, half-open, probing.
func (s BreakerState) Word() string {
	switch s {
	case BreakerState_BREAKER_OPEN:
		return "open"
	case BreakerState_BREAKER_HALF_OPEN:
		return "half-open"
	case BreakerState_BREAKER_PROBING:
		return "probing"
	}
	return "closed"
}
