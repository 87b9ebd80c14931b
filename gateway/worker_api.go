package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/julienschmidt/httprouter"

	"github.com/troupe-llm/troupe/actors"
)

// handleChat serves the Agent's chat endpoint: a form with the history in
// "input", answered with the model's output streamed as plain text.
func (s *Server) handleChat(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	slot := ps.ByName("slot")
	if slot != "" && !s.validSlot(slot) {
		http.NotFound(w, r)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxInputBytes)
	if err := parseForm(r); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.badRequest(w, http.StatusRequestEntityTooLarge, "too_large",
				fmt.Sprintf("The chat is too long: at most %d bytes are accepted.", s.cfg.MaxInputBytes))
			return
		}
		s.badRequest(w, http.StatusBadRequest, "form", "The request is not a valid form: "+err.Error())
		return
	}
	history, err := parseHistory(r.PostForm.Get("input"))
	if err != nil {
		s.badRequest(w, http.StatusBadRequest, "input", capitalize(err.Error())+".")
		return
	}
	name, ok := s.layoutFor(r.PostForm.Get("name"))
	if !ok {
		s.badRequest(w, http.StatusNotFound, "name", fmt.Sprintf("This worker does not serve an LLM named %q.", r.PostForm.Get("name")))
		return
	}
	req := &actors.ChatRequest{ChatId: s.newChatID(), Layout: name, History: history}
	if err := applyModelfile(r.PostForm.Get("modelfile"), req); err != nil {
		s.badRequest(w, http.StatusBadRequest, "modelfile", capitalize(err.Error())+".")
		return
	}
	var key string
	if hid, uid := r.PostForm.Get("history_id"), r.PostForm.Get("user_id"); hid != "" || uid != "" {
		key = hid + "\x00" + uid
	}
	s.serveChat(r, req, key, slot, newTextAnswer(w, req.ChatId))
}

func parseForm(r *http.Request) error {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if ct == "multipart/form-data" {
		return r.ParseMultipartForm(1 << 20)
	}
	return r.ParseForm()
}

func (s *Server) validSlot(slot string) bool {
	n, err := strconv.Atoi(slot)
	if err != nil || n < 1 || strconv.Itoa(n) != slot {
		return false
	}
	for _, l := range s.layouts.Map() {
		if n < l.Admission.Capacity() {
			return true
		}
	}
	return false
}

// layoutFor picks the layout for an LLM name: one this node or another
// serves. A node with one layout takes any name for it, as the original
// worker did, because older Agents do not forward the name.
func (s *Server) layoutFor(name string) (string, bool) {
	if _, ok := s.layouts.Get(name); ok {
		return name, true
	}
	if name != "" && s.cfg.Router.Serves(name) {
		return name, true
	}
	if layouts := s.layouts.Map(); len(layouts) == 1 {
		for n := range layouts {
			return n, true
		}
	}
	return "", false
}

var (
	errLayoutFailed = errors.New("the layout failed")
	errNodeGone     = errors.New("the node running this chat went away")
	errChatTimeout  = errors.New("the chat ran past its time limit")
)

