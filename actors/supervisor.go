package actors

import (
	"math/rand/v2"
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// Supervision configures how a layout restarts its failed actors.
type Supervision struct {
	// InitialBackoff is the delay before the first restart; each further
	// failure within Window doubles it, up to MaxBackoff.
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// MaxRestarts within Window is the restart budget. One more failure
	// stops the actor and marks the layout unhealthy.
	MaxRestarts int
	Window      time.Duration
	// Cooldown is how long an unhealthy layout waits before it starts a
	// fresh set of actors and becomes healthy again.
	Cooldown time.Duration
}

// DefaultSupervision is what a layout uses unless it says otherwise.
var DefaultSupervision = Supervision{
	InitialBackoff: 50 * time.Millisecond,
	MaxBackoff:     5 * time.Second,
	MaxRestarts:    5,
	Window:         time.Minute,
	Cooldown:       10 * time.Second,
}

func (s Supervision) withDefaults() Supervision {
	d := DefaultSupervision
	if s.InitialBackoff <= 0 {
		s.InitialBackoff = d.InitialBackoff
	}
	if s.MaxBackoff <= 0 {
		s.MaxBackoff = d.MaxBackoff
	}
	if s.MaxRestarts <= 0 {
		s.MaxRestarts = d.MaxRestarts
	}
	if s.Window <= 0 {
		s.Window = d.Window
	}
	if s.Cooldown <= 0 {
		s.Cooldown = d.Cooldown
	}
	return s
}

// backoff is the delay before restart number n (1-based): doubling from the
// initial delay, capped, with up to 10% jitter so that actors failing
// together do not restart in lockstep. protoactor's own "exponential"
// strategy is linear and uncapped, hence this one.
func (s Supervision) backoff(n int) time.Duration {
	d := s.InitialBackoff
	for i := 1; i < n && d < s.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.MaxBackoff)
	return d + time.Duration(rand.Int64N(int64(d)/10+1))
}

// failureHandler is told about each failure of a supervised child, on the
// supervisor's own goroutine, so it may touch the supervisor's state.
type failureHandler interface {
	// childFailed fails the chat whose message the child dropped (if any)
	// and records the failure; stopped says the budget is spent.
	childFailed(child *actor.PID, reason any, message any, restartIn time.Duration, stopped bool)
	// restartLater runs restart after delay unless the supervisor stops
	// first: a timer left behind would restart a child of a layout gone.
	restartLater(delay time.Duration, restart func())
}

// strategy is a one-for-one supervisor strategy with capped exponential
// backoff and a restart budget.
type strategy struct {
	cfg     Supervision
	handler failureHandler
}

// HandleFailure implements actor.SupervisorStrategy. protoactor calls it on
// the parent's mailbox goroutine.
func (s *strategy) HandleFailure(_ *actor.ActorSystem, sup actor.Supervisor, child *actor.PID, rs *actor.RestartStatistics, reason any, message any) {
	_, msg, _ := actor.UnwrapEnvelope(message)
	rs.Fail()
	n := rs.NumberOfFailures(s.cfg.Window)
	if n > s.cfg.MaxRestarts {
		rs.Reset()
		s.handler.childFailed(child, reason, msg, 0, true)
		sup.StopChildren(child)
		return
	}
	delay := s.cfg.backoff(n)
	s.handler.childFailed(child, reason, msg, delay, false)
	// The child's mailbox stays suspended until the restart, so messages
	// queued meanwhile are kept, not lost.
	s.handler.restartLater(delay, func() { sup.RestartChildren(child) })
}
