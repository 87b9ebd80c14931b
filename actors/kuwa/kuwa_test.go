package kuwa_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/actors/kuwa"
)

func user(s string) *actors.Message { return &actors.Message{Role: actors.Role_ROLE_USER, Content: s} }
func bot(s string) *actors.Message {
	return &actors.Message{Role: actors.Role_ROLE_ASSISTANT, Content: s}
}
func system(s string) *actors.Message {
	return &actors.Message{Role: actors.Role_ROLE_SYSTEM, Content: s}
}

func chat(history ...*actors.Message) *actors.ChatRequest {
	return &actors.ChatRequest{ChatId: "chat-1", Layout: "taide", History: history}
}

// newModel makes a kuwa model and closes it when the test ends.
func newModel(t *testing.T, args actors.Args) actors.Model {
	t.Helper()
	m, err := kuwa.New(args)
	if err != nil {
		t.Fatalf("New(%v): %v", args, err)
	}
	t.Cleanup(func() { actors.CloseInstance(m) })
	return m
}

// collect runs Generate on the test's goroutine and returns what it
// emitted.
func collect(ctx context.Context, m actors.Model, req *actors.ChatRequest) (string, error) {
	var out strings.Builder
	err := m.Generate(ctx, req, func(s string) error {
		out.WriteString(s)
		return nil
	})
	return out.String(), err
}

// eventually polls cond until it holds or a deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func asKuwaError(t *testing.T, err error) *actors.Error {
	t.Helper()
	var e *actors.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *actors.Error", err, err)
	}
	return e
}

