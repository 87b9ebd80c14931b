package agenttest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/troupe-llm/troupe/internal/leaktest"
)

func TestMain(m *testing.M) { leaktest.Main(m, 5*time.Second) }

// testClient opens a connection per call, so a call made after SetDown or
// Restart never meets a connection the Agent cut.
var testClient = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// call posts a raw form body to an Agent route and returns the answer.
func call(t *testing.T, a *Agent, route, contentType, body string) (string, string) {
	t.Helper()
	resp, err := testClient.Post(a.URL()+route, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatalf("POST %s: %v", route, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST %s: read: %v", route, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %s %q", route, resp.Status, b)
	}
	return string(b), resp.Header.Get("Content-Type")
}

func post(t *testing.T, a *Agent, route string, kv ...string) string {
	t.Helper()
	var f form
	for i := 0; i+1 < len(kv); i += 2 {
		f = append(f, field{kv[i], kv[i+1]})
	}
	answer, _ := call(t, a, route, "application/x-www-form-urlencoded", f.encode())
	return answer
}

func mustRegister(t *testing.T, a *Agent, name, endpoint string) {
	t.Helper()
	if got := post(t, a, "worker/register", "name", name, "endpoint", endpoint); got != "Success" {
		t.Fatalf("register %q %q: %q", name, endpoint, got)
	}
}

// worker starts a tiny worker and returns its chat endpoint URL.
func worker(t *testing.T, chat http.HandlerFunc, extra map[string]http.HandlerFunc) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/completion", func(w http.ResponseWriter, r *http.Request) {
		// Go's server notices a caller hanging up (and cancels r.Context)
		// only once the request body has been read to the end.
		raw, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(raw))
		chat(w, r)
	})
	for pattern, h := range extra {
		mux.HandleFunc(pattern, h)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL + "/v1/completion"
}

func readAll(t *testing.T, rc io.ReadCloser) string {
	t.Helper()
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	return string(b)
}

func TestRegister(t *testing.T) {
	a := Start(t)
	const form = "application/x-www-form-urlencoded"
	steps := []struct {
		desc        string
		contentType string
		body        string
		want        string
	}{
		{"new endpoint", form, "name=m&endpoint=http%3A%2F%2Fw%3A1%2Fv1%2Fcompletion", "Success"},
		{"same endpoint again", form, "name=m&endpoint=http%3A%2F%2Fw%3A1%2Fv1%2Fcompletion", "Failed"},
		{"same endpoint with a trailing slash", form, "name=m&endpoint=http%3A%2F%2Fw%3A1%2Fv1%2Fcompletion%2F", "Failed"},
		{"same endpoint under another name", form, "name=n&endpoint=http%3A%2F%2Fw%3A1%2Fv1%2Fcompletion", "Success"},
		{"second endpoint of the same host", form, "name=m&endpoint=http%3A%2F%2Fw%3A1%2Fv1%2Fcompletion%2F1", "Success"},
		{"missing endpoint", form, "name=m", "Failed"},
		{"missing name", form, "endpoint=http%3A%2F%2Fw%3A2%2F", "Failed"},
		{"JSON is not a form", "application/json", `{"name":"m","endpoint":"http://w:3/"}`, "Failed"},
		{"multipart is a form", "multipart/form-data; boundary=XX",
			"--XX\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nm\r\n" +
				"--XX\r\nContent-Disposition: form-data; name=\"endpoint\"\r\n\r\nhttp://w:4/x\r\n--XX--\r\n", "Success"},
	}
	for _, s := range steps {
		got, ct := call(t, a, "worker/register", s.contentType, s.body)
		if got != s.want {
			t.Errorf("%s: answer %q, want %q", s.desc, got, s.want)
		}
		if ct != "text/html; charset=utf-8" {
			t.Errorf("%s: Content-Type %q, want Flask's text/html; charset=utf-8", s.desc, ct)
		}
	}
	want := []string{"http://w:1/v1/completion", "http://w:1/v1/completion/1", "http://w:4/x"}
	if got := a.Endpoints("m"); !slices.Equal(got, want) {
		t.Errorf("Endpoints(m) = %q, want %q", got, want)
	}
	calls := a.Calls()
	if len(calls) != len(steps) {
		t.Fatalf("%d calls logged, want %d: %+v", len(calls), len(steps), calls)
	}
	if c := calls[1]; c != (Call{CallRegister, "m", "http://w:1/v1/completion", "Failed"}) {
		t.Errorf("calls[1] = %+v", c)
	}
}

