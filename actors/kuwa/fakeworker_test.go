package kuwa_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// fakeWorker is a Kuwa worker on 127.0.0.1 that answers as the Python
// worker framework's ModelApiServer (Starlette under uvicorn) did, byte for
// byte where a client can tell: the busy check first, then the form's
// "input" parsed as the framework parsed it, 400 with a compact JSON
// {"message": ...} for bad input, and the answer streamed as
// "text/plain; charset=utf-8", each piece flushed as it is produced. Newer
// Kuwa executors added what it lacked and it has too: the modelfile (read as
// kuwa.executor.modelfile does), 429 {"msg": ...} when busy (busyStatus),
// and GET {endpoint}/abort, which stops the chat in progress.
type fakeWorker struct {
	t    *testing.T
	srv  *httptest.Server
	path string // the chat endpoint

	// busyStatus is 503 (the framework) or 429 (newer executors).
	busyStatus int
	// lazyHeaders sends the status line with the first piece of the answer,
	// as the Flask workers did, instead of at once, as uvicorn does.
	lazyHeaders bool
	// reply produces an accepted chat's answer; nil answers "ok". ctx ends
	// when the client goes away or an abort comes.
	reply func(ctx context.Context, out *replyStream, in *chatInput)
	// abortHang makes the abort endpoint never answer, as a stuck
	// executor's would not.
	abortHang bool
	// answer, when set, answers every chat instead of the protocol: for the
	// status codes a worker or a proxy in front of it may send.
	answer http.HandlerFunc

	mu      sync.Mutex
	busy    bool
	chats   []*chatInput
	aborts  []http.Header // the headers of each abort call
	stop    context.CancelFunc
	conns   map[net.Conn]http.ConnState
	closed  map[net.Conn]bool
	answers int // chats answered by answer
}

// chatInput is one chat as the worker read it.
type chatInput struct {
	Body    string // the raw form body
	Header  http.Header
	Host    string
	History []chatRecord // the framework's reading of "input"
	// System and Params are the modelfile as Kuwa executors read it.
	System string
	Params map[string]string
	// The other form fields.
	Name, HistoryID, UserID string
	Input, Modelfile        string // raw
	conn                    net.Conn
}

// chatRecord is the framework's ChatRecord: msg and role.
type chatRecord struct {
	Msg string
	Bot bool
}

type connKey struct{}

func newFakeWorker(t *testing.T) *fakeWorker {
	t.Helper()
	w := &fakeWorker{
		t:          t,
		path:       "/v1/completion",
		busyStatus: http.StatusServiceUnavailable,
		conns:      map[net.Conn]http.ConnState{},
		closed:     map[net.Conn]bool{},
	}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(w.serveHTTP))
	w.srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if s == http.StateClosed || s == http.StateHijacked {
			delete(w.conns, c)
			w.closed[c] = true
			return
		}
		w.conns[c] = s
	}
	w.srv.Config.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}
	w.srv.Start() // httptest listens on 127.0.0.1
	t.Cleanup(w.srv.Close)
	return w
}

// url is the chat endpoint's URL.
func (w *fakeWorker) url() string { return w.srv.URL + w.path }

// Starlette's answers for the errors it handles itself.
func writePlain(rw http.ResponseWriter, status int, body string) {
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	rw.WriteHeader(status)
	_, _ = io.WriteString(rw, body)
}

// writeJSON is Starlette's JSONResponse: compact, not ASCII-escaped.
func writeJSON(rw http.ResponseWriter, status int, v map[string]string) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(status)
	_, _ = io.WriteString(rw, strings.TrimSuffix(b.String(), "\n"))
}

func (w *fakeWorker) serveHTTP(rw http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/health":
		rw.WriteHeader(http.StatusNoContent)
		return
	case w.path + "/abort":
		if r.Method != http.MethodGet {
			writePlain(rw, http.StatusMethodNotAllowed, "Method Not Allowed")
			return
		}
		w.abort(rw, r)
		return
	case w.path:
		if r.Method != http.MethodPost {
			writePlain(rw, http.StatusMethodNotAllowed, "Method Not Allowed")
			return
		}
	default:
		writePlain(rw, http.StatusNotFound, "Not Found")
		return
	}
	if w.answer != nil {
		w.mu.Lock()
		w.answers++
		w.mu.Unlock()
		w.answer(rw, r)
		return
	}

	// The busy check comes before the form is read.
	w.mu.Lock()
	busy := w.busy
	w.mu.Unlock()
	if busy {
		w.writeBusy(rw)
		return
	}

	in, status, msg := readChat(r)
	if status != 0 {
		writeJSON(rw, status, map[string]string{"message": msg})
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	w.mu.Lock()
	if w.busy { // another chat got in while this one was read
		w.mu.Unlock()
		w.writeBusy(rw)
		return
	}
	w.busy, w.stop = true, cancel
	w.chats = append(w.chats, in)
	w.mu.Unlock()
	defer func() {
		w.mu.Lock()
		w.busy, w.stop = false, nil
		w.mu.Unlock()
	}()

	out := &replyStream{rw: rw, rc: http.NewResponseController(rw)}
	rw.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !w.lazyHeaders {
		out.start()
	}
	if w.reply == nil {
		_ = out.write("ok")
		return
	}
	w.reply(ctx, out, in)
	if !out.started { // an empty answer
		out.start()
	}
}

func (w *fakeWorker) writeBusy(rw http.ResponseWriter) {
	if w.busyStatus == http.StatusTooManyRequests {
		writeJSON(rw, w.busyStatus, map[string]string{"msg": "Processing another request."})
		return
	}
	writeJSON(rw, w.busyStatus, map[string]string{"message": "Processing another request"})
}