func TestFormSentToTheWorker(t *testing.T) {
	tests := []struct {
		name string
		args actors.Args // besides url
		req  *actors.ChatRequest
		// What the worker read.
		history             []chatRecord
		system              string
		params              map[string]string
		llm, hid, uid       string
		rawInput, modelfile string // "" skips the check
		body                string // the whole form; "" skips the check
	}{
		{
			name:     "one user message",
			req:      chat(user("hi")),
			history:  []chatRecord{{Msg: "hi"}},
			params:   map[string]string{},
			llm:      "taide",
			hid:      "chat-1",
			rawInput: `[{"msg":"hi","isbot":false}]`, modelfile: `[]`,
			body: "input=%5B%7B%22msg%22%3A%22hi%22%2C%22isbot%22%3Afalse%7D%5D&name=taide&history_id=chat-1&user_id=&modelfile=%5B%5D",
		},
		{
			name:    "a conversation marks the model's turns isbot",
			req:     chat(user("hi"), bot("hello"), user("how are you?")),
			history: []chatRecord{{Msg: "hi"}, {Msg: "hello", Bot: true}, {Msg: "how are you?"}},
			params:  map[string]string{},
			llm:     "taide", hid: "chat-1",
			rawInput: `[{"msg":"hi","isbot":false},{"msg":"hello","isbot":true},{"msg":"how are you?","isbot":false}]`,
		},
		{
			name:    "a system message goes into the modelfile",
			req:     chat(system("Be brief."), user("hi")),
			history: []chatRecord{{Msg: "hi"}},
			system:  "Be brief.",
			params:  map[string]string{},
			llm:     "taide", hid: "chat-1",
			modelfile: `[{"name":"system","args":"Be brief."}]`,
		},
		{
			name:    "system messages are joined into one directive",
			req:     chat(system("Be brief."), user("hi"), system("Answer in French.")),
			history: []chatRecord{{Msg: "hi"}},
			system:  "Be brief.\nAnswer in French.",
			params:  map[string]string{},
			llm:     "taide", hid: "chat-1",
		},
		{
			name: "params become parameter directives; history_id and user_id are fields",
			req: &actors.ChatRequest{ChatId: "chat-1", Layout: "taide", History: []*actors.Message{system("S"), user("hi")},
				Params: map[string]string{"temperature": "0.5", "llm_top_p": "0.9", "stop": `["END"]`,
					"seed": "", "history_id": "42", "user_id": "7"}},
			history: []chatRecord{{Msg: "hi"}},
			system:  "S",
			params:  map[string]string{"temperature": "0.5", "llm_top_p": "0.9", "stop": `["END"]`},
			llm:     "taide", hid: "42", uid: "7",
			modelfile: `[{"name":"system","args":"S"},{"name":"parameter","args":"llm_top_p 0.9"},{"name":"parameter","args":"stop [\"END\"]"},{"name":"parameter","args":"temperature 0.5"}]`,
		},
		{
			name:    "the name argument replaces the layout name",
			args:    actors.Args{"name": "Llama-3"},
			req:     chat(user("hi")),
			history: []chatRecord{{Msg: "hi"}},
			params:  map[string]string{},
			llm:     "Llama-3", hid: "chat-1",
		},
		{
			name: "a tool result is read as user input",
			req: chat(user("what is 6*7?"), &actors.Message{Role: actors.Role_ROLE_ASSISTANT, ToolCalls: `[{"id":"1"}]`},
				&actors.Message{Role: actors.Role_ROLE_TOOL, ToolCallId: "1", Content: "42"}),
			history: []chatRecord{{Msg: "what is 6*7?"}, {Msg: "", Bot: true}, {Msg: "42"}},
			params:  map[string]string{},
			llm:     "taide", hid: "chat-1",
		},
		{
			name:    "form escaping keeps every character",
			req:     chat(user("a&b=c + 50% <ok> 中文\n\"q\"")),
			history: []chatRecord{{Msg: "a&b=c + 50% <ok> 中文\n\"q\""}},
			params:  map[string]string{},
			llm:     "taide", hid: "chat-1",
			rawInput: `[{"msg":"a&b=c + 50% <ok> 中文\n\"q\"","isbot":false}]`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newFakeWorker(t)
			args := actors.Args{"url": w.url()}
			for k, v := range tt.args {
				args[k] = v
			}
			out, err := collect(t.Context(), newModel(t, args), tt.req)
			if err != nil || out != "ok" {
				t.Fatalf("Generate = %q, %v; want \"ok\", nil", out, err)
			}
			in := w.chat(0)
			if ct := in.Header.Get("Content-Type"); ct != "application/x-www-form-urlencoded" {
				t.Errorf("Content-Type %q", ct)
			}
			var keys []string
			for pair := range strings.SplitSeq(in.Body, "&") {
				k, _, _ := strings.Cut(pair, "=")
				keys = append(keys, k)
			}
			if want := []string{"input", "name", "history_id", "user_id", "modelfile"}; !reflect.DeepEqual(keys, want) {
				t.Errorf("form fields %v, want %v", keys, want)
			}
			if !reflect.DeepEqual(in.History, tt.history) {
				t.Errorf("history %+v, want %+v", in.History, tt.history)
			}
			if in.System != tt.system {
				t.Errorf("system %q, want %q", in.System, tt.system)
			}
			if !reflect.DeepEqual(in.Params, tt.params) {
				t.Errorf("params %v, want %v", in.Params, tt.params)
			}
			if in.Name != tt.llm || in.HistoryID != tt.hid || in.UserID != tt.uid {
				t.Errorf("name, history_id, user_id = %q, %q, %q; want %q, %q, %q",
					in.Name, in.HistoryID, in.UserID, tt.llm, tt.hid, tt.uid)
			}
			if tt.rawInput != "" && in.Input != tt.rawInput {
				t.Errorf("input\n%s\nwant\n%s", in.Input, tt.rawInput)
			}
			if tt.body != "" && in.Body != tt.body {
				t.Errorf("form\n%s\nwant\n%s", in.Body, tt.body)
			}
			if tt.modelfile != "" && in.Modelfile != tt.modelfile {
				t.Errorf("modelfile\n%s\nwant\n%s", in.Modelfile, tt.modelfile)
			}
		})
	}
}