// serveChat runs one chat and streams its answer. It is the chat's owner:
// whatever happens in the actors or to other nodes, it answers exactly once.
// A chat that has written nothing yet is tried on another node when its node
// is full or goes away.
func (s *Server) serveChat(r *http.Request, req *actors.ChatRequest, key, slot string, out answer) {
	// One context carries every reason to stop the chat, each as its
	// cause: the client going away, an abort or drain, the time limit, the
	// layout failing. Nothing reads its deadline, so a timer that cancels it
	// does the time limit with fewer allocations than a deadline context.
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	if !s.track(req.ChatId, slot, cancel) {
		s.reject(out, req.Layout, http.StatusServiceUnavailable, "This worker is shutting down; please try again.", 0)
		return
	}
	defer s.untrack(req.ChatId)
	start := time.Now()
	req.DeadlineUnixNano = start.Add(s.cfg.ChatTimeout).UnixNano()
	timeout := time.AfterFunc(s.cfg.ChatTimeout, func() { cancel(errChatTimeout) })
	defer timeout.Stop()

	m := s.chatMetrics(req.Layout)
	var tried []string
	// When every node refused, the client is told to come back when the
	// first of them expects room: it is routed to that one then.
	var retry retryAfter
	for {
		target, err := s.cfg.Router.Route(req.Layout, key, tried)
		var w interface{ RetryAfter() time.Duration }
		if errors.As(err, &w) {
			retry.note(w.RetryAfter())
		}
		switch {
		case errors.Is(err, actors.ErrOverloaded), err != nil && len(tried) > 0:
			// Every node that could take it is full, refused or went away.
			s.reject(out, req.Layout, http.StatusTooManyRequests, "Too many chats at once; please try again shortly.", retry.soonest)
			return
		case err != nil:
			s.reject(out, req.Layout, http.StatusServiceUnavailable, fmt.Sprintf("%s is unavailable right now (%v); please try again.", req.Layout, err), 0)
			return
		}
		outcome, wait := s.runOn(ctx, cancel, target, req, out, m, start)
		retry.note(wait)
		if outcome == outcomeRetry {
			tried = append(tried, target.Node)
			s.metrics.reroutes.Inc()
			continue
		}
		s.record(req, outcome, out, m, start)
		return
	}
}

// outcomeRetry is runOn's word for "nothing was written, try another node".
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

// runOn runs a chat on one target and returns its outcome, and for a retry
// how long the node asked to wait. ctx and cancel are the chat's own: a
// failed layout ends the chat, while a node gone ends only this attempt,
// which may then be retried elsewhere.
func (s *Server) runOn(ctx context.Context, cancel context.CancelCauseFunc, target Target, req *actors.ChatRequest, out answer, m *chatMetrics, start time.Time) (string, time.Duration) {
	if target.Done != nil {
		defer target.Done()
	}
	var dest *actor.PID
	st := out.state()
	if l := target.Local; l != nil {
		if target.Admitted {
			m.queueWait.Observe(0)
		} else {
			queued := time.Now()
			if err := l.Admission.Acquire(ctx); err != nil {
				if errors.Is(err, actors.ErrOverloaded) {
					return outcomeRetry, l.Admission.RetryAfter()
				}
				return outcomeCancelled, 0
			}
			defer l.Admission.Release()
			m.queueWait.Observe(time.Since(queued).Seconds())
		}
		epoch := l.Epoch()
		dest = epoch.Entry(l)
		defer context.AfterFunc(epoch.Context(), func() { cancel(errLayoutFailed) })()
	} else {
		dest = target.Remote
		s.metrics.sent.Inc()
		var cancelAttempt context.CancelCauseFunc
		ctx, cancelAttempt = context.WithCancelCause(ctx)
		defer cancelAttempt(nil)
		defer context.AfterFunc(target.Gone, func() { cancelAttempt(errNodeGone) })()
		if target.Silent != nil {
			// A chat already streaming from a silent node keeps waiting: the
			// node may only be slow, and Gone ends the wait if it died.
			defer context.AfterFunc(target.Silent, func() {
				if !st.written.Load() {
					cancelAttempt(errNodeGone)
				}
			})()
		}
	}

	reply := actors.NewReply(s.system, req.ChatId)
	defer reply.Close()
	req.ReplyTo = reply.PID()
	st.node = target.Node
	var sent time.Time
	if target.Remote != nil {
		sent = time.Now()
	}
	s.system.Root.Send(dest, req)
	outcome, wait := s.stream(ctx, reply, out, req.Layout, m, start, sent)
	if outcome != outcomeCompleted && outcome != outcomeFailed {
		s.system.Root.Send(dest, &actors.Cancel{ChatId: req.ChatId, Reason: outcome})
	}
	return outcome, wait
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
	}
	// Checked first because building the arguments costs allocations
	// even when the line is dropped.
	if s.logger.Enabled(context.Background(), slog.LevelDebug) {
		s.logger.Debug("chat done", "chat", req.ChatId, "layout", req.Layout, "outcome", outcome, "runes", runes)
	}
}

