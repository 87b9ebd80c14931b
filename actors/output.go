package actors

import (
	"context"
	"errors"
	"io"
	"time"
)

// Error is a model's failure as the gateway should act on it: a Code it maps
// to a status (CODE_OVERLOADED lets it try another node, CODE_UNAVAILABLE
// answers 503), a short Reason for the user's chat window, and the raw Err,
// which goes to the log only: an upstream's error text may hold internals a
// user must not see. Models return it from Generate, wrapped or not.
type Error struct {
	Code   Code
	Reason string
	// RetryAfter is how long an overloaded upstream asked callers to wait.
	RetryAfter time.Duration
	Err        error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// failureFor is the Failure a chat gets for a model's error. An error that is
// not an *Error says nothing a user should read, so they get a generic
// sentence; the caller logs the raw text.
func failureFor(chatID string, err error) *Failure {
	var e *Error
	if !errors.As(err, &e) || e.Reason == "" {
		return &Failure{ChatId: chatID, Code: Code_CODE_INTERNAL, Reason: "the model failed"}
	}
	ms := e.RetryAfter.Milliseconds()
	return &Failure{ChatId: chatID, Code: e.Code, Reason: e.Reason, RetryAfterMs: uint32(min(max(ms, 0), 1<<31))}
}

// Output is what a model may send besides text: tool-call deltas, token
// usage and why it stopped. A model host puts one in every generation's
// context; OutputOf finds it. Its methods run on the generation's goroutine
// like emit, and do nothing on a nil Output, so a model also works when
// called outside a host (in a unit test).
type Output struct {
	g *generation
}

type outputKey struct{}

// OutputOf returns the Output of the generation ctx belongs to, or nil.
func OutputOf(ctx context.Context) *Output {
	o, _ := ctx.Value(outputKey{}).(*Output)
	return o
}

// ToolCalls sends a tool_calls delta (a JSON array, as the upstream sent it)
// in order with the text. It returns an error once the chat is cancelled.
func (o *Output) ToolCalls(delta string) error {
	if o == nil || delta == "" {
		return nil
	}
	return o.g.sendToolCalls(delta)
}

// Usage records the token counts the upstream reported; the last call wins.
func (o *Output) Usage(promptTokens, completionTokens int) {
	if o == nil {
		return
	}
	o.g.end.PromptTokens = clampUint32(promptTokens)
	o.g.end.CompletionTokens = clampUint32(completionTokens)
}

// Finish records why the model stopped, in OpenAI's words ("stop",
// "length", "tool_calls", "content_filter").
func (o *Output) Finish(reason string) {
	if o != nil {
		o.g.end.FinishReason = reason
	}
}

func clampUint32(n int) uint32 {
	return uint32(min(max(n, 0), 1<<32-1))
}

// CloseInstance releases what a model or filter instance holds, when its kind
// implements io.Closer (an HTTP client's connections, a process). Hosts call
// it when an instance is replaced or stopped; the layout compiler calls it on
// the instances it builds only to check arguments.
func CloseInstance(v any) {
	if c, ok := v.(io.Closer); ok {
		_ = c.Close()
	}
}