func TestStreamsEachPieceAsItComes(t *testing.T) {
	tests := []struct {
		name   string
		pieces []string
	}{
		{"ascii", []string{"Hel", "lo, ", "world"}},
		{"a character cut between pieces", []string{"中", "\xe6\x96", "\x87!"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newFakeWorker(t)
			// The worker sends one piece, then waits until the test has
			// seen it: the answer cannot have been buffered to its end.
			seen := make(chan struct{}, len(tt.pieces))
			w.reply = func(ctx context.Context, out *replyStream, _ *chatInput) {
				for _, p := range tt.pieces {
					if out.write(p) != nil {
						return
					}
					select {
					case <-seen:
					case <-ctx.Done():
						return
					}
				}
			}
			m := newModel(t, actors.Args{"url": w.url()})
			var got []string
			err := m.Generate(t.Context(), chat(user("hi")), func(s string) error {
				got = append(got, s)
				seen <- struct{}{}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.pieces) {
				t.Errorf("emitted %q, want %q", got, tt.pieces)
			}
			if _, aborts, _ := w.counts(); aborts != 0 {
				t.Errorf("%d aborts after a complete answer", aborts)
			}
		})
	}
}

func TestErrorStatuses(t *testing.T) {
	// detail is in every body made up here: it must reach Err, for the
	// log, and never Reason, which users read.
	const detail = "Traceback: secret internals"
	answerWith := func(status int, header map[string]string) http.HandlerFunc {
		return func(rw http.ResponseWriter, r *http.Request) {
			for k, v := range header {
				rw.Header().Set(k, v)
			}
			writeJSON(rw, status, map[string]string{"msg": detail})
		}
	}
	refused := func(t *testing.T, _ *fakeWorker) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return "http://" + addr + "/v1/completion"
	}
	tests := []struct {
		name      string
		setup     func(w *fakeWorker)
		url       func(t *testing.T, w *fakeWorker) string
		req       *actors.ChatRequest
		code      actors.Code
		reason    string
		retry     time.Duration
		errHas    string
		answerOut string // for a 200: the text that is the answer
	}{
		{name: "framework busy: 503", setup: func(w *fakeWorker) { w.setBusy(true) },
			code: actors.Code_CODE_OVERLOADED, reason: "busy", errHas: `{"message":"Processing another request"}`},
		{name: "executor busy: 429", setup: func(w *fakeWorker) { w.busyStatus = 429; w.setBusy(true) },
			code: actors.Code_CODE_OVERLOADED, reason: "busy", errHas: "Processing another request."},
		{name: "429 with Retry-After", setup: func(w *fakeWorker) { w.answer = answerWith(429, map[string]string{"Retry-After": "7"}) },
			code: actors.Code_CODE_OVERLOADED, reason: "busy", retry: 7 * time.Second, errHas: detail},
		{name: "503 with Retry-After is overload", setup: func(w *fakeWorker) { w.answer = answerWith(503, map[string]string{"Retry-After": "3"}) },
			code: actors.Code_CODE_OVERLOADED, reason: "busy", retry: 3 * time.Second, errHas: detail},
		{name: "other 503", setup: func(w *fakeWorker) { w.answer = answerWith(503, nil) },
			code: actors.Code_CODE_UNAVAILABLE, reason: "failed", errHas: detail},
		{name: "500", setup: func(w *fakeWorker) { w.answer = answerWith(500, nil) },
			code: actors.Code_CODE_UNAVAILABLE, reason: "failed", errHas: detail},
		{name: "502 from a proxy", setup: func(w *fakeWorker) { w.answer = answerWith(502, nil) },
			code: actors.Code_CODE_UNAVAILABLE, reason: "failed", errHas: detail},
		{name: "400: last message empty", req: chat(user("hi"), bot("hello"), user("")),
			code: actors.Code_CODE_INVALID_ARGUMENT, reason: "rejected the chat", errHas: `{"message":"I didn't see your input!"}`},
		{name: "400: no user message", req: chat(system("only a system prompt")),
			code: actors.Code_CODE_INVALID_ARGUMENT, reason: "rejected the chat", errHas: "I didn't see your input!"},
		{name: "401", setup: func(w *fakeWorker) { w.answer = answerWith(401, nil) },
			code: actors.Code_CODE_INVALID_ARGUMENT, reason: "refused access", errHas: detail},
		{name: "404: wrong path", url: func(_ *testing.T, w *fakeWorker) string { return w.srv.URL + "/v1/chat" },
			code: actors.Code_CODE_INVALID_ARGUMENT, reason: "no chat endpoint", errHas: "Not Found"},
		{name: "redirect is not followed", setup: func(w *fakeWorker) {
			w.answer = answerWith(http.StatusFound, map[string]string{"Location": "/v1/other"})
		},
			code: actors.Code_CODE_UNAVAILABLE, reason: "status 302", errHas: detail},
		{name: "connection refused", url: refused,
			code: actors.Code_CODE_UNAVAILABLE, reason: "cannot be reached", errHas: "refused"},
		{name: "200 is an answer, even the framework's error text", setup: func(w *fakeWorker) {
			w.reply = func(_ context.Context, out *replyStream, _ *chatInput) {
				_ = out.write("Error occurred. Please consult support.")
			}
		}, answerOut: "Error occurred. Please consult support."},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newFakeWorker(t)
			if tt.setup != nil {
				tt.setup(w)
			}
			u := w.url()
			if tt.url != nil {
				u = tt.url(t, w)
			}
			req := tt.req
			if req == nil {
				req = chat(user("hi"))
			}
			out, err := collect(t.Context(), newModel(t, actors.Args{"url": u}), req)
			if tt.answerOut != "" {
				if err != nil || out != tt.answerOut {
					t.Fatalf("Generate = %q, %v; want %q, nil", out, err, tt.answerOut)
				}
				return
			}
			if out != "" {
				t.Errorf("emitted %q on an error answer", out)
			}
			e := asKuwaError(t, err)
			if e.Code != tt.code || !strings.Contains(e.Reason, tt.reason) || e.RetryAfter != tt.retry {
				t.Errorf("got %v %q retry %v; want %v, a reason with %q, retry %v", e.Code, e.Reason, e.RetryAfter, tt.code, tt.reason, tt.retry)
			}
			if e.Err == nil || !strings.Contains(e.Err.Error(), tt.errHas) {
				t.Errorf("Err %v does not hold %q", e.Err, tt.errHas)
			}
			if strings.Contains(e.Reason, detail) || strings.Contains(e.Reason, "Processing") || strings.Contains(e.Reason, "input") {
				t.Errorf("Reason %q carries the upstream's text", e.Reason)
			}
			if _, aborts, _ := w.counts(); aborts != 0 {
				t.Errorf("%d aborts for a chat the executor did not take", aborts)
			}
		})
	}
}

