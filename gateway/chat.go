package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/asynkron/protoactor-go/actor"

	"github.com/troupe-llm/troupe/actors"
)

var (
	errLayoutFailed = errors.New("the layout failed")
	errNodeGone     = errors.New("the node running this chat went away")
	errChatTimeout  = errors.New("the chat ran past its time limit")
	errClientGone   = errors.New("the client went away")
)

// handOffAfter is how long a chat streams on the HTTP handler's goroutine
// before it moves to one of its own: a stream that lasts keeps net/http's
// goroutine, buffers and request (about 24 KiB) for nothing, while a short
// chat is not worth the move. Tests set it to 0.
var handOffAfter = 100 * time.Millisecond

// chat is one chat being served, with everything its serving needs, so
// that once its answer streams it can move from the HTTP handler's
// goroutine to one of its own (see handOff).
type chat struct {
	s     *Server
	req   *actors.ChatRequest
	key   string
	out   answer
	m     *chatMetrics
	start time.Time
	// One context carries every reason to stop the chat, each as its cause:
	// the client going away, an abort or drain, the time limit, the layout
	// failing. It is not the request's: the chat may outlive its handler.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// client stops relaying the request context's end, which says the
	// client went away, to ctx; nil once stopped for a hand-off.
	client  func() bool
	timeout *time.Timer
	tried   []string
	// When every node refused, the client is told to come back when the
	// first of them expects room: it is routed to that one then.
	retry retryAfter
	// circuit collects the cool-downs left of the circuit breakers that
	// refused the chat; opened counts the nodes in tried whose breaker
	// refused it. A chat every node refused that way gets a 503.
	circuit retryAfter
	opened  int
	// full counts the nodes in tried that refused the chat for want of
	// room; the others went away or could not be reached, and a chat
	// none had room for is told so (429), one none could run is not.
	full int
	// handedOff is set once the chat streams on a connection taken over
	// from net/http: its answer is written by pumps from then on, and the
	// handler's goroutine only returns.
	handedOff bool
	// pushing is set once a handed-off chat's reply calls for pumps; wakes
	// counts the calls for a pump since the running one started; over is
	// set when the chat has ended on a pump.
	pushing atomic.Bool
	wakes   atomic.Int64
	over    atomic.Bool

	// The attempt on one node, and what it holds: a place the gateway took
	// in a local layout's admission, the watch of the layout's epoch, the
	// watches of a remote node going or falling silent.
	target        Target
	dest          *actor.PID
	reply         *reply
	actx          context.Context // the attempt's: ctx, or a child of it ended when a remote node goes
	cancelAttempt context.CancelCauseFunc
	admission     *actors.Admission
	epoch         *actors.Epoch
	stopGone      func() bool
	stopSilent    func() bool
	sent          time.Time // when the chat went to another node; zero for this one
	last          time.Time // the last chunk

	// ticket is the local layout's breaker's pass for the attempt, told
	// the verdict on the attempt when it ends.
	ticket  actors.BreakerTicket
	verdict actors.Verdict
}

// serveChat runs one chat and streams its answer. It is the chat's owner:
// whatever happens in the actors or to other nodes, it answers exactly once.
// A chat that has written nothing yet is tried on another node when its node
// is full or goes away.
func (s *Server) serveChat(r *http.Request, req *actors.ChatRequest, key, slot string, out answer) {
	ctx, cancel := context.WithCancelCause(context.Background())
	c := &chat{s: s, req: req, key: key, out: out, m: s.chatMetrics(req.Layout), start: time.Now(), ctx: ctx, cancel: cancel}
	if !s.track(req.ChatId, slot, c.abort) {
		cancel(nil)
		s.reject(out, req.Layout, http.StatusServiceUnavailable, "This worker is shutting down; please try again.", 0)
		return
	}
	c.client = context.AfterFunc(r.Context(), func() { c.abort(errClientGone) })
	req.DeadlineUnixNano = c.start.Add(s.cfg.ChatTimeout).UnixNano()
	// Nothing reads the context's deadline, so a timer that cancels it does
	// the time limit with fewer allocations than a deadline context.
	c.timeout = time.AfterFunc(s.cfg.ChatTimeout, func() { c.abort(errChatTimeout) })
	defer func() {
		if !c.handedOff {
			c.end()
		}
	}()
	c.run()
}

// abort ends the chat's context with a cause; a handed-off chat's pump
// then answers it.
func (c *chat) abort(cause error) {
	c.cancel(cause)
	if c.pushing.Load() {
		c.wake()
	}
}

// end releases what the chat holds for its whole life.
func (c *chat) end() {
	if c.client != nil {
		c.client()
	}
	c.timeout.Stop()
	c.cancel(nil)
	c.s.untrack(c.req.ChatId)
}

