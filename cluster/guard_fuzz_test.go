package cluster

import (
	"testing"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/hashicorp/memberlist"
	"google.golang.org/protobuf/proto"

	"github.com/troupe-llm/troupe/actors"
)

// FuzzCheckBatch gives the guard batches as any peer could send them, then
// does with what it kept what protoactor's endpoint reader does
// (onMessageBatch in remote/endpoint_reader.go): that must neither panic
// nor fail to decode.
func FuzzCheckBatch(f *testing.F) {
	watch := &remote.MessageEnvelope{TypeId: 2, MessageData: mustMarshal(f, &actor.Watch{Watcher: actor.NewPID("a:1", "w")})}
	f.Add(mustMarshal(f, testBatch(f, []string{"a", "b"}, watch)))
	f.Add(mustMarshal(f, testBatch(f, nil, &remote.MessageEnvelope{TypeId: 1, MessageData: []byte{8, 1}})))
	f.Add(mustMarshal(f, testBatch(f, []string{"a"}, &remote.MessageEnvelope{TypeId: 3, Target: 4, Sender: 9, SerializerId: 1})))
	f.Add(mustMarshal(f, testBatch(f, nil, &remote.MessageEnvelope{TypeId: 3})))
	g := testGuard()
	f.Fuzz(func(t *testing.T, data []byte) {
		var b remote.MessageBatch
		if proto.Unmarshal(data, &b) != nil {
			return // grpc's own decoding refuses it before the guard
		}
		g.checkBatch(&b, "fuzz")
		for _, e := range b.Envelopes {
			_ = b.Targets[e.Target].Id
			if e.Sender > 0 {
				_ = b.Senders[e.Sender-1].Id
			}
			msg, err := remote.Deserialize(e.MessageData, b.TypeNames[e.TypeId], e.SerializerId)
			if err != nil {
				t.Fatalf("the guard kept an envelope protoactor cannot decode: %v", err)
			}
			switch m := msg.(type) {
			case *actor.Terminated:
				_ = m.Who.Address
			case *actor.Watch:
				_ = m.Watcher.Id
			case *actor.Unwatch:
				_ = m.Watcher.Id
			}
		}
	})
}

// FuzzGossip gives the gossip delegate's entry points bytes as any member
// could send them: a message, a push/pull state, and a node's metadata
// through its whole life (alive, join, update, leave). None may panic.
func FuzzGossip(f *testing.F) {
	load := mustMarshal(f, &actors.NodeLoad{Node: "peer", Seq: 3, Layouts: []*actors.LayoutLoad{{Layout: "llm", Capacity: 4, Healthy: true}}})
	f.Add(append([]byte{msgLoad}, load...))
	f.Add(load)
	f.Add(mustMarshal(f, &actors.NodeMeta{ProtocolVersion: actors.ProtocolVersion, RemoteAddress: "127.0.0.1:1", Layouts: []string{"llm"}}))
	f.Add([]byte{})
	f.Add([]byte{msgLoad, 0x0a, 200})
	c := gossipCluster(f)
	d := (*delegate)(c)
	f.Fuzz(func(t *testing.T, data []byte) {
		d.NotifyMsg(data)
		d.MergeRemoteState(data, false)
		node := &memberlist.Node{Name: "peer", Meta: data}
		_ = d.NotifyAlive(node)
		_ = d.NotifyMerge([]*memberlist.Node{node})
		d.NotifyJoin(node)
		d.NotifyMsg(data)
		d.NotifyUpdate(node)
		d.NotifyLeave(node)
	})
}