func TestRetryAfterDate(t *testing.T) {
	w := newFakeWorker(t)
	w.answer = func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Retry-After", time.Now().Add(time.Hour).UTC().Format(http.TimeFormat))
		writeJSON(rw, 429, map[string]string{"msg": "Processing another request."})
	}
	_, err := collect(t.Context(), newModel(t, actors.Args{"url": w.url()}), chat(user("hi")))
	e := asKuwaError(t, err)
	if e.Code != actors.Code_CODE_OVERLOADED || e.RetryAfter < 58*time.Minute || e.RetryAfter > time.Hour {
		t.Errorf("got %v retry %v; want overloaded, retry about an hour", e.Code, e.RetryAfter)
	}
}

func TestTimeouts(t *testing.T) {
	waitForEnd := func(ctx context.Context, _ *replyStream, _ *chatInput) { <-ctx.Done() }
	tests := []struct {
		name        string
		args        actors.Args
		lazyHeaders bool
		reply       func(ctx context.Context, out *replyStream, in *chatInput)
		reason      string
		out         string
	}{
		{name: "first token: headers sent, no text", args: actors.Args{"first_token_timeout": "100ms"},
			reply: waitForEnd, reason: "did not start answering"},
		{name: "first token: nothing sent at all", args: actors.Args{"first_token_timeout": "100ms"},
			lazyHeaders: true, reply: waitForEnd, reason: "did not start answering"},
		{name: "idle after the first piece", args: actors.Args{"idle_timeout": "100ms"},
			reply: func(ctx context.Context, out *replyStream, _ *chatInput) {
				_ = out.write("partial")
				<-ctx.Done()
			}, reason: "stopped answering", out: "partial"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newFakeWorker(t)
			w.lazyHeaders, w.reply = tt.lazyHeaders, tt.reply
			args := actors.Args{"url": w.url()}
			for k, v := range tt.args {
				args[k] = v
			}
			start := time.Now()
			out, err := collect(t.Context(), newModel(t, args), chat(user("hi")))
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("Generate took %v", took)
			}
			e := asKuwaError(t, err)
			if e.Code != actors.Code_CODE_DEADLINE_EXCEEDED || !strings.Contains(e.Reason, tt.reason) {
				t.Errorf("got %v %q; want DEADLINE_EXCEEDED, a reason with %q", e.Code, e.Reason, tt.reason)
			}
			if out != tt.out {
				t.Errorf("emitted %q, want %q", out, tt.out)
			}
			// The executor was still generating: it is told to stop.
			if _, aborts, _ := w.counts(); aborts != 1 {
				t.Errorf("%d aborts, want 1", aborts)
			}
			eventually(t, "the request's connection is closed", func() bool { return w.connClosed(w.chat(0)) })
		})
	}
}