// run routes the chat and runs it until it ends, or until it has moved to
// a goroutine of its own.
func (c *chat) run() {
	s, req := c.s, c.req
	for {
		target, err := s.cfg.Router.Route(req.Layout, c.key, c.tried)
		if err != nil {
			var w interface{ RetryAfter() time.Duration }
			if errors.As(err, &w) && errors.Is(err, actors.ErrCircuitOpen) {
				c.circuit.note(w.RetryAfter())
			} else if errors.As(err, &w) {
				c.retry.note(w.RetryAfter())
			}
		}
		switch {
		case err != nil && !errors.Is(err, actors.ErrOverloaded) && len(c.tried) == c.opened &&
			(c.opened > 0 || errors.Is(err, actors.ErrCircuitOpen)):
			// Every node that serves it took it out of rotation.
			s.reject(c.out, req.Layout, http.StatusServiceUnavailable,
				fmt.Sprintf("%s keeps failing and is out of rotation for now; please try again later.", req.Layout), c.circuit.soonest)
			return
		case errors.Is(err, actors.ErrOverloaded), err != nil && c.full > 0:
			// Every node that could take it is full, or refused it or
			// went away with some full.
			s.reject(c.out, req.Layout, http.StatusTooManyRequests, "Too many chats at once; please try again shortly.", c.retry.soonest)
			return
		case err != nil && len(c.tried) > 0:
			// Every node it was tried on went away or could not be
			// reached (a link that refused this node, say): not a matter
			// of load.
			s.reject(c.out, req.Layout, http.StatusServiceUnavailable,
				fmt.Sprintf("%s is unavailable right now: the nodes that serve it could not be reached; please try again.", req.Layout), 0)
			return
		case err != nil:
			s.reject(c.out, req.Layout, http.StatusServiceUnavailable, fmt.Sprintf("%s is unavailable right now (%v); please try again.", req.Layout, err), 0)
			return
		}
		outcome, wait := c.attempt(target)
		if c.handedOff {
			return
		}
		c.retry.note(wait)
		if outcome == outcomeRetry {
			c.tried = append(c.tried, target.Node)
			s.metrics.reroutes.Inc()
			continue
		}
		s.record(req, outcome, c.out, c.m, c.start)
		return
	}
}

// outcomeRetry is attempt's word for "nothing was written, try another
// node".
const outcomeRetry = "retry"

// retryAfter collects the waits of the nodes that refused a chat: how long
// each expects to stay full (its queue over the rate it drains) or what its
// model's upstream asked for. A client refused by all of them can come back
// when the first has room, so the soonest counts; a node that said nothing
// is no evidence either way.
type retryAfter struct{ soonest time.Duration }

func (r *retryAfter) note(wait time.Duration) {
	if wait > 0 && (r.soonest == 0 || wait < r.soonest) {
		r.soonest = wait
	}
}

// verdictOf is the verdict on a chat whose context ended with cause: a
// layout that failed or ran past the chat's time limit failed it; a client
// that went away, an abort or the node shutting down say nothing about it.
func verdictOf(cause error) actors.Verdict {
	if errors.Is(cause, errLayoutFailed) || errors.Is(cause, errChatTimeout) {
		return actors.VerdictFailure
	}
	return actors.VerdictNone
}

// attempt runs the chat on one target and returns its outcome, and for a
// retry how long the node asked to wait. A failed layout ends the chat,
// while a node gone ends only this attempt, which may then be retried
// elsewhere.
func (c *chat) attempt(target Target) (outcome string, wait time.Duration) {
	c.target, c.actx, c.sent, c.last, c.verdict = target, c.ctx, time.Time{}, time.Time{}, actors.VerdictNone
	defer func() {
		if !c.handedOff {
			c.endAttempt(outcome)
		}
	}()
	st := c.out.state()
	if l := target.Local; l != nil {
		if target.Admitted {
			c.m.queueWait.Observe(0)
		} else {
			queued := time.Now()
			if err := l.Admission.Acquire(c.ctx); err != nil {
				if errors.Is(err, actors.ErrOverloaded) {
					c.full++
					return outcomeRetry, l.Admission.RetryAfter()
				}
				return outcomeCancelled, 0
			}
			c.admission = l.Admission
			c.m.queueWait.Observe(time.Since(queued).Seconds())
		}
		// Asked once the chat has its place, so that a probe is a chat
		// that runs at once.
		ticket, wait, ok := l.Breaker.Admit()
		if !ok {
			c.circuit.note(wait)
			c.opened++
			return outcomeRetry, 0
		}
		c.ticket = ticket
		c.epoch = l.Epoch()
		c.dest = c.epoch.Entry(l)
		layoutFailures.watch(c.epoch, c)
	} else {
		c.dest = target.Remote
		c.s.metrics.sent.Inc()
		actx, cancelAttempt := context.WithCancelCause(c.ctx)
		c.actx, c.cancelAttempt = actx, cancelAttempt
		c.stopGone = context.AfterFunc(target.Gone, func() { c.abortAttempt(cancelAttempt, errNodeGone) })
		if target.Silent != nil {
			// A chat already streaming from a silent node keeps waiting: the
			// node may only be slow, and Gone ends the wait if it died.
			c.stopSilent = context.AfterFunc(target.Silent, func() {
				if !st.written.Load() {
					c.abortAttempt(cancelAttempt, errNodeGone)
				}
			})
		}
		c.sent = time.Now()
	}
	// Each attempt has a reply of its own: a late Failure of an attempt
	// given up on (its node went silent, say) must not end the next one.
	name := c.req.ChatId
	if len(c.tried) > 0 {
		name += "~" + strconv.Itoa(len(c.tried))
	}
	c.reply = newReply(c.s.system, name, c.s.cfg.Limits.MaxAnswerBytes)
	c.req.ReplyTo = c.reply.pid
	st.node = target.Node
	c.s.system.Root.Send(c.dest, c.req)
	return c.stream()
}