func TestUnregisterByHostPort(t *testing.T) {
	a := Start(t)
	mustRegister(t, a, "m", "http://w:1/a")
	mustRegister(t, a, "m", "http://w:1/b")
	mustRegister(t, a, "m", "http://w:2/a")
	mustRegister(t, a, "m", "http://W:3/a")
	mustRegister(t, a, "other", "http://w:1/a")

	steps := []struct {
		desc, name, endpoint, want string
		left                       []string
	}{
		{"path is ignored: both of w:1 go", "m", "http://w:1/zzz?q#f", "Success", []string{"http://W:3/a", "http://w:2/a"}},
		{"nothing left on w:1", "m", "http://w:1/a", "Failed", []string{"http://W:3/a", "http://w:2/a"}},
		{"host case counts, as Python compares netloc strings", "m", "http://w:3/a", "Failed", []string{"http://W:3/a", "http://w:2/a"}},
		{"scheme case does not", "m", "HTTP://W:3", "Success", []string{"http://w:2/a"}},
		{"unknown name", "nope", "http://w:2/a", "Failed", []string{"http://w:2/a"}},
		{"last endpoint", "m", "http://w:2", "Success", nil},
		{"name gone", "m", "http://w:2", "Failed", nil},
	}
	for _, s := range steps {
		if got := post(t, a, "worker/unregister", "name", s.name, "endpoint", s.endpoint); got != s.want {
			t.Errorf("%s: answer %q, want %q", s.desc, got, s.want)
		}
		if got := a.Endpoints("m"); !slices.Equal(got, s.left) {
			t.Errorf("%s: Endpoints(m) = %q, want %q", s.desc, got, s.left)
		}
	}
	if got := a.Endpoints("other"); !slices.Equal(got, []string{"http://w:1/a"}) {
		t.Errorf("another name's endpoints changed: %q", got)
	}
	if got := post(t, a, "worker/unregister", "name", "other"); got != "Failed" {
		t.Errorf("unregister without endpoint: %q, want Failed", got)
	}
}