func TestStoppingEarlyClosesTheRequestAndAborts(t *testing.T) {
	errGone := errors.New("the client went away")
	tests := []struct {
		name      string
		abortHang bool
		// reply makes the worker's answer; cancel cancels the chat. The
		// emit Generate is given cancels the chat too, or fails with
		// emitErr.
		reply   func(cancel context.CancelFunc) func(ctx context.Context, out *replyStream, in *chatInput)
		emitErr error
		want    error
	}{
		{
			name: "cancelled mid-answer",
			reply: func(context.CancelFunc) func(context.Context, *replyStream, *chatInput) {
				return func(ctx context.Context, out *replyStream, _ *chatInput) {
					_ = out.write("a")
					<-ctx.Done()
				}
			},
			want: context.Canceled,
		},
		{
			name: "cancelled before the first byte",
			reply: func(cancel context.CancelFunc) func(context.Context, *replyStream, *chatInput) {
				return func(ctx context.Context, _ *replyStream, _ *chatInput) {
					cancel() // the chat is cancelled once the worker has it
					<-ctx.Done()
				}
			},
			want: context.Canceled,
		},
		{
			name: "emit fails",
			reply: func(context.CancelFunc) func(context.Context, *replyStream, *chatInput) {
				return func(ctx context.Context, out *replyStream, _ *chatInput) {
					_ = out.write("a")
					<-ctx.Done()
				}
			},
			emitErr: errGone,
			want:    errGone,
		},
		{
			name:      "an abort that hangs is given up",
			abortHang: true,
			reply: func(context.CancelFunc) func(context.Context, *replyStream, *chatInput) {
				return func(ctx context.Context, out *replyStream, _ *chatInput) {
					_ = out.write("a")
					<-ctx.Done()
				}
			},
			want: context.Canceled,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := newFakeWorker(t)
			w.abortHang = tt.abortHang
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			w.reply = tt.reply(cancel)
			m := newModel(t, actors.Args{"url": w.url()})
			var stopped time.Time
			start := time.Now()
			err := m.Generate(ctx, chat(user("hi")), func(s string) error {
				stopped = time.Now()
				if tt.emitErr != nil {
					return tt.emitErr
				}
				cancel()
				return nil
			})
			if stopped.IsZero() {
				stopped = start
			}
			if took := time.Since(stopped); took > 4*time.Second {
				t.Errorf("Generate returned %v after the chat stopped", took)
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Generate: %v, want %v", err, tt.want)
			}
			// Generate waits for the abort, so it has reached the worker.
			if _, aborts, _ := w.counts(); aborts != 1 {
				t.Errorf("%d aborts, want 1", aborts)
			}
			eventually(t, "the request's connection is closed", func() bool { return w.connClosed(w.chat(0)) })
		})
	}
}

func TestConcurrencyLimit(t *testing.T) {
	w := newFakeWorker(t)
	release := make(chan struct{})
	w.reply = func(ctx context.Context, out *replyStream, _ *chatInput) {
		_ = out.write("first")
		select {
		case <-release:
		case <-ctx.Done():
		}
	}
	m := newModel(t, actors.Args{"url": w.url()}) // concurrency 1
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() { // owned by this test, which waits for done
		var once bool
		done <- m.Generate(t.Context(), chat(user("one")), func(string) error {
			if !once {
				once = true
				close(started)
			}
			return nil
		})
	}()
	<-started
	_, err := collect(t.Context(), m, chat(user("two")))
	e := asKuwaError(t, err)
	if e.Code != actors.Code_CODE_OVERLOADED {
		t.Errorf("second chat: %v %q, want OVERLOADED", e.Code, e.Reason)
	}
	if chats, _, _ := w.counts(); chats != 1 {
		t.Errorf("the worker got %d chats, want 1: the second must not be sent", chats)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("first chat: %v", err)
	}
	// The slot is free again.
	if out, err := collect(t.Context(), m, chat(user("three"))); err != nil || out != "first" {
		t.Errorf("third chat = %q, %v", out, err)
	}
}