// endAttempt tells the node a chat it did not finish is over, and releases
// what the attempt holds.
func (c *chat) endAttempt(outcome string) {
	if c.dest != nil && outcome != outcomeCompleted && outcome != outcomeFailed {
		c.s.system.Root.Send(c.dest, &actors.Cancel{ChatId: c.req.ChatId, Reason: outcome})
	}
	if c.reply != nil {
		c.reply.Close()
	}
	if c.stopSilent != nil {
		c.stopSilent()
	}
	if c.stopGone != nil {
		c.stopGone()
	}
	if c.cancelAttempt != nil {
		c.cancelAttempt(nil)
	}
	if c.epoch != nil {
		layoutFailures.unwatch(c.epoch, c)
	}
	c.ticket.Done(c.verdict)
	if c.admission != nil {
		c.admission.Release()
	}
	c.dest, c.reply, c.stopSilent, c.stopGone, c.cancelAttempt, c.epoch, c.admission = nil, nil, nil, nil, nil, nil, nil
	c.ticket = actors.BreakerTicket{}
	if c.target.Done != nil {
		c.target.Done()
	}
}

// stream copies the chat's answer from its reply to the client until the
// terminal message or the end of the attempt's context, and returns the
// chat's outcome, and for a retry how long the model asked to wait. Once
// the answer has streamed for handOffAfter, it hands the chat off (see
// handOff) if it can, and returns.
func (c *chat) stream() (string, time.Duration) {
	st := c.out.state()
	for {
		batch, err := c.reply.Receive(c.actx)
		if err != nil {
			cause := context.Cause(c.actx)
			if errors.Is(cause, errNodeGone) && !st.started {
				return outcomeRetry, 0
			}
			c.verdict = verdictOf(cause)
			return interrupted(c.out, cause), 0
		}
		if outcome, wait, done := c.handle(batch); done {
			return outcome, wait
		}
		c.out.flush()
		if c.handOff() {
			return "", 0
		}
	}
}

// handle writes a batch of the chat's answer and reports whether the chat
// ended with it, and how.
func (c *chat) handle(batch []any) (outcome string, wait time.Duration, done bool) {
	out, m := c.out, c.m
	st := out.state()
	for _, msg := range batch {
		switch msg := msg.(type) {
		case *actors.Begin:
			if !c.sent.IsZero() {
				c.s.metrics.dispatch.Observe(time.Since(c.sent).Seconds())
			}
		case *actors.Chunk:
			now := time.Now()
			if c.last.IsZero() {
				m.firstChunk.Observe(now.Sub(c.start).Seconds())
			} else {
				m.chunkGap.Observe(now.Sub(c.last).Seconds())
			}
			c.last = now
			if msg.ToolCalls != "" {
				out.toolCalls(msg.ToolCalls)
			} else {
				out.text(msg.Text)
			}
			if st.room.cut {
				// Ending the attempt cancels the generation.
				out.cut()
				return outcomeCut, 0, true
			}
		case *actors.End:
			c.verdict = actors.VerdictSuccess
			m.promptTokens.Add(float64(msg.PromptTokens))
			m.completionTokens.Add(float64(msg.CompletionTokens))
			out.end(msg)
			return outcomeCompleted, 0, true
		case *actors.Failure:
			wait := time.Duration(msg.RetryAfterMs) * time.Millisecond
			if msg.Code == actors.Code_CODE_OVERLOADED && !st.started {
				c.full++
				return outcomeRetry, wait, true
			}
			if msg.Code == actors.Code_CODE_CIRCUIT_OPEN && !st.started {
				// Its breaker opened before this node heard.
				c.circuit.note(wait)
				c.opened++
				return outcomeRetry, 0, true
			}
			c.verdict = actors.VerdictOf(msg.Code)
			if c.reachedTimeLimit(msg) {
				out.fail(http.StatusGatewayTimeout, errChatTimeout.Error())
				return outcomeTimedOut, 0, true
			}
			c.s.logger.Warn("chat failed", "chat", st.chatID, "layout", c.req.Layout, "reason", msg.Reason)
			out.fail(statusFor(msg.Code), msg.Reason)
			return outcomeFailed, 0, true
		}
	}
	return "", 0, false
}