// stream copies a chat's answer from its reply to the client until the
// terminal message or the end of ctx, and returns the chat's outcome, and
// for a retry how long the model asked to wait. sent is when a chat was sent
// to another node, zero for a local one.
func (s *Server) stream(ctx context.Context, reply *actors.Reply, out answer, layout string, m *chatMetrics, start, sent time.Time) (string, time.Duration) {
	var last time.Time
	st := out.state()
	for {
		batch, err := reply.Receive(ctx)
		if err != nil {
			cause := context.Cause(ctx)
			if errors.Is(cause, errNodeGone) && !st.started {
				return outcomeRetry, 0
			}
			return interrupted(out, cause), 0
		}
		for _, msg := range batch {
			switch msg := msg.(type) {
			case *actors.Begin:
				if !sent.IsZero() {
					s.metrics.dispatch.Observe(time.Since(sent).Seconds())
				}
			case *actors.Chunk:
				now := time.Now()
				if last.IsZero() {
					m.firstChunk.Observe(now.Sub(start).Seconds())
				} else {
					m.chunkGap.Observe(now.Sub(last).Seconds())
				}
				last = now
				if msg.ToolCalls != "" {
					out.toolCalls(msg.ToolCalls)
				} else {
					out.text(msg.Text)
				}
			case *actors.End:
				m.promptTokens.Add(float64(msg.PromptTokens))
				m.completionTokens.Add(float64(msg.CompletionTokens))
				out.end(msg)
				return outcomeCompleted, 0
			case *actors.Failure:
				wait := time.Duration(msg.RetryAfterMs) * time.Millisecond
				if msg.Code == actors.Code_CODE_OVERLOADED && !st.started {
					return outcomeRetry, wait
				}
				s.logger.Warn("chat failed", "chat", st.chatID, "layout", layout, "reason", msg.Reason)
				out.fail(statusFor(msg.Code), msg.Reason)
				return outcomeFailed, 0
			}
		}
		out.flush()
	}
}

func statusFor(code actors.Code) int {
	switch code {
	case actors.Code_CODE_INVALID_ARGUMENT:
		return http.StatusBadRequest
	case actors.Code_CODE_UNAVAILABLE:
		return http.StatusServiceUnavailable
	case actors.Code_CODE_DEADLINE_EXCEEDED:
		return http.StatusGatewayTimeout
	case actors.Code_CODE_OVERLOADED:
		return http.StatusTooManyRequests
	default:
		return http.StatusInternalServerError
	}
}

// reject answers a chat that never reached a layout.
func (s *Server) reject(out answer, layout string, status int, msg string, retryAfter time.Duration) {
	s.metrics.chats.WithLabelValues(layout, outcomeRejected).Inc()
	out.reject(status, msg, retryAfter)
}

func (s *Server) badRequest(w http.ResponseWriter, status int, reason, msg string) {
	s.metrics.badRequests.WithLabelValues(reason).Inc()
	http.Error(w, msg, status)
}

// handleSlotGet serves GET {endpoint}/abort; a GET of a slot's chat URL is
// a mistake.
func (s *Server) handleSlotGet(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	if ps.ByName("slot") != "abort" {
		http.Error(w, "Send chats with POST.", http.StatusMethodNotAllowed)
		return
	}
	s.abort(w, "")
}

// handleSlotAbort serves GET {endpoint}/N/abort.
func (s *Server) handleSlotAbort(w http.ResponseWriter, r *http.Request, ps httprouter.Params) {
	if !s.validSlot(ps.ByName("slot")) {
		http.NotFound(w, r)
		return
	}
	s.abort(w, ps.ByName("slot"))
}

// abort stops the chats the Agent sent through one endpoint slot, as the
// Agent's chat/abort asks, and answers in the original worker's JSON form.
func (s *Server) abort(w http.ResponseWriter, slot string) {
	msg := "No chat to abort."
	if s.abortSlot(slot) > 0 {
		msg = "Aborted."
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"msg": msg})
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	r, size := utf8.DecodeRuneInString(s)
	if r >= 'a' && r <= 'z' {
		return string(r-'a'+'A') + s[size:]
	}
	return s
}
