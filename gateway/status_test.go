package gateway_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/troupe-llm/troupe/actors"
	"github.com/troupe-llm/troupe/gateway"
)

var echo = actors.ModelFunc(func(_ context.Context, req *actors.ChatRequest, emit func(string) error) error {
	return emit(actors.LastUserMessage(req.History))
})

// fakeCluster is a ClusterView the test sets.
type fakeCluster struct{ joined atomic.Bool }

func (c *fakeCluster) Joined(context.Context) bool { return c.joined.Load() }
func (c *fakeCluster) Members() []gateway.MemberStatus {
	return []gateway.MemberStatus{
		{Name: "self", Self: true, State: "alive"},
		{Name: "other", State: "suspect", Layouts: []gateway.MemberLayoutStatus{{Name: "llm", Capacity: 4, Running: 1}}},
	}
}

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, strings.TrimSpace(readAll(t, resp)), resp.Header
}

// The snapshot holds the node, its members, and each layout's tree of
// actors with the numbers of its series.
func TestStatusSnapshot(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(echo, 2, 2)})
	n.server.SetStatus(gateway.StatusConfig{Node: "self", Version: "v9", Cluster: &fakeCluster{}})
	if got := readAll(t, n.post(ctxFor(t), "/v1/completion", form(userInput("hi")))); got != "hi" {
		t.Fatalf("chat: %q", got)
	}
	code, body, _ := get(t, n.http.URL+"/status.json")
	if code != 200 {
		t.Fatalf("/status.json: %d", code)
	}
	var st gateway.Status
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	if st.Node != "self" || st.Version != "v9" || st.Agent.State != "ignored" || len(st.Members) != 2 || st.Members[1].State != "suspect" {
		t.Fatalf("status: %+v", st)
	}
	if len(st.Layouts) != 1 {
		t.Fatalf("layouts: %+v", st.Layouts)
	}
	l := st.Layouts[0]
	if l.Name != "llm" || !l.Healthy || l.Capacity != 2 || l.Chats["completed"] != 1 || l.FirstChunk.Count != 1 {
		t.Fatalf("layout: %+v", l)
	}
	model := find(l.Root, "model/test")
	if model == nil || !model.Actor || model.Messages == 0 {
		t.Fatalf("no model/test actor with messages in the tree: %s", body)
	}
	if group := find(l.Root, "model"); group == nil || group.Actor {
		t.Fatalf("model is not a group of the tree: %s", body)
	}
}

func find(a *gateway.ActorStatus, path string) *gateway.ActorStatus {
	if a.Path == path {
		return a
	}
	for _, c := range a.Children {
		if f := find(c, path); f != nil {
			return f
		}
	}
	return nil
}

// Readiness: not before the node joined (then never again for that), not
// while draining.
func TestReadiness(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(echo, 2, 2)})
	c := &fakeCluster{}
	n.server.SetStatus(gateway.StatusConfig{Node: "self", Cluster: c})
	if code, body, _ := get(t, n.http.URL+"/ready"); code != 503 || !strings.Contains(body, "not joined") {
		t.Fatalf("before joining: %d %q", code, body)
	}
	c.joined.Store(true)
	if code, body, _ := get(t, n.http.URL+"/ready"); code != 200 || body != "ready" {
		t.Fatalf("joined: %d %q", code, body)
	}
	c.joined.Store(false) // members gone: still ready, it has joined once
	if code, _, _ := get(t, n.http.URL+"/ready"); code != 200 {
		t.Fatalf("after the members left: %d", code)
	}
	if code, _, _ := get(t, n.http.URL+"/health"); code != http.StatusNoContent {
		t.Fatalf("/health: %d", code)
	}
	n.server.StartDraining()
	if code, body, _ := get(t, n.http.URL+"/ready"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("draining: %d %q", code, body)
	}
	if code, _, _ := get(t, n.http.URL+"/health"); code != http.StatusNoContent {
		t.Fatalf("/health while draining: %d", code)
	}
}

// POST /drain runs the node's drain for a client on its own host only.
func TestDrainEndpoint(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(echo, 2, 2)})
	drain := func(remote string) int {
		req := httptest.NewRequest(http.MethodPost, "/drain", nil)
		req.RemoteAddr = remote
		w := httptest.NewRecorder()
		n.server.Handler().ServeHTTP(w, req)
		return w.Code
	}
	if code := drain("127.0.0.1:5000"); code != http.StatusNotFound {
		t.Fatalf("drain with no drain configured: %d", code)
	}
	var drained atomic.Int32
	n.server.SetStatus(gateway.StatusConfig{Node: "self", Drain: func(context.Context) error {
		drained.Add(1)
		return nil
	}})
	if code := drain("10.1.2.3:5000"); code != http.StatusForbidden || drained.Load() != 0 {
		t.Fatalf("drain from another host: %d, drained %d", code, drained.Load())
	}
	if code := drain("[::1]:5000"); code != http.StatusNoContent || drained.Load() != 1 {
		t.Fatalf("drain from this host: %d, drained %d", code, drained.Load())
	}
	if code, body, _ := get(t, n.http.URL+"/ready"); code != 503 || !strings.Contains(body, "draining") {
		t.Fatalf("/ready after a drain: %d %q", code, body)
	}
}

// GET / serves the page, whole, from the binary.
func TestStatusPage(t *testing.T) {
	n := startNode(t, actors.PipelineSpec{Model: modelOf(echo, 2, 2)})
	code, body, h := get(t, n.http.URL+"/")
	if code != 200 || !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(body, `fetch("status.json"`) {
		t.Fatalf("GET /: %d %s", code, h.Get("Content-Type"))
	}
	if strings.Contains(body, "http://") || strings.Contains(body, "https://") {
		t.Fatal("the page loads something from elsewhere")
	}
}