// handOff takes the connection of a chat whose answer has streamed for a
// while over from net/http, so that the handler returns and net/http frees
// what it holds for the request, and has the reply call for a pump when
// there is something to write or the chat's context ends. No goroutine
// waits for a taken-over stream: a pump runs while there is something to
// write. It reports whether it did.
func (c *chat) handOff() bool {
	// Only an answer whose head went out, through net/http: from then on
	// the chat runs here to its end, never on another node.
	st := c.out.state()
	w := st.conn
	if c.handedOff || w == nil || !st.started || time.Since(c.start) < handOffAfter {
		return false
	}
	if !w.takeOver(func() { c.abort(errClientGone) }) {
		return false
	}
	// net/http ends the request's context when the handler returns: from
	// now on the connection itself says when the client goes away.
	c.client()
	c.client = nil
	c.handedOff = true
	// Whatever ends the chat's context calls for a pump once pushing is
	// set (see abort); one that came before is seen here.
	c.pushing.Store(true)
	if c.reply.pushTo(c.wake) || c.actx.Err() != nil {
		c.wake()
	}
	return true
}

// abortAttempt ends the attempt's context with a cause, like abort.
func (c *chat) abortAttempt(cancel context.CancelCauseFunc, cause error) {
	cancel(cause)
	if c.pushing.Load() {
		c.wake()
	}
}

// wake calls for a pump of a handed-off chat: a goroutine that writes what
// its reply holds, then ends.
func (c *chat) wake() {
	if c.wakes.Add(1) == 1 {
		go c.pump()
	}
}

// pump writes what the reply holds, as long as wakes come in while it
// does; it ends the chat when its answer is complete or its context ends.
// One pump runs at a time: a wake that comes while one runs only makes it
// look again.
func (c *chat) pump() {
	if c.over.Load() {
		return
	}
	for {
		n := c.wakes.Load()
		if outcome, done := c.drain(); done {
			c.over.Store(true)
			c.endHandedOff(outcome)
			return // wakes stay above zero: no pump starts again
		}
		if c.wakes.CompareAndSwap(n, 0) {
			return
		}
	}
}

// drain writes every message queued, and reports whether the chat ended,
// and how: with its terminal message, or with its context, once nothing is
// left to write (as Receive returns what is queued before the context's
// end).
func (c *chat) drain() (string, bool) {
	for {
		batch := c.reply.take()
		if len(batch) == 0 {
			break
		}
		if outcome, _, done := c.handle(batch); done {
			return outcome, true
		}
	}
	if c.actx.Err() != nil {
		cause := context.Cause(c.actx)
		c.verdict = verdictOf(cause)
		return interrupted(c.out, cause), true
	}
	c.out.flush()
	return "", false
}

// endHandedOff ends a handed-off chat: the attempt, the chat, then the HTTP
// response, whose connection goes back to the HTTP server for the
// client's next request.
func (c *chat) endHandedOff(outcome string) {
	c.endAttempt(outcome)
	c.s.record(c.req, outcome, c.out, c.m, c.start)
	c.end()
	c.out.state().conn.finish(outcome != outcomeCancelled)
}

func (s *Server) record(req *actors.ChatRequest, outcome string, out answer, m *chatMetrics, start time.Time) {
	runes := out.state().runes
	if outcome == outcomeCompleted {
		m.completed.Inc()
		elapsed := time.Since(start).Seconds()
		m.duration.Observe(elapsed)
		m.outputChars.Observe(float64(runes))
		if elapsed > 0 {
			m.outputSpeed.Observe(float64(runes) / elapsed)
		}
	} else {
		s.metrics.chats.WithLabelValues(req.Layout, outcome).Inc()
		s.countLimitOutcome(outcome)
	}
	// Checked first because building the arguments costs allocations
	// even when the line is dropped.
	if s.logger.Enabled(context.Background(), slog.LevelDebug) {
		s.logger.Debug("chat done", "chat", req.ChatId, "layout", req.Layout, "outcome", outcome, "runes", runes)
	}
}