func TestHeadersAndAPIKey(t *testing.T) {
	const key = "sk-kuwa-test-7f3a"
	t.Setenv("KUWA_TEST_KEY", key)
	w := newFakeWorker(t)
	w.reply = func(ctx context.Context, out *replyStream, _ *chatInput) {
		_ = out.write("a")
		<-ctx.Done()
	}
	m := newModel(t, actors.Args{"url": w.url(), "api_key_env": "KUWA_TEST_KEY",
		"headers": map[string]any{"x-team": "blue", "Host": "kuwa.internal"}})
	ctx, cancel := context.WithCancel(t.Context())
	_ = m.Generate(ctx, chat(user("hi")), func(string) error { cancel(); return nil })
	cancel()

	in := w.chat(0)
	aborts := w.abortHeaders()
	if len(aborts) != 1 {
		t.Fatalf("%d aborts, want 1", len(aborts))
	}
	for what, h := range map[string]http.Header{"chat": in.Header, "abort": aborts[0]} {
		if got := h.Get("Authorization"); got != "Bearer "+key {
			t.Errorf("%s: Authorization %q", what, got)
		}
		if got := h.Get("X-Team"); got != "blue" {
			t.Errorf("%s: X-Team %q", what, got)
		}
	}
	if in.Host != "kuwa.internal" {
		t.Errorf("Host %q", in.Host)
	}

	// Whatever fails, the key is not in what Troupe writes: the reason,
	// argument errors, network errors. (Err holds an error answer's body,
	// which here echoes the key: that is the upstream's doing.)
	w.answer = func(rw http.ResponseWriter, r *http.Request) {
		writeJSON(rw, 401, map[string]string{"msg": "bad token " + r.Header.Get("Authorization")})
	}
	_, err := collect(t.Context(), m, chat(user("hi")))
	if e := asKuwaError(t, err); e.Code != actors.Code_CODE_INVALID_ARGUMENT || strings.Contains(e.Reason, key) {
		t.Errorf("got %v %q", e.Code, e.Reason)
	}
	for _, a := range []actors.Args{
		{"url": "http://127.0.0.1:1/x", "api_key_env": "KUWA_TEST_KEY", "headers": map[string]any{"Authorization": "x"}},
		{"url": "http://127.0.0.1:1/x", "api_key_env": "KUWA_TEST_KEY", "headers": map[string]any{"Bad Name": key}},
	} {
		if _, err := kuwa.New(a); err == nil || strings.Contains(err.Error(), key) {
			t.Errorf("New(%v): %v", a, err)
		}
	}
	if _, err := collect(t.Context(), newModel(t, actors.Args{"url": "http://127.0.0.1:1/x", "api_key_env": "KUWA_TEST_KEY"}),
		chat(user("hi"))); err == nil || strings.Contains(err.Error(), key) {
		t.Errorf("refused: %v", err)
	}
}

func TestCloseReleasesConnections(t *testing.T) {
	w := newFakeWorker(t)
	m := newModel(t, actors.Args{"url": w.url()})
	for i := range 3 {
		if out, err := collect(t.Context(), m, chat(user(fmt.Sprint(i)))); err != nil || out != "ok" {
			t.Fatalf("chat %d = %q, %v", i, out, err)
		}
	}
	// Chats one after another reuse one kept-alive connection.
	if n := w.openConns(); n != 1 {
		t.Fatalf("%d connections open after three chats, want 1", n)
	}
	if err := m.(interface{ Close() error }).Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "Close closed the kept-alive connection", func() bool { return w.openConns() == 0 })
	// Close twice is fine, and a closed instance still works.
	actors.CloseInstance(m)
	if out, err := collect(t.Context(), m, chat(user("again"))); err != nil || out != "ok" {
		t.Errorf("after Close = %q, %v", out, err)
	}
}

