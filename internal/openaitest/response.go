package openaitest

import (
	"fmt"
	"time"
)

// Dialect is whose bytes the server imitates. The servers agree on the
// shapes the official SDKs decode and differ in what else they send: key
// order, extra fields, where the last delta and the usage travel, how a
// failure mid-stream looks, and how their JSON library escapes text.
type Dialect int

const (
	// SameDialect, the zero value, in a Response means the server's
	// dialect (see Server.SetDialect), which is OpenAI unless set.
	SameDialect Dialect = iota
	// OpenAI is api.openai.com as of 2025: chunks carry service_tier,
	// system_fingerprint, "refusal":null in the opening delta, "usage":null
	// on every chunk when usage was asked for, and a random "obfuscation"
	// string unless the request set stream_options.include_obfuscation to
	// false. The finish chunk has an empty delta. Non-streaming bodies and
	// errors are indented JSON (2 and 4 spaces) ending in a newline. A
	// failure mid-stream is one data: {"error":{...}} event, then the body
	// ends without [DONE].
	OpenAI
	// VLLM is vLLM's OpenAI-compatible server (pydantic output): the last
	// delta rides on the finish chunk together with "stop_reason":null, the
	// usage is ordered prompt, total, completion, and a failure mid-stream
	// is a data: {"error": {...}} event written by Python's json.dumps
	// (spaced, non-ASCII escaped), followed by data: [DONE].
	VLLM
	// LlamaCpp is llama.cpp's llama-server: keys in insertion order
	// starting with "choices", a build-number system_fingerprint, an
	// opening delta with "content":null, and "timings" on the last chunk.
	// Errors are {"error":{"code":N,"message":...,"type":...}}; a failure
	// mid-stream is one data: event of that shape and no [DONE].
	LlamaCpp
	// Ollama is Ollama's /v1 layer (Go encoding/json, so '<', '>' and '&'
	// arrive as \u003c, \u003e and \u0026): no separate role chunk, every
	// delta repeats "role":"assistant", tool calls arrive whole in one
	// chunk, the finish chunk has "content":"", and non-streaming bodies
	// end in a newline. It has no error event: a failure mid-stream comes
	// out of its middleware as an ordinary empty chunk (with "model":"")
	// and the body ends without [DONE].
	Ollama
)

func (d Dialect) String() string {
	switch d {
	case SameDialect:
		return "same"
	case OpenAI:
		return "openai"
	case VLLM:
		return "vllm"
	case LlamaCpp:
		return "llama.cpp"
	case Ollama:
		return "ollama"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// Usage is a token count. TotalTokens is always the sum of the two.
type Usage struct {
	PromptTokens     int
	CompletionTokens int
}

// ToolCall is one function call the model makes.
type ToolCall struct {
	// ID is the call's id; "" gives one of the dialect's form (OpenAI
	// "call_" and 24 letters and digits, vLLM "chatcmpl-tool-" and 32 hex
	// digits, llama.cpp 32 letters and digits, Ollama "call_" and 8).
	ID string
	// Name is the function's name.
	Name string
	// Arguments is the JSON text of the arguments, cut into the pieces
	// that are streamed one per chunk after a chunk with the id and name
	// (Ollama sends the call whole in one chunk). Non-streaming answers
	// join them.
	Arguments []string
}

// APIError is the body of an error answer or of an error event.
type APIError struct {
	// Message is the error message; "" gives the dialect's usual text for
	// the status.
	Message string
	// Type is the error type; "" gives the dialect's type for the status
	// (OpenAI invalid_request_error, requests (429), server_error (5xx);
	// vLLM BadRequestError, NotFoundError, InternalServerError...;
	// llama.cpp invalid_request_error, authentication_error,
	// not_found_error, server_error...; Ollama invalid_request_error,
	// not_found_error, api_error).
	Type string
	// Param is the offending parameter; "" sends null. llama.cpp has no
	// param field.
	Param string
	// Code is sent as it is (a string, a number or nil). nil gives the
	// dialect's default: OpenAI "rate_limit_exceeded" for 429 and
	// "invalid_api_key" for 401 and null otherwise, the HTTP status for
	// vLLM and llama.cpp, null for Ollama.
	Code any
}

// Response is one scripted answer to a POST /v1/chat/completions. The zero
// value is a 200 answer with no content and finish reason "stop".
type Response struct {
	// Dialect is whose format to answer in; SameDialect is the server's.
	Dialect Dialect
	// Model is the "model" of the answer; "" echoes the request's.
	Model string

	// Status is the HTTP status; 0 is 200, or 500 when Error is set.
	Status int
	// Header is set on the answer after the dialect's own headers, so it
	// can replace them (Content-Type) or add some (Retry-After).
	Header map[string]string
	// Error makes the answer an error body with Status (default 500). A
	// Status of 400 or more without Error sends the dialect's usual error
	// for that status.
	Error *APIError

	// Chunks are the content deltas, one per chunk when the request has
	// "stream":true, joined into one message otherwise.
	Chunks []string
	// ToolCalls are function calls, streamed after the content.
	ToolCalls []ToolCall
	// FinishReason is the finish_reason; "" is "stop", or "tool_calls"
	// when there are ToolCalls.
	FinishReason string
	// Usage is the token count, sent in its own chunk with "choices":[]
	// after the finish chunk only when the request set
	// stream_options.include_usage, and always in non-streaming answers.
	// nil counts a token per chunk and argument piece, and a token per
	// four characters of the request's messages plus three per message.
	Usage *Usage

	// FirstDelay is waited before the first chunk (a slow first token),
	// after the headers; a non-streaming or error answer waits it before
	// the status line.
	FirstDelay time.Duration
	// Delay is waited before every later chunk; a non-streaming answer
	// waits it once per chunk and argument piece. Waits end early when
	// the client goes away.
	Delay time.Duration
	// Comments writes a ": keep-alive" comment line (and the blank line
	// that ends it) before every event, as proxies and some servers do.
	Comments bool
	// SplitEvents writes every event in several pieces, flushing each: cut
	// in "data:", in the middle of the JSON (inside a multi-byte UTF-8
	// character when there is one) and between the two newlines that end
	// the event, so a client's reads end mid-event.
	SplitEvents bool

	// StreamError, when set, ends a stream with this error event once
	// ErrorAfter pieces (Chunks and tool-call argument pieces) are sent:
	// 0 is right after the opening role chunk (before any chunk for
	// Ollama, which has none); ErrorAfter at or beyond the number of
	// pieces puts the error where the finish chunk would be. What follows
	// the event depends on the dialect (see Dialect). A non-streaming
	// request gets it as an error body with status 500 (or Status).
	StreamError *APIError
	// ErrorAfter is the number of pieces sent before StreamError
	// (negative is 0).
	ErrorAfter int

	// Hang, when set, stops sending once HangAfter pieces are sent (counted
	// as for ErrorAfter) and holds the connection open until the client
	// goes away or the server closes. HangAfter -1 (BeforeHeaders) hangs
	// before the status line; a non-streaming request always hangs there.
	Hang bool
	// HangAfter is the number of pieces sent before hanging.
	HangAfter int

	// NoDone ends the stream without "data: [DONE]", as some servers do
	// (and as OpenAI, llama.cpp and Ollama do after a failure).
	NoDone bool
}

// BeforeHeaders as HangAfter makes the server hang before it sends the
// status line and headers.
const BeforeHeaders = -1

// Default is the answer when the script is empty: a short streamed answer
// "Hello from the fake upstream." in six chunks. Do not modify it.
var Default = Response{Chunks: []string{"Hello", " from", " the", " fake", " upstream", "."}}
