package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// chatSpec is one chat of the soak: what the test sends and how its client
// behaves.
type chatSpec struct {
	n       int
	gateway int // index in soakClient.gateways
	layout  string
	api     apiKind
	client  clientKind
	bad     badKind
	key     string // history_id or OpenAI user: the conversation's node
}

type apiKind int

const (
	agentForm apiKind = iota
	agentMultipart
	openaiStream
	openaiWhole
)

func (a apiKind) String() string {
	return [...]string{"agent", "agent-multipart", "openai-stream", "openai"}[a]
}

// clientKind is what the client does once its answer streams.
type clientKind int

const (
	readsAll      clientKind = iota // to the end
	hangsUpMidway                   // closes the connection after the first chunk
	abortsMidway                    // calls the abort endpoint after the first chunk, then reads to the end
)

// badKind is a request refused before any layout.
type badKind int

const (
	goodRequest  badKind = iota
	emptyHistory         // 400, troupe_chat_bad_requests_total{reason="input"}
	longHistory          // 413 over MAX_HISTORY_MESSAGES, {reason="history_messages"}
)

// endClass is how a chat ended, as its client saw it.
type endClass int

const (
	seenWhole    endClass = iota // the complete answer
	seenFailed                   // an error status, or a note ending the stream
	seenTimedOut                 // the same, saying the chat ran past its time limit
	seenAborted                  // a partial answer, ended by the abort
	seenHungUp                   // the client left mid-stream
	seenRejected                 // 429 or 503 before any layout ran the chat
	seenBadInput                 // 400 or 413 for the request itself
	seenBroken                   // anything else: no answer, a wrong one, a long error
	numClasses
)

func (c endClass) String() string {
	return [...]string{"whole", "failed", "timed_out", "aborted", "hung_up", "rejected", "bad_request", "broken"}[c]
}

// serverOutcome is the outcome a gateway must have counted for a chat its
// client saw end as c: troupe_chats_total's label.
var serverOutcome = [numClasses]string{seenWhole: "completed", seenFailed: "failed", seenTimedOut: "timed_out",
	seenAborted: "aborted", seenHungUp: "cancelled", seenRejected: "rejected"}

// chatRecord is what one chat's client saw.
type chatRecord struct {
	spec   chatSpec
	class  endClass
	status int
	chatID string // X-Chat-Id: the gateway's id, in its log line
	node   string // X-Troupe-Node: the node that ran it
	// abortReply is the abort endpoint's msg: "Aborted." or "No chat to
	// abort.".
	abortReply string
	sent       time.Time
	// why is what went wrong: the error the client read, or for a broken
	// chat what the test found.
	why string
}

func (r chatRecord) String() string {
	return fmt.Sprintf("chat %d (%s %s via gateway %d, id %s, node %s): %s, status %d: %s",
		r.spec.n, r.spec.layout, r.spec.api, r.spec.gateway+1, r.chatID, r.node, r.class, r.status, r.why)
}

// soakChatWait is how long a client waits for a whole answer: far past
// CHAT_TIMEOUT, so that a chat that reaches it was never ended.
const soakChatWait = 30 * time.Second

// maxErrorText is the longest error a user may be shown: a sentence.
const maxErrorText = 160

// soakClient sends the soak's chats through the gateways of nodes 1 and 2.
type soakClient struct {
	http     *http.Client
	gateways []*process
	// slots are, per gateway, the Agent endpoint slots free for a chat its
	// client will abort: the abort endpoint stops every chat of a slot, so
	// each such chat has one of its own while it runs.
	slots []chan int
}

// abortSlots is how many chats a gateway has open at once for aborting:
// slots 1 to 16 exist while a layout of the node has 17 places or more.
const abortSlots = 16

func newSoakClient(gateways ...*process) *soakClient {
	c := &soakClient{
		// Go's own idle timeout (90 s), under the node's IDLE_TIMEOUT, which
		// a connection the transport dialled and kept unused gets too.
		http:     &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: soakClients}},
		gateways: gateways,
	}
	for range gateways {
		slots := make(chan int, abortSlots)
		for s := 1; s <= abortSlots; s++ {
			slots <- s
		}
		c.slots = append(c.slots, slots)
	}
	return c
}

