package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

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
	name := r.PostForm.Get("name")
	layout, name := s.layoutFor(name)
	if layout == nil {
		s.badRequest(w, http.StatusNotFound, "name", fmt.Sprintf("This worker does not serve an LLM named %q.", r.PostForm.Get("name")))
		return
	}
	req := &actors.ChatRequest{ChatId: s.newChatID(), Layout: name, History: history}
	if err := applyModelfile(r.PostForm.Get("modelfile"), req); err != nil {
		s.badRequest(w, http.StatusBadRequest, "modelfile", capitalize(err.Error())+".")
		return
	}
	s.serveChat(w, r, layout, req, slot)
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
	for _, l := range s.cfg.Layouts {
		if n < l.Admission.Capacity() {
			return true
		}
	}
	return false
}

// layoutFor picks the layout for an LLM name. A node with one layout serves
// it whatever the name, as the original worker did.
func (s *Server) layoutFor(name string) (*actors.Layout, string) {
	if l, ok := s.cfg.Layouts[name]; ok {
		return l, name
	}
	if len(s.cfg.Layouts) == 1 {
		for n, l := range s.cfg.Layouts {
			return l, n
		}
	}
	return nil, ""
}

var (
	errLayoutFailed = errors.New("the layout failed")
	errChatTimeout  = errors.New("the chat ran past its time limit")
)

// serveChat runs one chat on a layout and streams its answer. It is the
// chat's owner: whatever happens in the actors, it answers exactly once.
func (s *Server) serveChat(w http.ResponseWriter, r *http.Request, layout *actors.Layout, req *actors.ChatRequest, slot string) {
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	if !s.track(req.ChatId, slot, cancel) {
		s.reject(w, req.Layout, http.StatusServiceUnavailable, "This worker is shutting down; please try again.")
		return
	}
	defer s.untrack(req.ChatId)

	queued := time.Now()
	if err := layout.Admission.Acquire(ctx); err != nil {
		if errors.Is(err, actors.ErrOverloaded) {
			s.reject(w, req.Layout, http.StatusTooManyRequests, "Too many chats at once; please try again shortly.")
			return
		}
		s.metrics.chats.WithLabelValues(req.Layout, outcomeCancelled).Inc()
		return
	}
	defer layout.Admission.Release()
	start := time.Now()
	s.metrics.queueWait.WithLabelValues(req.Layout).Observe(start.Sub(queued).Seconds())

	deadline := start.Add(s.cfg.ChatTimeout)
	ctx, stopDeadline := context.WithDeadlineCause(ctx, deadline, errChatTimeout)
	defer stopDeadline()
	stopEpochWatch := context.AfterFunc(layout.Epoch().Context(), func() { cancel(errLayoutFailed) })
	defer stopEpochWatch()

	reply := actors.NewReply(s.system, req.ChatId)
	defer reply.Close()
	req.ReplyTo = reply.PID()
	req.DeadlineUnixNano = deadline.UnixNano()
	s.system.Root.Send(layout.Root, req)

	out := &chatWriter{w: w, flusher: flusherOf(w), chatID: req.ChatId}
	outcome := s.stream(ctx, reply, out, req.Layout, start)
	if outcome != outcomeCompleted && outcome != outcomeFailed {
		s.system.Root.Send(layout.Root, &actors.Cancel{ChatId: req.ChatId, Reason: outcome})
	}
	s.metrics.chats.WithLabelValues(req.Layout, outcome).Inc()
	if outcome == outcomeCompleted {
		elapsed := time.Since(start).Seconds()
		s.metrics.duration.WithLabelValues(req.Layout).Observe(elapsed)
		s.metrics.outputChars.WithLabelValues(req.Layout).Observe(float64(out.runes))
		if elapsed > 0 {
			s.metrics.outputSpeed.WithLabelValues(req.Layout).Observe(float64(out.runes) / elapsed)
		}
	}
	s.logger.Debug("chat done", "chat", req.ChatId, "layout", req.Layout, "outcome", outcome, "runes", out.runes)
}

// stream copies a chat's answer from its reply to the client until the
// terminal message or the end of ctx, and returns the chat's outcome.
func (s *Server) stream(ctx context.Context, reply *actors.Reply, out *chatWriter, layout string, start time.Time) string {
	firstChunk := s.metrics.firstChunk.WithLabelValues(layout)
	chunkGap := s.metrics.chunkGap.WithLabelValues(layout)
	var last time.Time
	for {
		batch, err := reply.Receive(ctx)
		if err != nil {
			return out.interrupted(context.Cause(ctx))
		}
		for _, msg := range batch {
			switch msg := msg.(type) {
			case *actors.Chunk:
				now := time.Now()
				if last.IsZero() {
					firstChunk.Observe(now.Sub(start).Seconds())
				} else {
					chunkGap.Observe(now.Sub(last).Seconds())
				}
				last = now
				out.write(msg.Text)
			case *actors.End:
				out.start(http.StatusOK)
				return outcomeCompleted
			case *actors.Failure:
				s.logger.Warn("chat failed", "chat", out.chatID, "layout", layout, "reason", msg.Reason)
				out.fail(statusFor(msg.Code), msg.Reason)
				return outcomeFailed
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
	default:
		return http.StatusInternalServerError
	}
}

// chatWriter writes one chat's answer. Its status is sent with the first
// chunk, so that a chat that fails before any output gets an error status,
// while one that fails later ends its body with a short note instead.
type chatWriter struct {
	w       http.ResponseWriter
	flusher http.Flusher
	chatID  string
	started bool
	runes   int
}

func flusherOf(w http.ResponseWriter) http.Flusher {
	f, _ := w.(http.Flusher)
	return f
}

func (c *chatWriter) start(status int) {
	if c.started {
		return
	}
	c.started = true
	h := c.w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Accel-Buffering", "no")
	h.Set("X-Chat-Id", c.chatID)
	c.w.WriteHeader(status)
}

func (c *chatWriter) write(text string) {
	c.start(http.StatusOK)
	c.runes += utf8.RuneCountInString(text)
	_, _ = c.w.Write([]byte(text))
}

func (c *chatWriter) flush() {
	if c.started && c.flusher != nil {
		c.flusher.Flush()
	}
}

func (c *chatWriter) fail(status int, reason string) {
	if !c.started {
		c.start(status)
		_, _ = fmt.Fprintf(c.w, "Error: %s.\n", reason)
		return
	}
	_, _ = fmt.Fprintf(c.w, "\n\n[Error: %s.]\n", reason)
}

// interrupted ends the answer of a chat whose context ended and returns the
// outcome that names why.
func (c *chatWriter) interrupted(cause error) string {
	switch {
	case errors.Is(cause, errAborted):
		c.start(http.StatusOK)
		return outcomeAborted
	case errors.Is(cause, errChatTimeout):
		c.fail(http.StatusGatewayTimeout, cause.Error())
		return outcomeTimedOut
	case errors.Is(cause, errLayoutFailed), errors.Is(cause, errShutdown):
		c.fail(http.StatusServiceUnavailable, cause.Error())
		return outcomeFailed
	default: // the client went away; nobody is left to read an answer
		return outcomeCancelled
	}
}

// reject answers a chat that never reached a layout.
func (s *Server) reject(w http.ResponseWriter, layout string, status int, msg string) {
	s.metrics.chats.WithLabelValues(layout, outcomeRejected).Inc()
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "1")
	}
	http.Error(w, msg, status)
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