func TestArguments(t *testing.T) {
	t.Setenv("KUWA_EMPTY_KEY", "")
	const ok = "http://127.0.0.1:12345/v1.0/chat/completions"
	tests := []struct {
		name    string
		args    actors.Args
		wantErr string // "" for valid arguments
		notIn   string // must not be in the error
	}{
		{"only the url", actors.Args{"url": ok}, "", ""},
		{"every argument", actors.Args{"url": "https://kuwa.example/v1/completion", "name": "x", "concurrency": 2,
			"connect_timeout": "1s", "first_token_timeout": "0", "idle_timeout": "30s",
			"headers": map[string]any{"X-A": "b"}}, "", ""},
		{"no url", actors.Args{}, "url is required", ""},
		{"empty url", actors.Args{"url": " "}, "url is required", ""},
		{"url not http", actors.Args{"url": "ftp://user:hunter2@host/x"}, "url: want an http or https URL", "hunter2"},
		{"url without host", actors.Args{"url": "http:///chat"}, "url:", ""},
		{"url that does not parse", actors.Args{"url": "http://user:hunter2@[::1/x"}, "url: not a valid URL", "hunter2"},
		{"url a bare path", actors.Args{"url": "/v1/completion"}, "url: want an http or https URL", ""},
		{"unknown argument", actors.Args{"url": ok, "timeout": "1s"}, `unknown field "timeout"`, ""},
		{"concurrency 0", actors.Args{"url": ok, "concurrency": 0}, "concurrency must be at least 1", ""},
		{"concurrency a string", actors.Args{"url": ok, "concurrency": "two"}, "concurrency", ""},
		{"connect_timeout not a duration", actors.Args{"url": ok, "connect_timeout": "soon"}, "connect_timeout: want a duration", ""},
		{"connect_timeout 0", actors.Args{"url": ok, "connect_timeout": "0s"}, "connect_timeout must be more than 0", ""},
		{"first_token_timeout negative", actors.Args{"url": ok, "first_token_timeout": "-1s"}, "first_token_timeout must be 0 (no limit) or more", ""},
		{"idle_timeout a number", actors.Args{"url": ok, "idle_timeout": 5}, "idle_timeout", ""},
		{"header name with a space", actors.Args{"url": ok, "headers": map[string]any{"X Team": "a"}}, `headers: "X Team" is not a valid header name`, ""},
		{"header value with a line break", actors.Args{"url": ok, "headers": map[string]any{"X-A": "a\r\nX-B: b"}}, "headers: the value of", "X-B"},
		{"protocol header", actors.Args{"url": ok, "headers": map[string]any{"content-type": "text/plain"}}, "headers: \"content-type\" is set by the Kuwa protocol", ""},
		{"headers not a map", actors.Args{"url": ok, "headers": []any{"X-A: b"}}, "headers", ""},
		{"api_key_env unset", actors.Args{"url": ok, "api_key_env": "KUWA_EMPTY_KEY"}, "api_key_env: the environment variable KUWA_EMPTY_KEY is not set", ""},
		{"api_key_env and Authorization", actors.Args{"url": ok, "api_key_env": "KUWA_EMPTY_KEY",
			"headers": map[string]any{"Authorization": "Bearer x"}}, "api_key_env and an Authorization header", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := kuwa.New(tt.args)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				actors.CloseInstance(m)
				return
			}
			if err == nil {
				actors.CloseInstance(m)
				t.Fatalf("New: no error, want one with %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("New: %v\nwant an error with %q", err, tt.wantErr)
			}
			if tt.notIn != "" && strings.Contains(err.Error(), tt.notIn) {
				t.Errorf("New: %v\nholds %q", err, tt.notIn)
			}
		})
	}
}

func TestRegistered(t *testing.T) {
	kind, err := actors.DefaultRegistry.Model("kuwa")
	if err != nil {
		t.Fatal(err)
	}
	if kind.Capacity != 1 {
		t.Errorf("capacity %d, want 1: a Kuwa executor serves one chat at a time", kind.Capacity)
	}
	if _, err := kind.New(actors.Args{}); err == nil {
		t.Error("New without url: no error")
	}
	m, err := kind.New(actors.Args{"url": "http://127.0.0.1:12345/chat"})
	if err != nil {
		t.Fatal(err)
	}
	actors.CloseInstance(m)
}
