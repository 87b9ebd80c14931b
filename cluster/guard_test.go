package cluster

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

func mustMarshal(tb testing.TB, m proto.Message) []byte {
	tb.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// testBatch is a batch as a peer's endpoint writer builds it: one chunk
// for each text, to the host actor, then the given envelopes.
func testBatch(tb testing.TB, texts []string, extra ...*remote.MessageEnvelope) *remote.MessageBatch {
	b := &remote.MessageBatch{
		TypeNames: []string{"troupe.v1.Chunk", "troupe.v1.Unknown", "actor.Watch", "actor.Terminated"},
		Targets:   []*actor.PID{actor.NewPID("127.0.0.1:7947", hostName)},
		Senders:   []*actor.PID{actor.NewPID("127.0.0.1:7948", "gateway")},
	}
	for _, text := range texts {
		b.Envelopes = append(b.Envelopes, &remote.MessageEnvelope{
			TypeId: 0, MessageData: mustMarshal(tb, &actors.Chunk{ChatId: "c", Text: text}), Sender: 1})
	}
	b.Envelopes = append(b.Envelopes, extra...)
	return b
}

// The guard drops, one by one, the envelopes protoactor's endpoint reader
// would crash on or fail to decode, and keeps the others in order.
func TestCheckBatch(t *testing.T) {
	chunk := func(tb testing.TB) []byte { return mustMarshal(tb, &actors.Chunk{ChatId: "c", Text: "x"}) }
	tests := []struct {
		name   string
		bad    *remote.MessageEnvelope
		reason string
	}{
		{"unknown type", &remote.MessageEnvelope{TypeId: 1, MessageData: []byte{8, 1}}, "unknown_type"},
		{"type index out of range", &remote.MessageEnvelope{TypeId: 9, MessageData: chunk(t)}, "malformed"},
		{"negative type index", &remote.MessageEnvelope{TypeId: -1, MessageData: chunk(t)}, "malformed"},
		{"target out of range", &remote.MessageEnvelope{Target: 1, MessageData: chunk(t)}, "malformed"},
		{"negative target", &remote.MessageEnvelope{Target: -2, MessageData: chunk(t)}, "malformed"},
		{"sender out of range", &remote.MessageEnvelope{Sender: 2, MessageData: chunk(t)}, "malformed"},
		{"json serializer", &remote.MessageEnvelope{SerializerId: 1, MessageData: []byte(`{}`)}, "serializer"},
		{"serializer out of range", &remote.MessageEnvelope{SerializerId: 7, MessageData: chunk(t)}, "serializer"},
		{"truncated", &remote.MessageEnvelope{MessageData: chunk(t)[:4]}, "undecodable"},
		{"invalid UTF-8", &remote.MessageEnvelope{MessageData: []byte{0x12, 1, 0xff}}, "undecodable"},
		{"watch without watcher", &remote.MessageEnvelope{TypeId: 2}, "malformed"},
		{"terminated without who", &remote.MessageEnvelope{TypeId: 3}, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := testGuard()
			b := testBatch(t, []string{"a", "b"}, tt.bad)
			b.Envelopes = append(b.Envelopes, testBatch(t, []string{"c"}).Envelopes...)
			g.checkBatch(b, "test")
			var texts []string
			for _, e := range b.Envelopes {
				var c actors.Chunk
				if err := proto.Unmarshal(e.MessageData, &c); err != nil {
					t.Fatal(err)
				}
				texts = append(texts, c.Text)
			}
			if !slices.Equal(texts, []string{"a", "b", "c"}) {
				t.Errorf("kept %q, want the three good chunks in order", texts)
			}
			for _, r := range dropReasons {
				want := 0.0
				if r == tt.reason {
					want = 1
				}
				if got := testutil.ToFloat64(g.metrics.dropped.WithLabelValues(r)); got != want {
					t.Errorf("dropped{reason=%q} = %v, want %v", r, got, want)
				}
			}
		})
	}
}

// A batch of good envelopes passes whole and untouched.
func TestCheckBatchKeepsGood(t *testing.T) {
	g := testGuard()
	watch := &remote.MessageEnvelope{TypeId: 2, MessageData: mustMarshal(t, &actor.Watch{Watcher: actor.NewPID("a:1", "w")})}
	b := testBatch(t, []string{"a", "b"}, watch)
	want := proto.Clone(b)
	g.checkBatch(b, "test")
	if !proto.Equal(b, want) {
		t.Fatalf("a good batch changed:\n%v\nwant\n%v", b, want)
	}
}

type fakeStream struct{ grpc.ServerStream }

func (fakeStream) Context() context.Context { return context.Background() }