// abort is a Kuwa executor's abort endpoint: it stops the chat in
// progress and answers {"msg": ...}.
func (w *fakeWorker) abort(rw http.ResponseWriter, r *http.Request) {
	w.mu.Lock()
	w.aborts = append(w.aborts, r.Header.Clone())
	stop := w.stop
	w.mu.Unlock()
	if w.abortHang {
		<-r.Context().Done()
		return
	}
	msg := "No running generation."
	if stop != nil {
		stop()
		msg = "Aborted."
	}
	writeJSON(rw, http.StatusOK, map[string]string{"msg": msg})
}

// readChat reads the form as the framework did. The status is 0 for a
// chat it takes, else the error answer's status and message.
func readChat(r *http.Request) (*chatInput, int, string) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, http.StatusBadRequest, "Bad request"
	}
	// Starlette's FormData.get gives the last value of a repeated field.
	form, err := url.ParseQuery(string(body))
	if err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		return nil, http.StatusBadRequest, "Bad request"
	}
	get := func(k string) (string, bool) {
		vs, ok := form[k]
		if !ok || len(vs) == 0 {
			return "", false
		}
		return vs[len(vs)-1], true
	}
	in := &chatInput{Body: string(body), Header: r.Header.Clone(), Host: r.Host, conn: r.Context().Value(connKey{}).(net.Conn)}
	in.Name, _ = get("name")
	in.HistoryID, _ = get("history_id")
	in.UserID, _ = get("user_id")
	in.Modelfile, _ = get("modelfile")

	// json.loads(form.get('input')); then for each d: d['isbot'] and a
	// ChatRecord(msg: str) from dacite. Anything else raises: "Bad request".
	input, ok := get("input")
	if !ok {
		return nil, http.StatusBadRequest, "Bad request" // json.loads(None)
	}
	in.Input = input
	if strings.TrimSpace(input) == "null" {
		return nil, http.StatusBadRequest, "Bad request" // iterating None
	}
	var items []map[string]json.RawMessage
	if err := json.Unmarshal([]byte(input), &items); err != nil {
		return nil, http.StatusBadRequest, "Bad request"
	}
	for _, d := range items {
		isbot, ok := d["isbot"]
		if !ok {
			return nil, http.StatusBadRequest, "Bad request" // KeyError
		}
		var msg string
		if raw, ok := d["msg"]; !ok || json.Unmarshal(raw, &msg) != nil || string(raw) == "null" {
			return nil, http.StatusBadRequest, "Bad request" // dacite: missing or not a str
		}
		in.History = append(in.History, chatRecord{Msg: msg, Bot: truthy(isbot)})
	}
	if len(in.History) == 0 || in.History[len(in.History)-1].Msg == "" {
		return nil, http.StatusBadRequest, "I didn't see your input!"
	}
	in.System, in.Params = readModelfile(in.Modelfile)
	return in, 0, ""
}

// truthy is Python's truth of a JSON value.
func truthy(raw json.RawMessage) bool {
	var v any
	if json.Unmarshal(raw, &v) != nil {
		return false
	}
	switch v := v.(type) {
	case nil:
		return false
	case bool:
		return v
	case float64:
		return v != 0
	case string:
		return v != ""
	case []any:
		return len(v) > 0
	case map[string]any:
		return len(v) > 0
	}
	return true
}

var comment = regexp.MustCompile(`#.*$`)

// readModelfile is kuwa.executor.modelfile's Modelfile.from_json, for the
// system prompt and the parameters: system directives are concatenated, a
// parameter's args lose a trailing "# comment" and split at the first space;
// a directive that fails is skipped.
func readModelfile(raw string) (string, map[string]string) {
	var directives []map[string]any
	if raw == "" || json.Unmarshal([]byte(raw), &directives) != nil {
		return "", nil
	}
	var system string
	params := map[string]string{}
	for _, d := range directives {
		name, _ := d["name"].(string)
		args, _ := d["args"].(string)
		switch name {
		case "system":
			system += args
		case "parameter", "kuwaparam":
			key, value, ok := strings.Cut(strings.TrimSpace(comment.ReplaceAllString(args, "")), " ")
			if ok {
				params[key] = value
			}
		}
	}
	return system, params
}

// replyStream writes an answer as uvicorn does: every piece is sent at once.
type replyStream struct {
	rw      http.ResponseWriter
	rc      *http.ResponseController
	started bool
}

func (s *replyStream) start() {
	s.started = true
	s.rw.WriteHeader(http.StatusOK)
	_ = s.rc.Flush()
}

func (s *replyStream) write(piece string) error {
	if !s.started {
		s.started = true
	}
	if _, err := io.WriteString(s.rw, piece); err != nil {
		return err
	}
	return s.rc.Flush()
}

// chat returns the i-th chat the worker took.
func (w *fakeWorker) chat(i int) *chatInput {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if i >= len(w.chats) {
		w.t.Fatalf("the worker took %d chats, want at least %d", len(w.chats), i+1)
	}
	return w.chats[i]
}

func (w *fakeWorker) counts() (chats, aborts, answers int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.chats), len(w.aborts), w.answers
}

func (w *fakeWorker) abortHeaders() []http.Header {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]http.Header(nil), w.aborts...)
}

func (w *fakeWorker) setBusy(b bool) {
	w.mu.Lock()
	w.busy = b
	w.mu.Unlock()
}

// connClosed reports whether the connection that carried a chat is closed.
func (w *fakeWorker) connClosed(in *chatInput) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closed[in.conn]
}

// openConns is the number of client connections open on the worker.
func (w *fakeWorker) openConns() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.conns)
}
