package cluster

import (
	"bytes"
	"crypto/tls"
	"net"
	"testing"

	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc/credentials"
)

// BenchmarkCheckBatch is the guard's cost on a batch of 16 chunks, the
// price of decoding each envelope once before protoactor does.
func BenchmarkCheckBatch(b *testing.B) {
	texts := make([]string, 16)
	for i := range texts {
		texts[i] = "a token or two"
	}
	batch := testBatch(b, texts)
	envelopes := batch.Envelopes
	g := testGuard()
	b.ReportAllocs()
	for b.Loop() {
		batch.Envelopes = append(make([]*remote.MessageEnvelope, 0, len(envelopes)), envelopes...)
		g.checkBatch(batch, "bench")
	}
	if len(batch.Envelopes) != len(texts) {
		b.Fatalf("kept %d of %d envelopes", len(batch.Envelopes), len(texts))
	}
}

// BenchmarkKeyHandshake is one mutual TLS handshake between two nodes of
// one key over loopback: what each new node-to-node connection costs.
func BenchmarkKeyHandshake(b *testing.B) {
	key := bytes.Repeat([]byte{1}, 32)
	server, client, err := keyTLS(key, "bench")
	if err != nil {
		b.Fatal(err)
	}
	creds := credentials.NewTLS(server)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error)
	// The server side ends when the listener closes, as the benchmark
	// returns.
	go func() {
		for {
			raw, err := ln.Accept()
			if err != nil {
				return
			}
			conn, _, err := creds.ServerHandshake(raw)
			if err == nil {
				_, err = conn.Write([]byte{1})
				conn.Close()
			}
			raw.Close()
			served <- err
		}
	}()
	for b.Loop() {
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c := tls.Client(raw, client)
		if _, err := c.Read(make([]byte, 1)); err != nil {
			b.Fatal(err)
		}
		c.Close()
		if err := <-served; err != nil {
			b.Fatal(err)
		}
	}
}