func TestBaseURL(t *testing.T) {
	for in, want := range map[string]string{
		"http://w:8123/v1/completion": "http://w:8123",
		"HTTPS://User@W:1?x":          "https://User@W:1",
		"http://w#frag":               "http://w",
		" \thttp://w:1/":              "http://w:1",
		"w:1/x":                       "w://",
		"/just/a/path":                "://",
		"":                            "://",
	} {
		if got := baseURL(in); got != want {
			t.Errorf("baseURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestWorkerList(t *testing.T) {
	a := Start(t)
	get := func() (string, string) {
		t.Helper()
		resp, err := testClient.Get(a.URL() + "worker/list")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.Header.Get("Content-Type")
	}
	if body, ct := get(); body != "[]\n" || ct != "application/json" {
		t.Errorf("empty list: %q %q", body, ct)
	}
	mustRegister(t, a, "zeta", "http://w:1/")
	mustRegister(t, a, "alpha", "http://w:2/")
	mustRegister(t, a, "zeta", "http://w:3/")
	if body, _ := get(); body != "[\"zeta\",\"alpha\"]\n" {
		t.Errorf("list = %q, want names in registration order", body)
	}
	post(t, a, "worker/unregister", "name", "zeta", "endpoint", "http://w:1")
	post(t, a, "worker/unregister", "name", "zeta", "endpoint", "http://w:3")
	if body, _ := get(); body != "[\"alpha\"]\n" {
		t.Errorf("list after unregister = %q", body)
	}
	resp, err := testClient.Post(a.URL()+"worker/list", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST worker/list: %s, want 405", resp.Status)
	}
	for _, p := range []string{"/v1.0/worker/list/", "/v1.0//worker/list", "/health", "/v1.0/nope"} {
		resp, err := testClient.Get("http://" + strings.TrimSuffix(strings.TrimPrefix(a.URL(), "http://"), APIPath) + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %s, want 404", p, resp.Status)
		}
	}
}

func TestSchedule(t *testing.T) {
	a := Start(t)
	schedule := func(kv ...string) string { t.Helper(); return post(t, a, "worker/schedule", kv...) }

	if got := schedule("name", "m", "history_id", "1", "user_id", "u"); got != "NOMACHINE" {
		t.Errorf("no endpoint: %q, want NOMACHINE", got)
	}
	mustRegister(t, a, "m", "http://w:1/")
	mustRegister(t, a, "m", "http://w:2/")
	if got := schedule("name", "m", "user_id", "u"); got != "BUSY" {
		t.Errorf("missing history_id: %q, want BUSY", got)
	}
	if got := schedule("name", "m", "history_id", "1", "user_id", "u"); got != "READY" {
		t.Errorf("first: %q, want READY", got)
	}
	if got := schedule("name", "m", "history_id", "2", "user_id", "v"); got != "READY" {
		t.Errorf("second: %q, want READY", got)
	}
	if got := schedule("name", "m", "history_id", "3", "user_id", "w"); got != "BUSY" {
		t.Errorf("third: %q, want BUSY", got)
	}
	want := []EndpointState{
		{URL: "http://w:1", Status: "READY", Reserved: true, HistoryID: "1", UserID: "u"},
		{URL: "http://w:2", Status: "READY", Reserved: true, HistoryID: "2", UserID: "v"},
	}
	if got := a.Table("m"); !slices.Equal(got, want) {
		t.Errorf("Table(m) = %+v, want %+v", got, want)
	}
	if _, err := a.Chat(t.Context(), "m", "4", "x", "[]", nil); !errors.Is(err, ErrBusy) {
		t.Errorf("Chat with all reserved: %v, want ErrBusy", err)
	}
	if _, err := a.Chat(t.Context(), "none", "4", "x", "[]", nil); !errors.Is(err, ErrNoMachine) {
		t.Errorf("Chat with no endpoint: %v, want ErrNoMachine", err)
	}
}

// TestCompletionsStreams checks that a reply reaches the user piece by piece,
// that the endpoint is BUSY meanwhile and not given to another chat, and
// that it is free again once the reply ends.
func TestCompletionsStreams(t *testing.T) {
	a := Start(t)
	release := make(chan struct{})
	type seen struct{ body, host, contentType string }
	got := make(chan seen, 1)
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		got <- seen{string(raw), r.Host, r.Header.Get("Content-Type")}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "first ")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "second")
	}, nil)
	mustRegister(t, a, "m", ep)

	extra := url.Values{"modelfile": {`[{"name":"system","args":"be brief"}]`}, "aa": {"1", "2"}}
	reply, err := a.Chat(t.Context(), "m", "7", "u", `[{"msg":"hi","isbot":false}]`, extra)
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Close()
	r := bufio.NewReader(reply)
	first := make([]byte, len("first "))
	if _, err := io.ReadFull(r, first); err != nil || string(first) != "first " {
		t.Fatalf("first chunk: %q, %v", first, err)
	}

	// The worker is still writing: it waits on release.
	if st := a.Table("m"); len(st) != 1 || st[0].Status != "BUSY" {
		t.Errorf("while streaming: %+v, want BUSY", st)
	}
	if _, err := a.Chat(t.Context(), "m", "8", "v", "[]", nil); !errors.Is(err, ErrBusy) {
		t.Errorf("second chat while streaming: %v, want ErrBusy", err)
	}
	req := <-got
	wantBody := "name=m&input=%5B%7B%22msg%22%3A%22hi%22%2C%22isbot%22%3Afalse%7D%5D&history_id=7&user_id=u" +
		"&aa=1&modelfile=%5B%7B%22name%22%3A%22system%22%2C%22args%22%3A%22be+brief%22%7D%5D"
	if req.body != wantBody {
		t.Errorf("forwarded body\n got %s\nwant %s", req.body, wantBody)
	}
	if h := req.contentType; h != "application/x-www-form-urlencoded" {
		t.Errorf("forwarded Content-Type %q", h)
	}
	if agentHost := strings.TrimSuffix(strings.TrimPrefix(a.URL(), "http://"), APIPath); req.host != agentHost {
		t.Errorf("forwarded Host %q, want the Agent's %q (the kernel relays the front end's headers)", req.host, agentHost)
	}

	close(release)
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "second" {
		t.Errorf("rest of reply: %q, %v", rest, err)
	}
	if st := a.Table("m"); len(st) != 1 || st[0] != (EndpointState{URL: ep, Status: "READY"}) {
		t.Errorf("after the reply: %+v, want READY and free", st)
	}
}

