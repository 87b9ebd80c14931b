package actors

import (
	"time"

	"github.com/asynkron/protoactor-go/actor"
)

// ingressHost is the actor that runs a Filter over each chat's history on
// the way to the model. It keeps no per-chat state.
type ingressHost struct {
	filter Filter
	next   *actor.PID // the next ingress filter, or the pipeline's core
	out    *actor.PID // where the pipeline's output goes, for a rejected chat; nil: the request says
	am     *actorMetrics
}

func (h *ingressHost) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *ChatRequest:
		history, err := h.filter.MapHistory(msg.History)
		if err != nil {
			c.Send(outputOf(msg, h.out), &Failure{ChatId: msg.ChatId, Code: Code_CODE_INVALID_ARGUMENT, Reason: err.Error(), ReplyTo: msg.ReplyTo})
			return
		}
		msg.History = history
		pass(h.am, msg)
		c.Send(h.next, msg)
	case *Cancel:
		// Cancel follows its chat's request down the same path, so it never
		// overtakes it.
		c.Send(h.next, msg)
	}
}

// egressHost is the actor that runs a Filter over each chat's output stream.
// It keeps one Stream per chat between Begin and End or Failure.
type egressHost struct {
	filter  Filter
	next    *actor.PID // the next egress filter, the pipeline, or nil for the chat's reply
	am      *actorMetrics
	streams map[string]*egressStream
	// failed holds the chats this instance failed because their stream
	// died with a previous one, until their End or Failure comes: what
	// else comes for them is dropped, so each is failed once.
	failed map[string]struct{}
}

// egressStream is one chat's stream state, and when its first text came in
// while nothing has gone out yet: what the filter holds back at the start
// is its share of the time to first chunk.
type egressStream struct {
	Stream
	firstIn int64
	started bool
}

func (h *egressHost) to(replyTo *actor.PID) *actor.PID {
	if h.next != nil {
		return h.next
	}
	return replyTo
}

func (h *egressHost) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *Begin:
		if h.streams == nil {
			h.streams = map[string]*egressStream{}
		}
		h.streams[msg.ChatId] = &egressStream{Stream: h.filter.NewStream()}
		c.Send(h.to(msg.ReplyTo), msg)
	case *Chunk:
		s, ok := h.streams[msg.ChatId]
		if !ok {
			h.lost(c, msg.ChatId, msg.ReplyTo)
			return
		}
		if msg.ToolCalls != "" {
			// Filters map text; a tool call goes to the client as the
			// model sent it.
			c.Send(h.to(msg.ReplyTo), msg)
			return
		}
		if s.firstIn == 0 {
			s.firstIn = time.Now().UnixNano()
		}
		if out := s.Write(msg.Text); out != "" {
			h.started(s)
			msg.Text = out
			c.Send(h.to(msg.ReplyTo), msg)
		}
	case *End:
		s, ok := h.streams[msg.ChatId]
		if !ok {
			h.lost(c, msg.ChatId, msg.ReplyTo)
			delete(h.failed, msg.ChatId)
			return
		}
		delete(h.streams, msg.ChatId)
		if out := s.Flush(); out != "" {
			h.started(s)
			c.Send(h.to(msg.ReplyTo), &Chunk{ChatId: msg.ChatId, Text: out, ReplyTo: msg.ReplyTo})
		}
		c.Send(h.to(msg.ReplyTo), msg)
	case *Failure:
		if _, failed := h.failed[msg.ChatId]; failed {
			delete(h.failed, msg.ChatId)
			return
		}
		delete(h.streams, msg.ChatId)
		c.Send(h.to(msg.ReplyTo), msg)
	}
}

func (h *egressHost) started(s *egressStream) {
	if s.started {
		return
	}
	s.started = true
	if h.am != nil {
		h.am.firstChunk.Observe(float64(time.Now().UnixNano()-s.firstIn) / 1e9)
	}
}

// lost fails a chat this instance has no stream for: its stream state died
// with a previous instance, and going on would corrupt the output. The
// Failure goes down the chain so later filters drop their state too.
func (h *egressHost) lost(c actor.Context, chatID string, replyTo *actor.PID) {
	if _, failed := h.failed[chatID]; failed {
		return
	}
	if h.failed == nil {
		h.failed = map[string]struct{}{}
	}
	h.failed[chatID] = struct{}{}
	c.Send(h.to(replyTo), &Failure{ChatId: chatID, Code: Code_CODE_INTERNAL, Reason: "an output filter was restarted mid-answer", ReplyTo: replyTo})
}