// closeIdle closes the client's kept-alive connections: the nodes' count
// of goroutines then has none serving them.
func (c *soakClient) closeIdle() { c.http.CloseIdleConnections() }

// chat sends one chat and reads its answer as spec says.
func (c *soakClient) chat(ctx context.Context, spec chatSpec) chatRecord {
	rec := chatRecord{spec: spec, sent: time.Now(), class: seenBroken}
	ctx, cancel := context.WithTimeout(ctx, soakChatWait)
	defer cancel()
	slot := 0
	if spec.client == abortsMidway {
		select {
		case slot = <-c.slots[spec.gateway]:
			defer func() { c.slots[spec.gateway] <- slot }()
		case <-ctx.Done():
			rec.why = "no abort slot came free"
			return rec
		}
	}
	req, err := c.request(ctx, spec, slot)
	if err != nil {
		rec.why = err.Error()
		return rec
	}
	// A request that fails says on what connection: a kept-alive one the
	// node closed under it, or a new one.
	var conn httptrace.GotConnInfo
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { conn = info },
	}))
	resp, err := c.http.Do(req)
	if err != nil {
		rec.why = "request: " + err.Error()
		if conn.Conn != nil {
			rec.why = fmt.Sprintf("request on the connection from %v (reused %v, idle for %v): %v", conn.Conn.LocalAddr(), conn.Reused, conn.IdleTime, err)
		}
		return rec
	}
	defer resp.Body.Close()
	rec.status = resp.StatusCode
	rec.chatID = resp.Header.Get("X-Chat-Id")
	rec.node = resp.Header.Get("X-Troupe-Node")
	if resp.StatusCode != http.StatusOK {
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			rec.why = "reading an error: " + err.Error()
			return rec
		}
		rec.class, rec.why = classifyError(spec, resp.StatusCode, rec.chatID, body)
		return rec
	}
	want := soakAnswers[spec.layout]
	switch spec.api {
	case agentForm, agentMultipart:
		br := bufio.NewReader(resp.Body)
		var body []byte
		if spec.client != readsAll {
			// The first chunk: whatever the first read returns.
			first := make([]byte, 4096)
			n, err := br.Read(first)
			body = first[:n]
			if err != nil && !errors.Is(err, io.EOF) {
				rec.why = "reading the first chunk: " + err.Error()
				return rec
			}
			if spec.client == hangsUpMidway && err == nil {
				rec.class = seenHungUp
				return rec // the deferred Close drops the connection
			}
			if spec.client == abortsMidway && err == nil {
				rec.abortReply, err = c.abort(ctx, spec.gateway, slot)
				if err != nil {
					rec.why = err.Error()
					return rec
				}
			}
		}
		rest, err := io.ReadAll(br)
		if err != nil {
			rec.why = "reading the answer: " + err.Error()
			return rec
		}
		body = append(body, rest...)
		rec.class, rec.why = classifyText(spec, want, string(body), rec.abortReply)
	case openaiStream:
		rec.class, rec.why = readEvents(spec, want, resp.Body)
	case openaiWhole:
		var v struct {
			Choices []struct {
				Message struct{ Content string } `json:"message"`
			} `json:"choices"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || len(v.Choices) != 1 {
			rec.why = fmt.Sprintf("a chat.completion that does not decode: %v", err)
			return rec
		}
		if got := v.Choices[0].Message.Content; got != want {
			rec.why = fmt.Sprintf("answered %q", got)
			return rec
		}
		rec.class = seenWhole
	}
	return rec
}

// request builds the HTTP request of a chat. An aborting chat goes
// through its own slot of the Agent endpoint.
func (c *soakClient) request(ctx context.Context, spec chatSpec, slot int) (*http.Request, error) {
	messages := 1
	if spec.bad == longHistory {
		messages = soakMaxMessages + 1
	}
	gw := c.gateways[spec.gateway]
	switch spec.api {
	case openaiStream, openaiWhole:
		body := map[string]any{"model": spec.layout, "stream": spec.api == openaiStream, "user": spec.key}
		var msgs []map[string]string
		for i := range messages {
			msgs = append(msgs, map[string]string{"role": []string{"user", "assistant"}[i%2], "content": fmt.Sprintf("message %d", i)})
		}
		if spec.bad == emptyHistory {
			msgs = []map[string]string{}
		}
		body["messages"] = msgs
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw.url("/v1/chat/completions"), bytes.NewReader(b))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return req, err
	}
	var history []map[string]any
	for i := range messages {
		history = append(history, map[string]any{"msg": fmt.Sprintf("message %d", i), "isbot": i%2 == 1})
	}
	if spec.bad == emptyHistory {
		history = []map[string]any{}
	}
	input, err := json.Marshal(history)
	if err != nil {
		return nil, err
	}
	form := url.Values{"input": {string(input)}, "name": {spec.layout}}
	if spec.key != "" {
		form.Set("history_id", spec.key)
		form.Set("user_id", "soak")
	}
	path := "/v1/completion"
	if slot > 0 {
		path = fmt.Sprintf("/v1/completion/%d", slot)
	}
	if spec.api == agentMultipart {
		var b bytes.Buffer
		w := multipart.NewWriter(&b)
		for k, vs := range form {
			if err := w.WriteField(k, vs[0]); err != nil {
				return nil, err
			}
		}
		if err := w.Close(); err != nil {
			return nil, err
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw.url(path), &b)
		if err == nil {
			req.Header.Set("Content-Type", w.FormDataContentType())
		}
		return req, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, gw.url(path), strings.NewReader(form.Encode()))
	if err == nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return req, err
}

// abort calls the Agent endpoint's abort for a slot, as the Agent's
// chat/abort does, and returns its msg.
func (c *soakClient) abort(ctx context.Context, gateway, slot int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.gateways[gateway].url(fmt.Sprintf("/v1/completion/%d/abort", slot)), nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", fmt.Errorf("abort: %w", err)
	}
	defer resp.Body.Close()
	var v struct{ Msg string }
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("abort: status %d, %v", resp.StatusCode, err)
	}
	return v.Msg, nil
}

// reach sends steady chats through a gateway until one runs on node: the
// warm-up's way to open every connection the run will use.
func (c *soakClient) reach(t *testing.T, gateway int, node string) {
	t.Helper()
	for i := range 200 {
		rec := c.chat(context.Background(), chatSpec{n: -1, gateway: gateway, layout: "steady", api: agentForm, key: fmt.Sprintf("reach-%d-%s-%d", gateway, node, i)})
		if rec.class != seenWhole {
			t.Fatalf("warm-up chat: %s", rec)
		}
		if rec.node == node {
			return
		}
	}
	t.Fatalf("no chat through gateway %d ran on %s", gateway+1, node)
}

// burst sends n chats of a layout at once, spread over both gateways and
// all nodes: the warm-up's way to grow what a node sizes to its busiest
// moment (queues, maps, connections) as the run will. Their answers need
// only be proper ones.
func (c *soakClient) burst(t *testing.T, layout string, n int) {
	t.Helper()
	recs := make([]chatRecord, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			recs[i] = c.chat(context.Background(), chatSpec{n: -1, gateway: i % len(c.gateways), layout: layout, api: agentForm, key: fmt.Sprintf("burst-%s-%d", layout, i)})
		}()
	}
	wg.Wait()
	for _, r := range recs {
		if r.class == seenBroken {
			t.Fatalf("warm-up burst: %s", r)
		}
	}
}

// classifyError reads an answer with an error status. A chat with an id
// reached a layout: it failed or timed out there; one without was refused
// before (rejected), or was a bad request.
func classifyError(spec chatSpec, status int, chatID string, body []byte) (endClass, string) {
	msg := strings.TrimSpace(string(body))
	if spec.api == openaiStream || spec.api == openaiWhole {
		var v struct{ Error struct{ Message string } }
		if err := json.Unmarshal(body, &v); err != nil || v.Error.Message == "" {
			return seenBroken, fmt.Sprintf("an error that is not OpenAI's: %q", body)
		}
		msg = v.Error.Message
	}
	if len(msg) > maxErrorText || strings.Contains(msg, "\n") {
		return seenBroken, fmt.Sprintf("an error too long for a chat window: %q", msg)
	}
	switch {
	case spec.bad == emptyHistory && status == http.StatusBadRequest && chatID == "",
		spec.bad == longHistory && status == http.StatusRequestEntityTooLarge && chatID == "":
		return seenBadInput, ""
	case spec.bad != goodRequest:
		return seenBroken, fmt.Sprintf("a bad request answered %d: %q", status, msg)
	case chatID == "" && (status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable):
		return seenRejected, msg
	case chatID == "":
		return seenBroken, fmt.Sprintf("status %d without a chat id: %q", status, msg)
	case status == http.StatusGatewayTimeout && isTimeLimit(msg):
		return seenTimedOut, msg
	case status >= 500:
		return seenFailed, msg
	}
	return seenBroken, fmt.Sprintf("status %d: %q", status, msg)
}

// isTimeLimit reports whether an error says the chat ran past
// CHAT_TIMEOUT, as the gateway words it.
func isTimeLimit(msg string) bool {
	return strings.Contains(strings.ToLower(msg), "the chat ran past its time limit")
}

// classifyText reads a whole Agent answer of status 200.
func classifyText(spec chatSpec, want, body, abortReply string) (endClass, string) {
	if text, note, ok := strings.Cut(body, "\n\n[Error: "); ok {
		reason, ok := strings.CutSuffix(note, ".]\n")
		switch {
		case !ok || len(reason) > maxErrorText || strings.Contains(reason, "\n"):
			return seenBroken, fmt.Sprintf("a stream that ends with %q", note)
		case !strings.HasPrefix(want, text):
			return seenBroken, fmt.Sprintf("a cut answer %q", text)
		case isTimeLimit(reason):
			return seenTimedOut, reason
		}
		return seenFailed, reason
	}
	switch {
	case body == want:
		return seenWhole, ""
	case spec.client == abortsMidway && abortReply == "Aborted." && strings.HasPrefix(want, body):
		return seenAborted, ""
	}
	return seenBroken, fmt.Sprintf("answered %q (abort: %q)", body, abortReply)
}

// readEvents reads an OpenAI stream: a whole one ends with [DONE], a failed
// one with an error event; a client that hangs up leaves after the first
// content.
func readEvents(spec chatSpec, want string, body io.Reader) (endClass, string) {
	s := bufio.NewScanner(body)
	var text strings.Builder
	for s.Scan() {
		data, ok := strings.CutPrefix(s.Text(), "data: ")
		if !ok {
			continue
		}
		if data == "[DONE]" {
			if text.String() != want {
				return seenBroken, fmt.Sprintf("streamed %q", text.String())
			}
			return seenWhole, ""
		}
		var ev struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
			Error *struct{ Message string } `json:"error"`
		}
		if err := json.Unmarshal([]byte(data), &ev); err != nil {
			return seenBroken, fmt.Sprintf("an event that does not decode: %q", data)
		}
		if ev.Error != nil {
			msg := ev.Error.Message
			switch {
			case len(msg) > maxErrorText:
				return seenBroken, fmt.Sprintf("an error too long for a chat window: %q", msg)
			case !strings.HasPrefix(want, text.String()):
				return seenBroken, fmt.Sprintf("a cut answer %q", text.String())
			case isTimeLimit(msg):
				return seenTimedOut, msg
			}
			return seenFailed, msg
		}
		for _, c := range ev.Choices {
			text.WriteString(c.Delta.Content)
		}
		if spec.client == hangsUpMidway && text.Len() > 0 {
			return seenHungUp, ""
		}
	}
	if err := s.Err(); err != nil {
		return seenBroken, "reading the stream: " + err.Error()
	}
	return seenBroken, fmt.Sprintf("a stream that stops after %q", text.String())
}

// ledger is every chat of a load, as its client saw it.
type ledger struct {
	mu       sync.Mutex
	records  []chatRecord
	problems []string
	took     time.Duration
}

func (l *ledger) add(r chatRecord) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.records = append(l.records, r)
}

func (l *ledger) problem(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.problems = append(l.problems, fmt.Sprintf(format, args...))
}

// broken lists the chats that got no proper answer, and the load's own
// problems.
func (l *ledger) brokenChats() []string {
	out := append([]string(nil), l.problems...)
	for _, r := range l.records {
		if r.class == seenBroken {
			out = append(out, r.String())
		}
	}
	return out
}

// tally counts the chats by class, for the summary.
func (l *ledger) tally() string {
	var n [numClasses]int
	for _, r := range l.records {
		n[r.class]++
	}
	var parts []string
	for c := range numClasses {
		parts = append(parts, fmt.Sprintf("%s %d", c, n[c]))
	}
	return strings.Join(parts, ", ")
}
