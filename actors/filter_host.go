package actors

import (
	"github.com/asynkron/protoactor-go/actor"
)

// ingressHost is the actor that runs a Filter over each chat's history on
// the way to the model. It keeps no per-chat state.
type ingressHost struct {
	filter Filter
	next   *actor.PID
}

func (h *ingressHost) Receive(c actor.Context) {
	switch msg := c.Message().(type) {
	case *ChatRequest:
		history, err := h.filter.MapHistory(msg.History)
		if err != nil {
			c.Send(msg.ReplyTo, &Failure{ChatId: msg.ChatId, Code: Code_CODE_INVALID_ARGUMENT, Reason: err.Error(), ReplyTo: msg.ReplyTo})
			return
		}
		msg.History = history
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
	next    *actor.PID // the next egress filter, or nil for the chat's reply
	streams map[string]Stream
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
			h.streams = map[string]Stream{}
		}
		h.streams[msg.ChatId] = h.filter.NewStream()
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
		if out := s.Write(msg.Text); out != "" {
			msg.Text = out
			c.Send(h.to(msg.ReplyTo), msg)
		}
	case *End:
		s, ok := h.streams[msg.ChatId]
		if !ok {
			h.lost(c, msg.ChatId, msg.ReplyTo)
			return
		}
		delete(h.streams, msg.ChatId)
		if out := s.Flush(); out != "" {
			c.Send(h.to(msg.ReplyTo), &Chunk{ChatId: msg.ChatId, Text: out, ReplyTo: msg.ReplyTo})
		}
		c.Send(h.to(msg.ReplyTo), msg)
	case *Failure:
		delete(h.streams, msg.ChatId)
		c.Send(h.to(msg.ReplyTo), msg)
	}
}

// lost fails a chat this instance has no stream for: its stream state died
// with a previous instance, and going on would corrupt the output. The
// Failure goes down the chain so later filters drop their state too.
func (h *egressHost) lost(c actor.Context, chatID string, replyTo *actor.PID) {
	c.Send(h.to(replyTo), &Failure{ChatId: chatID, Code: Code_CODE_INTERNAL, Reason: "an output filter was restarted mid-answer", ReplyTo: replyTo})
}