// A panic in the stream handler ends that stream with an error, is
// counted, and goes no further.
func TestStreamRecoversPanic(t *testing.T) {
	g := testGuard()
	err := g.stream(nil, fakeStream{}, &grpc.StreamServerInfo{}, func(any, grpc.ServerStream) error {
		var m map[string]int
		m["boom"]++
		return nil
	})
	if status.Code(err) != codes.Internal {
		t.Fatalf("err %v, want Internal", err)
	}
	if n := testutil.ToFloat64(g.metrics.panics); n != 1 {
		t.Fatalf("panics = %v, want 1", n)
	}
	want := errors.New("fine")
	if err := g.stream(nil, fakeStream{}, &grpc.StreamServerInfo{}, func(any, grpc.ServerStream) error { return want }); err != want {
		t.Fatalf("a handler's own error: got %v", err)
	}
}

// No unary call reaches protoactor, whose two unary methods panic.
func TestUnaryRefused(t *testing.T) {
	g := testGuard()
	_, err := g.unary(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/remote.Remoting/ListProcesses"},
		func(context.Context, any) (any, error) { panic("reached protoactor") })
	if status.Code(err) != codes.Unimplemented {
		t.Fatalf("err %v, want Unimplemented", err)
	}
	if n := testutil.ToFloat64(g.metrics.dropped.WithLabelValues("unary_call")); n != 1 {
		t.Fatalf("dropped{unary_call} = %v, want 1", n)
	}
}

// A flood logs one line, then one per logEvery saying how many it held
// back.
func TestSparseLog(t *testing.T) {
	var s sparseLog
	if _, ok := s.allow(); !ok {
		t.Fatal("the first event was not logged")
	}
	for range 5 {
		if _, ok := s.allow(); ok {
			t.Fatal("an event right after the first was logged")
		}
	}
	s.next = time.Now().Add(-time.Millisecond)
	if skipped, ok := s.allow(); !ok || skipped != 5 {
		t.Fatalf("after logEvery: logged %v, held back %d; want true, 5", ok, skipped)
	}
}

// gossipCluster is a Cluster with what the gossip delegate touches: a
// host, an empty set of layouts, and no network.
func gossipCluster(tb testing.TB) *Cluster {
	system := actor.NewActorSystemWithConfig(actor.Configure(actor.WithLoggerFactory(
		func(*actor.ActorSystem) *slog.Logger { return slog.New(slog.DiscardHandler) })))
	tb.Cleanup(system.Shutdown)
	c := &Cluster{
		cfg:     Config{NodeName: "self", LoadInterval: 100 * time.Millisecond},
		system:  system,
		logger:  slog.New(slog.DiscardHandler),
		guard:   testGuard(),
		layouts: actors.NewLayoutSet(map[string]*actors.Layout{}),
		members: map[string]*Member{},
		dead:    map[string]deadMember{},
		refused: map[string]bool{},
		queue:   &memberlist.TransmitLimitedQueue{NumNodes: func() int { return 1 }, RetransmitMult: 1},
	}
	c.metrics = newMetrics(nil, c)
	c.host = startHost(system, c.layouts, c.logger, c.metrics, c.applyDirect)
	tb.Cleanup(c.host.stop)
	return c
}

// Gossip that cannot be read is dropped and counted by part; what can is
// applied.
func TestMalformedGossip(t *testing.T) {
	c := gossipCluster(t)
	d := (*delegate)(c)
	meta := mustMarshal(t, &actors.NodeMeta{ProtocolVersion: actors.ProtocolVersion, RemoteAddress: "127.0.0.1:1", Layouts: []string{"llm"}})
	d.NotifyJoin(&memberlist.Node{Name: "peer", Meta: meta})
	load := mustMarshal(t, &actors.NodeLoad{Node: "peer", Seq: 1, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 4, Healthy: true}}})

	d.NotifyMsg(nil)
	d.NotifyMsg([]byte{9, 1, 2})
	d.NotifyMsg([]byte{msgLoad, 0x0a, 200}) // a field longer than the message
	d.MergeRemoteState([]byte{0xff}, false)
	if err := d.NotifyAlive(&memberlist.Node{Name: "odd", Meta: []byte{0x0a, 5, 'a'}}); err == nil {
		t.Error("a node with unreadable metadata was admitted")
	}
	d.NotifyUpdate(&memberlist.Node{Name: "peer", Meta: []byte{0x08}})
	d.NotifyMsg(append([]byte{msgLoad}, load...))

	for part, want := range map[string]float64{"message": 3, "state": 1, "meta": 2} {
		if got := testutil.ToFloat64(c.guard.metrics.gossip.WithLabelValues(part)); got != want {
			t.Errorf("gossip malformed{part=%q} = %v, want %v", part, got, want)
		}
	}
	m := c.members["peer"]
	m.mu.Lock()
	defer m.mu.Unlock()
	if l := m.load["llm"]; l.GetCapacity() != 4 || m.Meta.GetRemoteAddress() != "127.0.0.1:1" {
		t.Errorf("the good report and metadata were not kept: load %v, meta %v", l, m.Meta)
	}
}