func TestCompletionsHeaders(t *testing.T) {
	a := Start(t)
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
		io.WriteString(w, "worker broke")
	}, nil)
	mustRegister(t, a, "m", ep)
	if got := post(t, a, "worker/schedule", "name", "m", "history_id", "1", "user_id", "u"); got != "READY" {
		t.Fatal(got)
	}
	resp, err := testClient.Post(a.URL()+"chat/completions", "application/x-www-form-urlencoded",
		strings.NewReader("name=m&input=%5B%5D&history_id=1&user_id=u"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	// The status of the worker is not read: its error text becomes the reply.
	if resp.StatusCode != http.StatusOK || string(b) != "worker broke" {
		t.Errorf("reply %s %q, want 200 \"worker broke\"", resp.Status, b)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/plain" {
		t.Errorf("Content-Type %q, want text/plain", ct)
	}
	if te := resp.TransferEncoding; !slices.Equal(te, []string{"chunked"}) {
		t.Errorf("Transfer-Encoding %q, want chunked", te)
	}
}

func TestCompletionsLegacyForward(t *testing.T) {
	a := StartConfig(t, Config{LegacyForward: true})
	bodies := make(chan string, 1)
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
		raw, _ := io.ReadAll(r.Body)
		bodies <- string(raw)
	}, nil)
	mustRegister(t, a, "m", ep)
	reply, err := a.Chat(t.Context(), "m", "1", "u", "[]", url.Values{"modelfile": {"[]"}, "other": {"x"}})
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, reply)
	if got, want := <-bodies, "input=%5B%5D&modelfile=%5B%5D"; got != want {
		t.Errorf("legacy forward body %q, want %q", got, want)
	}
}

func TestCompletionsWithoutReservation(t *testing.T) {
	a := Start(t)
	called := make(chan struct{}, 1)
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) { called <- struct{}{} }, nil)
	mustRegister(t, a, "m", ep)
	post(t, a, "worker/schedule", "name", "m", "history_id", "1", "user_id", "u")
	for _, body := range []string{
		"name=m&input=x&history_id=1&user_id=other",
		"name=m&input=x&history_id=2&user_id=u",
		"name=m&input=x&history_id=1",
		"name=nope&input=x&history_id=1&user_id=u",
	} {
		got, ct := call(t, a, "chat/completions", "application/x-www-form-urlencoded", body)
		if got != "" || ct != "text/html; charset=utf-8" {
			t.Errorf("%s: %q %q, want an empty Flask answer", body, got, ct)
		}
	}
	select {
	case <-called:
		t.Error("the worker was called for a chat that was not reserved")
	default:
	}
}

