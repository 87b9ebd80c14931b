package actors

import "github.com/asynkron/protoactor-go/actor"

// ChatMessage is what every message about one chat has: its id and the
// address that receives its answer. The supervisor uses it to fail the chat
// whose message an actor dropped by panicking.
type ChatMessage interface {
	GetChatId() string
	GetReplyTo() *actor.PID
}

var (
	_ ChatMessage = (*ChatRequest)(nil)
	_ ChatMessage = (*Begin)(nil)
	_ ChatMessage = (*Chunk)(nil)
	_ ChatMessage = (*End)(nil)
	_ ChatMessage = (*Failure)(nil)
)

// LastUserMessage returns the content of the newest user message of a
// history, or "" when there is none.
func LastUserMessage(history []*Message) string {
	for i := len(history) - 1; i >= 0; i-- {
		if history[i].GetRole() == Role_ROLE_USER {
			return history[i].GetContent()
		}
	}
	return ""
}
