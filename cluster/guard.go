package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
)

// The guard stands between the network and the code that trusts its input:
// protoactor's endpoint reader, which indexes and decodes what a peer sends
// without a check or a recover (a type it does not know is a nil
// dereference that ends the process), and the gossip delegate. What it
// turns away is counted and logged sparsely, so a scanner or a broken peer
// can fill neither the node nor its log.
type guard struct {
	logger  *slog.Logger
	metrics *guardMetrics

	refusedLog, droppedLog, panicLog, gossipLog sparseLog
}

// Why a connection or a message was turned away: the label values of the
// guard's counters.
var (
	refusalReasons = []string{"no_certificate", "bad_certificate", "not_tls", "incomplete", "handshake"}
	dropReasons    = []string{"unknown_type", "undecodable", "malformed", "serializer", "unary_call"}
	gossipParts    = []string{"message", "state", "meta"}
)

// logEvery is the most often the guard logs one kind of event.
const logEvery = 10 * time.Second

// handshakeTimeout bounds how long a connection to the remote port may take
// to complete its handshake, so that connections that say nothing cannot
// hold a goroutine each for grpc's default two minutes.
const handshakeTimeout = 10 * time.Second

func newGuard(logger *slog.Logger, reg prometheus.Registerer) *guard {
	return &guard{logger: logger, metrics: newGuardMetrics(reg)}
}

// serverOptions put the guard in front of protoactor's gRPC service.
func (g *guard) serverOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.StreamInterceptor(g.stream),
		grpc.UnaryInterceptor(g.unary),
		grpc.ConnectionTimeout(handshakeTimeout),
	}
}

// stream runs one remote stream (a peer's whole connection: protoactor
// opens one and sends every batch on it) with each batch checked on
// arrival, and ends only that stream if the handler panics all the same.
func (g *guard) stream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer func() {
		if r := recover(); r != nil {
			g.metrics.panics.Inc()
			if skipped, ok := g.panicLog.allow(); ok {
				g.logger.Error("recovered a panic on the remote link: the peer's stream ends, the node goes on",
					"peer", peerAddr(ss.Context()), "panic", r, "not_logged_since", skipped, "stack", string(debug.Stack()))
			}
			err = status.Error(codes.Internal, "the receiving node failed on this stream")
		}
	}()
	return handler(srv, &guardedStream{ServerStream: ss, g: g})
}

// unary refuses every unary call: Troupe makes none, and protoactor's
// server answers the two it declares (ListProcesses,
// GetProcessDiagnostics) with a panic.
func (g *guard) unary(ctx context.Context, _ any, info *grpc.UnaryServerInfo, _ grpc.UnaryHandler) (any, error) {
	g.drop("unary_call", info.FullMethod, peerAddr(ctx))
	return nil, status.Error(codes.Unimplemented, "not served")
}

// guardedStream checks each message as protoactor's endpoint reader
// receives it.
type guardedStream struct {
	grpc.ServerStream
	g *guard
}

func (s *guardedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if rm, ok := m.(*remote.RemoteMessage); ok {
		if b := rm.GetMessageBatch(); b != nil {
			s.g.checkBatch(b, peerAddr(s.Context()))
		}
	}
	return nil
}

// checkBatch removes from b, in place, every envelope the endpoint reader
// would crash on or fail to decode. A failed decode there would end the
// peer's whole stream and lose the good envelopes after it; here only the
// bad one goes. The batch's tables (types, targets, senders) stay as they
// are: envelopes refer to them by index.
func (g *guard) checkBatch(b *remote.MessageBatch, peer string) {
	kept := b.Envelopes[:0]
	for _, e := range b.Envelopes {
		if reason, what := envelopeProblem(b, e); reason != "" {
			g.drop(reason, what, peer)
			continue
		}
		kept = append(kept, e)
	}
	clear(b.Envelopes[len(kept):])
	b.Envelopes = kept
}