func TestDropUnreachableEndpoint(t *testing.T) {
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL + "/v1/completion"
	dead.Close()

	// A worker that accepts and hangs up before answering is a
	// ConnectionError to requests too.
	hangup := worker(t, func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}, nil)

	for _, ep := range []string{deadURL, hangup} {
		t.Run(ep, func(t *testing.T) {
			a := Start(t)
			mustRegister(t, a, "m", ep)
			mustRegister(t, a, "keep", ep)
			reply, err := a.Chat(t.Context(), "m", "1", "u", "[]", nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, reply); got != "" {
				t.Errorf("reply %q, want empty", got)
			}
			if got := a.Endpoints("m"); len(got) != 0 {
				t.Errorf("Endpoints(m) = %q, want the endpoint dropped", got)
			}
			if got := a.Names(); !slices.Equal(got, []string{"keep"}) {
				t.Errorf("Names() = %q, want only the other name", got)
			}
			if _, err := a.Chat(t.Context(), "m", "2", "u", "[]", nil); !errors.Is(err, ErrNoMachine) {
				t.Errorf("next chat: %v, want ErrNoMachine", err)
			}
		})
	}
}

func TestReplyDecoding(t *testing.T) {
	tests := []struct {
		contentType string
		want        string
	}{
		{"text/plain; charset=utf-8", "héllo ☃"},
		{"text/event-stream; charset=UTF-8", "héllo ☃"},
		{`text/plain; charset="utf8"`, "héllo ☃"},
		{"application/json", "héllo ☃"},
		{"application/octet-stream", "héllo ☃"},
		// requests assumes ISO-8859-1 for text without a charset.
		{"text/plain", "hÃ©llo â\u0098\u0083"},
		{"text/plain; charset=ascii", "h\uFFFD\uFFFDllo \uFFFD\uFFFD\uFFFD"},
		// The check for "text" is case-sensitive.
		{"Text/Plain", "héllo ☃"},
	}
	for _, tt := range tests {
		t.Run(tt.contentType, func(t *testing.T) {
			a := Start(t)
			ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.contentType)
				// Split inside both multi-byte characters.
				for _, p := range []string{"h\xc3", "\xa9llo \xe2", "\x98\x83"} {
					io.WriteString(w, p)
					w.(http.Flusher).Flush()
				}
			}, nil)
			mustRegister(t, a, "m", ep)
			reply, err := a.Chat(t.Context(), "m", "1", "u", "[]", nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, reply); got != tt.want {
				t.Errorf("reply %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReplyDecoderCutSequence(t *testing.T) {
	d := newReplyDecoder("text/plain; charset=utf-8")
	var out []byte
	out = append(out, d.decode([]byte("a\xe2\x98"))...)
	if string(out) != "a" {
		t.Errorf("after a cut sequence: %q, want it held back", out)
	}
	out = append(out, d.decode([]byte("\xffb"))...)
	out = append(out, d.decode([]byte("\xe2"))...)
	out = append(out, d.flush()...)
	if want := "a\uFFFD\uFFFD\uFFFD" + "b\uFFFD"; string(out) != want {
		t.Errorf("decoded %q, want %q", out, want)
	}
}

func TestAbort(t *testing.T) {
	a := Start(t)
	aborted := make(chan string, 4)
	stop := make(chan struct{})
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "thinking")
		w.(http.Flusher).Flush()
		select {
		case <-stop:
			io.WriteString(w, " (stopped)")
		case <-r.Context().Done():
		}
	}, map[string]http.HandlerFunc{
		"GET /v1/completion/abort": func(w http.ResponseWriter, r *http.Request) {
			aborted <- r.URL.Path
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"msg":"Aborted"}`)
			close(stop)
		},
	})
	mustRegister(t, a, "m", ep)
	reply, err := a.Chat(t.Context(), "m", "42", "u", "[]", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Close()
	first := make([]byte, len("thinking"))
	if _, err := io.ReadFull(reply, first); err != nil {
		t.Fatal(err)
	}

	// Another user's stop button, and another chat's, reach nobody.
	if err := a.Abort(t.Context(), "42", "someone else"); err != nil {
		t.Fatal(err)
	}
	if got := post(t, a, "chat/abort", "history_id", "[1, 2]", "user_id", "u"); got != "Success" {
		t.Fatalf("abort of other chats: %q", got)
	}
	select {
	case p := <-aborted:
		t.Fatalf("abort reached the worker for another chat: %s", p)
	default:
	}

	if err := a.Abort(t.Context(), "42", "u"); err != nil {
		t.Fatal(err)
	}
	if p := <-aborted; p != "/v1/completion/abort" {
		t.Errorf("abort path %q", p)
	}
	if rest, _ := io.ReadAll(reply); string(rest) != " (stopped)" {
		t.Errorf("rest of reply %q", rest)
	}
}

func TestAbortFailures(t *testing.T) {
	a := Start(t)
	mustRegister(t, a, "m", "http://w:1/")
	status := func(kv ...string) int {
		t.Helper()
		var f form
		for i := 0; i+1 < len(kv); i += 2 {
			f = append(f, field{kv[i], kv[i+1]})
		}
		resp, err := testClient.Post(a.URL()+"chat/abort", "application/x-www-form-urlencoded", strings.NewReader(f.encode()))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status("history_id", "[1]"); got != http.StatusOK {
		t.Errorf("missing user_id: %d, want 200 Success", got)
	}
	if got := status("history_id", "not a list", "user_id", "u"); got != http.StatusInternalServerError {
		t.Errorf("bad literal: %d, want 500", got)
	}
	// int(k[2]) fails on a reserved chat whose id is not a number.
	post(t, a, "worker/schedule", "name", "m", "history_id", "abc", "user_id", "v")
	if got := status("history_id", "[1]", "user_id", "u"); got != http.StatusInternalServerError {
		t.Errorf("reserved non-numeric id: %d, want 500", got)
	}
}

func TestForget(t *testing.T) {
	a := Start(t)
	mustRegister(t, a, "m", "http://w:1/")
	a.Forget()
	if got := a.Names(); len(got) != 0 {
		t.Errorf("Names() after Forget = %q", got)
	}
	// A worker that re-registers after the restart is welcome again.
	mustRegister(t, a, "m", "http://w:1/")
}

func TestSetDown(t *testing.T) {
	a := Start(t)
	base := a.URL()
	mustRegister(t, a, "m", "http://w:1/")

	a.SetDown(true)
	// A fresh connection is refused; one kept alive from before sees EOF.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	_, err := fresh.Post(base+"worker/register", "application/x-www-form-urlencoded", strings.NewReader("name=m&endpoint=x"))
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("register while down: %v, want connection refused", err)
	}
	a.SetDown(false)
	if a.URL() != base {
		t.Errorf("URL changed from %s to %s", base, a.URL())
	}
	if got := post(t, a, "worker/register", "name", "m", "endpoint", "http://w:1"); got != "Failed" {
		t.Errorf("register after coming back: %q, want Failed (table kept)", got)
	}
}

func TestSetDownCutsStream(t *testing.T) {
	a := Start(t)
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}, nil)
	mustRegister(t, a, "m", ep)
	reply, err := a.Chat(t.Context(), "m", "1", "u", "[]", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Close()
	first := make([]byte, 5)
	if _, err := io.ReadFull(reply, first); err != nil {
		t.Fatal(err)
	}
	a.SetDown(true)
	if _, err := io.ReadAll(reply); err == nil {
		t.Error("the reply ended cleanly, want it cut")
	}
	a.SetDown(false)
	// The kernel's finally runs once the relay notices; the row is free.
	waitFree(t, a, "m")
}

// waitFree polls until the only row under name is READY and unreserved.
func waitFree(t *testing.T, a *Agent, name string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := a.Table(name)
		if len(st) == 1 && st[0].Status == "READY" && !st[0].Reserved {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("row not released: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRestart(t *testing.T) {
	a := Start(t)
	healthy := worker(t, func(http.ResponseWriter, *http.Request) {}, map[string]http.HandlerFunc{
		"GET /health": func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
	})
	noHealth := worker(t, func(http.ResponseWriter, *http.Request) {}, nil)
	mustRegister(t, a, "m", healthy)
	mustRegister(t, a, "m", noHealth)
	mustRegister(t, a, "n", noHealth)
	post(t, a, "worker/schedule", "name", "m", "history_id", "1", "user_id", "u")

	a.Restart(t.Context())
	if got := a.Names(); !slices.Equal(got, []string{"m"}) {
		t.Errorf("Names() = %q, want [m]", got)
	}
	if got := a.Table("m"); !slices.Equal(got, []EndpointState{{URL: healthy, Status: "READY"}}) {
		t.Errorf("Table(m) = %+v, want only the healthy endpoint, free", got)
	}
}

func TestWaitEndpoints(t *testing.T) {
	a := Start(t)
	var wg sync.WaitGroup
	wg.Go(func() {
		for _, ep := range []string{"http://w:1/", "http://w:2/"} {
			resp, err := testClient.PostForm(a.URL()+"worker/register", url.Values{"name": {"m"}, "endpoint": {ep}})
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		}
	})
	defer wg.Wait()
	got := a.WaitEndpoints(t, "m", func(eps []string) bool { return len(eps) == 2 }, 5*time.Second)
	if !slices.Equal(got, []string{"http://w:1", "http://w:2"}) {
		t.Errorf("WaitEndpoints = %q", got)
	}

	ft := &fatalRecorder{TB: t}
	a.WaitEndpoints(ft, "m", func(eps []string) bool { return len(eps) == 3 }, 20*time.Millisecond)
	if !strings.Contains(ft.msg, `["http://w:1" "http://w:2"]`) {
		t.Errorf("timeout message %q does not show the last state", ft.msg)
	}
}

// fatalRecorder keeps a Fatalf message instead of stopping the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestParseQuery(t *testing.T) {
	got := parseQuery("a=1&&b&c=x+y%21&a=2&d=%zz&=e")
	want := form{{"a", "1"}, {"b", ""}, {"c", "x y!"}, {"a", "2"}, {"d", "%zz"}, {"", "e"}}
	if !slices.Equal(got, want) {
		t.Errorf("parseQuery = %q, want %q", got, want)
	}
	if got := got.get("a"); got != (optional{"1", true}) {
		t.Errorf("get(a) = %+v, want the first value", got)
	}
	if got := got.firstValues().encode(); got != "a=1&b=&c=x+y%21&d=%25zz&=e" {
		t.Errorf("re-encoded %q", got)
	}
}

func FuzzParseQuery(f *testing.F) {
	f.Add("name=m&input=%5B%5D&history_id=1")
	f.Add("a&&=%zz+")
	f.Fuzz(func(t *testing.T, s string) {
		once := parseQuery(s)
		if again := parseQuery(once.encode()); !slices.Equal(once, again) {
			t.Errorf("encode/parse changed %q to %q", once, again)
		}
	})
}

func FuzzReplyDecoder(f *testing.F) {
	f.Add([]byte("h\xc3\xa9llo \xe2\x98\x83"), uint8(2))
	f.Add([]byte("\xff\xe2\x98"), uint8(1))
	f.Fuzz(func(t *testing.T, p []byte, cut uint8) {
		whole := newReplyDecoder("text/plain; charset=utf-8")
		want := append(whole.decode(p), whole.flush()...)
		if !utf8.Valid(want) {
			t.Fatalf("invalid UTF-8 out of %q", p)
		}
		i := int(cut) % (len(p) + 1)
		split := newReplyDecoder("text/plain; charset=utf-8")
		got := append(split.decode(p[:i]), split.decode(p[i:])...)
		got = append(got, split.flush()...)
		if string(got) != string(want) {
			t.Errorf("cut at %d: %q, whole: %q", i, got, want)
		}
	})
}

func TestChatUsesContext(t *testing.T) {
	a := Start(t)
	ep := worker(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "x")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	}, nil)
	mustRegister(t, a, "m", ep)
	ctx, cancel := context.WithCancel(t.Context())
	reply, err := a.Chat(ctx, "m", "1", "u", "[]", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Close()
	if _, err := io.ReadFull(reply, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := io.ReadAll(reply); !errors.Is(err, context.Canceled) {
		t.Errorf("read after cancel: %v, want context.Canceled", err)
	}
	// The front end left: the relay stops and frees the row.
	waitFree(t, a, "m")
}
