package openai

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"

	"github.com/troupe-llm/troupe/actors"
)

// sseEvent is one event as a test compares it.
type sseEvent struct{ typ, data string }

// readEvents reads every event of body, cut into reads of step bytes (all
// at once when step is 0), and the error that ended the reading (nil for
// io.EOF).
func readEvents(body []byte, step int) ([]sseEvent, error) {
	var r io.Reader = bytes.NewReader(body)
	if step > 0 {
		r = &stepReader{data: body, step: step}
	}
	s := newSSEReader(r)
	defer s.release()
	var out []sseEvent
	for {
		typ, data, err := s.next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, sseEvent{string(typ), string(data)})
	}
}

// stepReader returns at most step bytes a read.
type stepReader struct {
	data []byte
	step int
}

func (r *stepReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), r.step)], r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestSSEReader(t *testing.T) {
	long := strings.Repeat("x", 3*readBuffer+17)
	tests := []struct {
		name string
		body string
		want []sseEvent
	}{
		{"one event", "data: {\"a\":1}\n\n", []sseEvent{{"", `{"a":1}`}}},
		{"no space after the colon", "data:{\"a\":1}\n\n", []sseEvent{{"", `{"a":1}`}}},
		{"only one space is dropped", "data:  x\n\n", []sseEvent{{"", " x"}}},
		{"CRLF", "data: a\r\n\r\ndata: b\r\n\r\n", []sseEvent{{"", "a"}, {"", "b"}}},
		{"several data lines", "data: a\ndata: b\ndata:\n\n", []sseEvent{{"", "a\nb\n"}}},
		{"an empty data line is an event", "data\n\n", []sseEvent{{"", ""}}},
		{"comments and blank lines between", ": keep-alive\n\n\n: x\ndata: a\n: inside\n\n\n", []sseEvent{{"", "a"}}},
		{"event type", "event: error\ndata: {}\n\ndata: b\n\n", []sseEvent{{"error", "{}"}, {"", "b"}}},
		{"a type without data is dropped", "event: ping\n\ndata: b\n\n", []sseEvent{{"", "b"}}},
		{"other fields ignored", "id: 7\nretry: 100\ndata: a\nunknown: x\nfield\n\n", []sseEvent{{"", "a"}}},
		{"a colon in the value", "data: a: b\n\n", []sseEvent{{"", "a: b"}}},
		{"a line longer than the buffer", "data: " + long + "\n\ndata: b\n\n", []sseEvent{{"", long}, {"", "b"}}},
		{"an event the body ends in is dropped", "data: a\n\ndata: b\n", []sseEvent{{"", "a"}}},
		{"a line the body ends in is dropped", "data: a\n\ndata: b", []sseEvent{{"", "a"}}},
		{"[DONE] the body ends in counts", "data: a\n\ndata: [DONE]\n", []sseEvent{{"", "a"}, {"", "[DONE]"}}},
		{"[DONE] without its line end does not", "data: a\n\ndata: [DONE]", []sseEvent{{"", "a"}}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		for _, step := range []int{0, 1, 2, 7} {
			got, err := readEvents([]byte(tt.body), step)
			if err != nil {
				t.Errorf("%s, reads of %d: %v", tt.name, step, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s, reads of %d:\n got %q\nwant %q", tt.name, step, got, tt.want)
			}
		}
	}
}

func TestSSEReaderLimits(t *testing.T) {
	for name, body := range map[string]string{
		"a line":            "data: " + strings.Repeat("x", maxEvent) + "\n\n",
		"an event's lines":  strings.Repeat("data: "+strings.Repeat("x", 1<<20)+"\n", 9) + "\n",
		"a line, no data":   ": " + strings.Repeat("x", maxEvent) + "\n\n",
		"in one-byte reads": "data: " + strings.Repeat("x", maxEvent) + "\n\n",
	} {
		var r io.Reader = strings.NewReader(body)
		if strings.HasPrefix(name, "in one-byte") {
			r = iotest.OneByteReader(r)
		}
		s := newSSEReader(r)
		_, _, err := s.next()
		s.release()
		if !errors.Is(err, errEventTooLong) {
			t.Errorf("%s beyond %d bytes: %v, want errEventTooLong", name, maxEvent, err)
		}
	}
}

// A read error passes through, and is not taken for the end.
func TestSSEReaderError(t *testing.T) {
	broken := errors.New("connection reset")
	s := newSSEReader(io.MultiReader(strings.NewReader("data: a\n\ndata: b\n"), iotest.ErrReader(broken)))
	defer s.release()
	if _, data, err := s.next(); err != nil || string(data) != "a" {
		t.Fatalf("first event %q, %v", data, err)
	}
	if _, _, err := s.next(); !errors.Is(err, broken) {
		t.Fatalf("error %v, want %v", err, broken)
	}
}

// referenceEvents reads a whole body as the standard says, line by line,
// the simplest way.
func referenceEvents(body string) []sseEvent {
	var out []sseEvent
	lines := strings.Split(body, "\n")
	complete := lines[:len(lines)-1] // the last is unfinished
	var data []string
	typ := ""
	for _, line := range complete {
		line = strings.TrimSuffix(line, "\r")
		if line == "" {
			if data != nil {
				out = append(out, sseEvent{typ, strings.Join(data, "\n")})
			}
			data, typ = nil, ""
			continue
		}
		if strings.HasPrefix(line, ":") {
			continue
		}
		name, value, _ := strings.Cut(line, ":")
		value = strings.TrimPrefix(value, " ")
		switch name {
		case "data":
			data = append(data, value)
		case "event":
			typ = value
		}
	}
	if data != nil && strings.HasPrefix(strings.Join(data, "\n"), "[DONE]") {
		out = append(out, sseEvent{"", strings.Join(data, "\n")})
	}
	return out
}

// The reader reads any body as the standard's simplest reading does,
// however it is cut into reads.
func FuzzSSEReader(f *testing.F) {
	f.Add([]byte("data: {\"a\":1}\n\ndata: [DONE]\n\n"), uint8(3))
	f.Add([]byte(": keep-alive\r\n\r\nevent: error\r\ndata:x\r\ndata\r\n\r\n"), uint8(1))
	f.Add([]byte("data: a\n\ndata: [DONE]"), uint8(5))
	f.Add([]byte("event: e\n\ndata: [DONE]x\n"), uint8(2))
	f.Fuzz(func(t *testing.T, body []byte, step uint8) {
		want := referenceEvents(string(body))
		for _, n := range []int{0, int(step%32) + 1} {
			got, err := readEvents(body, n)
			if err != nil {
				t.Fatalf("reads of %d: %v", n, err)
			}
			if len(got) != len(want) || (len(got) > 0 && !reflect.DeepEqual(got, want)) {
				t.Fatalf("reads of %d: %q\nwant %q", n, got, want)
			}
		}
	})
}

// Streams of shapes the fake's dialects do not write, as a server or a
// proxy in between may: the kind reads them as the standard says, and
// fails the chat with the right reason when they are broken.
func TestStreamShapes(t *testing.T) {
	chunk := func(content string) string {
		return `{"choices":[{"index":0,"delta":{"content":` + string(appendString(nil, content)) + `},"finish_reason":null}],"error":null}`
	}
	finish := `{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}`
	long := strings.Repeat("long ", 5000)
	tests := []struct {
		name, ctype, body string
		text              string
		reason            string // "" for success
	}{
		{"CRLF, comments, ids, named events, data over two lines", "text/event-stream",
			": hello\r\n\r\nid: 1\r\nevent: message\r\ndata: " + chunk("a") + "\r\n\r\nretry: 10\r\ndata: {\"choices\":\r\ndata: [{\"delta\":{\"content\":\"b\"}}]}\r\n\r\ndata: " + finish + "\r\n\r\ndata: [DONE]\r\n\r\n",
			"ab", ""},
		{"an event longer than the read buffer", "text/event-stream",
			"data: " + chunk(long) + "\n\ndata: " + finish + "\n\ndata: [DONE]\n\n", long, ""},
		{"[DONE] as the body's last line", "text/event-stream",
			"data: " + chunk("a") + "\n\ndata: [DONE]\n", "a", ""},
		{"a stream without its content type", "",
			"data: " + chunk("a") + "\n\ndata: [DONE]\n\n", "a", ""},
		{"a named error event after the first token", "text/event-stream",
			"data: " + chunk("a") + "\n\nevent: error\ndata: {\"message\":\"engine died\",\"code\":500}\n\n", "a", reasonFailedMid},
		{"a named error event that is not JSON", "text/event-stream",
			"event: error\ndata: overloaded\n\n", "", reasonFailedMid},
		{"a malformed event", "text/event-stream",
			"data: " + chunk("a") + "\n\ndata: {\"choices\":[{\"delta\":\n\ndata: [DONE]\n\n", "a", reasonMalformed},
		{"content of the wrong type", "text/event-stream",
			"data: {\"choices\":[{\"delta\":{\"content\":5}}]}\n\n", "", reasonMalformed},
		{"an event beyond the limit", "text/event-stream",
			"data: " + strings.Repeat("x", maxEvent+1) + "\n\n", "", reasonMalformed},
		{"the body ends mid-event", "text/event-stream",
			"data: " + chunk("a") + "\n\ndata: " + finish, "a", reasonEndedEarly},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var requests atomic.Int32
			ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				requests.Add(1)
				w.Header()["Content-Type"] = nil
				if tt.ctype != "" {
					w.Header().Set("Content-Type", tt.ctype)
				}
				_, _ = io.WriteString(w, tt.body)
			}))
			t.Cleanup(ts.Close)
			m := newModel(t, ts.URL+"/v1", actors.Args{"retries": 1})
			got := generate(withTimeout(t, waitBudget), m, userChat("hi"))
			if got.text() != tt.text {
				t.Errorf("text %.40q, want %.40q", got.text(), tt.text)
			}
			if tt.reason == "" {
				if got.err != nil {
					t.Fatal(got.err)
				}
				return
			}
			typedError(t, got.err, actors.Code_CODE_UNAVAILABLE, tt.reason)
			// Not retried: after the first token, or for an answer that
			// would be as malformed the next time.
			if n := requests.Load(); n != 1 {
				t.Errorf("%d requests, want 1", n)
			}
		})
	}
}