// envelopeProblem says why the endpoint reader must not see e, and what
// it was, or "" when e is fine. It checks what the reader takes on trust
// (onMessageBatch in protoactor's remote/endpoint_reader.go): the indexes
// into the batch's tables, the serializer, that the type is linked into
// this binary (protoregistry.GlobalTypes, as its proto serializer looks
// it up), that the bytes decode as that type, and the fields the reader or
// the actor system dereference in the system messages a peer may send.
func envelopeProblem(b *remote.MessageBatch, e *remote.MessageEnvelope) (reason, what string) {
	if e.TypeId < 0 || int(e.TypeId) >= len(b.TypeNames) {
		return "malformed", fmt.Sprintf("type index %d of %d", e.TypeId, len(b.TypeNames))
	}
	name := b.TypeNames[e.TypeId]
	switch {
	case e.Target < 0 || int(e.Target) >= len(b.Targets):
		return "malformed", fmt.Sprintf("%s to target index %d of %d", name, e.Target, len(b.Targets))
	case e.Sender < 0 || int(e.Sender) > len(b.Senders):
		return "malformed", fmt.Sprintf("%s from sender index %d of %d", name, e.Sender, len(b.Senders))
	case e.SerializerId != remote.DefaultSerializerID:
		// Troupe sends protobuf only; the JSON serializer would hand an
		// actor a message it never expects, and any other id is an index
		// out of range.
		return "serializer", fmt.Sprintf("%s with serializer %d", name, e.SerializerId)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		return "unknown_type", name
	}
	msg := mt.New().Interface()
	if err := proto.Unmarshal(e.MessageData, msg); err != nil {
		return "undecodable", name + ": " + err.Error()
	}
	switch m := msg.(type) {
	case *actor.Watch:
		if m.Watcher == nil {
			return "malformed", name + " without a watcher"
		}
	case *actor.Unwatch:
		if m.Watcher == nil {
			return "malformed", name + " without a watcher"
		}
	case *actor.Terminated:
		if m.Who == nil {
			return "malformed", name + " without who"
		}
	}
	return "", ""
}

func (g *guard) drop(reason, what, peer string) {
	g.metrics.dropped.WithLabelValues(reason).Inc()
	if skipped, ok := g.droppedLog.allow(); ok {
		g.logger.Warn("dropped a message from the remote link", "reason", reason, "message", what, "peer", peer, "not_logged_since", skipped)
	}
}

// gossipMalformed counts and sparsely logs gossip that could not be read.
func (g *guard) gossipMalformed(part string, err error) {
	g.metrics.gossip.WithLabelValues(part).Inc()
	if skipped, ok := g.gossipLog.allow(); ok {
		g.logger.Warn("dropped malformed gossip", "part", part, "err", err, "not_logged_since", skipped)
	}
}

// refusingCreds are TLS transport credentials that count and log the
// handshakes they refuse: grpc drops them without a word.
type refusingCreds struct {
	credentials.TransportCredentials
	g *guard
}

func (c *refusingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		reason := refusalReason(err)
		c.g.metrics.refused.WithLabelValues(reason).Inc()
		if skipped, ok := c.g.refusedLog.allow(); ok {
			c.g.logger.Warn("refused a connection to the remote port", "peer", raw.RemoteAddr().String(), "reason", reason, "err", err, "not_logged_since", skipped)
		}
	}
	return conn, info, err
}

func (c *refusingCreds) Clone() credentials.TransportCredentials {
	return &refusingCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

// refusalReason sorts a failed server handshake.
func refusalReason(err error) string {
	var header tls.RecordHeaderError
	var verify *tls.CertificateVerificationError
	var op *net.OpError
	switch {
	case errors.As(err, &header):
		return "not_tls"
	case errors.As(err, &verify):
		return "bad_certificate"
	// The peer refused this node's certificate: it trusts another CA.
	case errors.As(err, &op) && op.Op == "remote error":
		return "bad_certificate"
	// crypto/tls has no error value for it; a test pins the text.
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return "no_certificate"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.As(err, &op):
		return "incomplete"
	}
	return "handshake"
}

func peerAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok {
		return p.Addr.String()
	}
	return "unknown"
}

// sparseLog lets one line through at once, then at most one every
// logEvery, and says how many it held back in between.
type sparseLog struct {
	mu      sync.Mutex
	next    time.Time
	skipped int
}

func (s *sparseLog) allow() (skipped int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Before(s.next) {
		s.skipped++
		return 0, false
	}
	skipped, s.skipped, s.next = s.skipped, 0, now.Add(logEvery)
	return skipped, true
}
