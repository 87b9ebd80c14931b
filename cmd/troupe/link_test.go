package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	byteorder "encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/troupe-llm/troupe/cluster"
)

// linkKey is the CLUSTER_KEY of the link tests' clusters.
const linkKey = "the link tests' cluster key"

// reflectLayout answers a chat with its prompt, in one chunk: a marker in
// the prompt crosses the link whole, both ways.
const reflectLayout = "version: 1\nllm:\n  class: reflect\n  args: {}\n"

// linkCA derives the cluster CA of a CLUSTER_KEY as docs/cluster.md
// describes it, apart from the cluster package: a node that accepts this
// test's certificates follows the documented recipe.
func linkCA(t *testing.T, clusterKey string) (*x509.Certificate, ed25519.PrivateKey) {
	t.Helper()
	key, err := cluster.ParseKey(clusterKey)
	if err != nil {
		t.Fatal(err)
	}
	seed, err := hkdf.Key(sha256.New, key, nil, "troupe remote link CA v1", ed25519.SeedSize)
	if err != nil {
		t.Fatal(err)
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	skid := sha256.Sum256(pub)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Troupe cluster CA"},
		NotBefore: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC), NotAfter: time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign, SubjectKeyId: skid[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return ca, priv
}

// linkClient is a TLS client that trusts the CA of linkKey, as a member
// does, and shows a certificate signed by the CA of certKey ("": none).
func linkClient(t *testing.T, certKey string) *tls.Config {
	t.Helper()
	ca, _ := linkCA(t, linkKey)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: "troupe-node"}
	if certKey == "" {
		return cfg
	}
	signer, signerKey := linkCA(t, certKey)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test client"}, DNSNames: []string{"troupe-node"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}, signer, pub, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}
	return cfg
}

// remoteOf is the remote address of a member started with REMOTE_PORT.
func remoteOf(m *member) string { return "127.0.0.1:" + m.env["REMOTE_PORT"] }

// remotePeer is a connection to a node's remote port that speaks as a
// peer's endpoint writer does.
type remotePeer struct {
	conn   *grpc.ClientConn
	stream remote.Remoting_ReceiveClient
	cancel context.CancelFunc
}

// connect opens a remote stream to addr and sends protoactor's connect
// request; it returns once the node has answered, or with the error that
// stopped it.
func connect(addr string, creds credentials.TransportCredentials) (*remotePeer, error) {
	conn, err := grpc.Dial(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	p := &remotePeer{conn: conn, cancel: cancel}
	fail := func(err error) (*remotePeer, error) {
		p.close()
		return nil, err
	}
	if p.stream, err = remote.NewRemotingClient(conn).Receive(ctx); err != nil {
		return fail(err)
	}
	err = p.stream.Send(&remote.RemoteMessage{MessageType: &remote.RemoteMessage_ConnectRequest{ConnectRequest: &remote.ConnectRequest{
		ConnectionType: &remote.ConnectRequest_ServerConnection{ServerConnection: &remote.ServerConnection{SystemId: "link-test", Address: "127.0.0.1:1"}}}}})
	if err != nil {
		return fail(err)
	}
	resp, err := p.stream.Recv()
	if err != nil {
		return fail(err)
	}
	if resp.GetConnectResponse() == nil {
		return fail(fmt.Errorf("answered %v, not a connect response", resp))
	}
	return p, nil
}

func (p *remotePeer) send(t *testing.T, b *remote.MessageBatch) {
	t.Helper()
	if err := p.stream.Send(&remote.RemoteMessage{MessageType: &remote.RemoteMessage_MessageBatch{MessageBatch: b}}); err != nil {
		t.Fatal(err)
	}
}

func (p *remotePeer) close() {
	p.cancel()
	p.conn.Close()
}

// routedChat sends a chat with prompt through p's gateway for the LLM
// name, and returns the status, the node that ran it and the answer.
func routedChat(t *testing.T, p *process, name, prompt string) (int, string, string) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.PostForm(p.url("/v1/completion"), url.Values{"input": {userInput(prompt)}, "name": {name}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("X-Troupe-Node"), readBody(t, resp)
}

func marker(t *testing.T, what string) string {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return what + "-" + hex.EncodeToString(b)
}

// With CLUSTER_KEY, the remote port is shut to whoever lacks the key: a
// plain gRPC client, a TLS client without a certificate and one with a
// certificate of another key are refused at the handshake and counted,
// and none of them starts a chat. A node with another key does not join.
func TestLinkRefusesStrangers(t *testing.T) {
	layout := writeTemp(t, reflectLayout)
	a := startMember(t, "node-a", layout, nil, "CLUSTER_KEY", linkKey, "REMOTE_PORT", strconv.Itoa(freePort(t)))
	waitFor(t, func() bool { return strings.Contains(a.stderr.String(), "the node-to-node link is locked") }, "node-a to say its link is locked")
	for _, tt := range []struct {
		name   string
		creds  credentials.TransportCredentials
		reason string
	}{
		{"plain gRPC", insecure.NewCredentials(), "not_tls"},
		{"TLS without a certificate", credentials.NewTLS(linkClient(t, "")), "no_certificate"},
		{"certificate of another key", credentials.NewTLS(linkClient(t, "another cluster's key")), "bad_certificate"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if p, err := connect(remoteOf(a), tt.creds); err == nil {
				p.close()
				t.Fatal("connected to a node of another key")
			} else {
				t.Logf("refused: %v", err)
			}
			series := fmt.Sprintf("troupe_remote_refused_total{reason=%q}", tt.reason)
			waitFor(t, func() bool { return a.metric(t, series) >= 1 }, series)
		})
	}
	// The same client with the key's certificate is let in: the refusals
	// above are the key's doing, not the client's.
	p, err := connect(remoteOf(a), credentials.NewTLS(linkClient(t, linkKey)))
	if err != nil {
		t.Fatalf("a client with the key's certificate: %v", err)
	}
	p.close()
	if n := a.metric(t, "troupe_cluster_chats_received_total"); n != 0 {
		t.Errorf("node-a received %v chats from the remote port", n)
	}

	wrong := startMember(t, "node-wrong", layout, a, "CLUSTER_KEY", "a wrong key for this cluster", "LLM_NAME", "llm-wrong")
	waitFor(t, func() bool { return strings.Contains(wrong.stderr.String(), "cannot join the cluster yet") }, "node-wrong to fail to join")
	if n := a.metric(t, `troupe_cluster_members{state="alive"}`); n != 1 {
		t.Errorf("node-a sees %v alive members, want only itself", n)
	}
}

// An open link says so once at start-up.
func TestLinkOpenSaysSo(t *testing.T) {
	p := startProcess(t, nodeEnv(nil))
	waitFor(t, func() bool { return strings.Contains(p.stderr.String(), "the node-to-node link is open") }, "the open-link warning")
	if n := strings.Count(p.stderr.String(), "the node-to-node link is open"); n != 1 {
		t.Errorf("the open-link warning appears %d times", n)
	}
}

// operatorCA is an operator's PKI: a CA and the node certificates it
// signs, written as the files TLS_CERT, TLS_KEY and TLS_CA name.
type operatorCA struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newOperatorCA(t *testing.T) *operatorCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &operatorCA{dir: t.TempDir(), cert: cert, key: key}
	writePEM(t, filepath.Join(ca.dir, "ca.pem"), "CERTIFICATE", der)
	return ca
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// node writes a certificate for a node, and returns the settings that give
// it to the node.
func (ca *operatorCA) node(t *testing.T, name string) []string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name + ".example"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, keyFile := filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+".key")
	writePEM(t, cert, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return []string{"TLS_CERT", cert, "TLS_KEY", keyFile, "TLS_CA", filepath.Join(ca.dir, "ca.pem")}
}

// With an operator's certificate files, nodes whose certificates the CA
// signed chat over the link; the files win over CLUSTER_KEY for it, so a
// node with the right key but no files joins the gossip yet cannot send a
// chat over the link. Bad files stop a node, naming them.
func TestLinkWithFiles(t *testing.T) {
	ca := newOperatorCA(t)
	layout := writeTemp(t, reflectLayout)
	f1 := startMember(t, "node-f1", layout, nil, append([]string{"CLUSTER_KEY", linkKey, "LLM_NAME", "llm-f1"}, ca.node(t, "node-f1")...)...)
	f2 := startMember(t, "node-f2", layout, f1, append([]string{"CLUSTER_KEY", linkKey, "LLM_NAME", "llm-f2"}, ca.node(t, "node-f2")...)...)
	f1.waitAlive(t, 2)
	f2.waitAlive(t, 2)
	prompt := marker(t, "files")
	if code, node, answer := routedChat(t, f1.process, "llm-f2", prompt); code != 200 || node != "node-f2" || answer != prompt {
		t.Fatalf("a chat from node-f1 to node-f2: %d from %q: %q", code, node, answer)
	}

	keyOnly := startMember(t, "node-key", layout, f1, "CLUSTER_KEY", linkKey, "LLM_NAME", "llm-key")
	keyOnly.waitAlive(t, 3)
	code, node, answer := routedChat(t, keyOnly.process, "llm-f1", prompt)
	if code == 200 && answer == prompt {
		t.Fatalf("a node without the files ran a chat on node-f1 (answered by %q)", node)
	}
	t.Logf("node-key's chat for node-f1: %d %q", code, answer)
	waitFor(t, func() bool { return f1.metric(t, `troupe_remote_refused_total{reason="bad_certificate"}`) >= 1 },
		"node-f1 to count node-key's refused handshake")
	if n := f1.metric(t, "troupe_cluster_chats_received_total"); n != 0 {
		t.Errorf("node-f1 received %v chats", n)
	}

	files := ca.node(t, "node-bad")
	cert, key, caFile := files[1], files[3], files[5]
	missing := filepath.Join(t.TempDir(), "missing.pem")
	garbage := writeTemp(t, "not a certificate")
	for _, tt := range []struct {
		name string
		env  []string
		want []string
	}{
		{"missing certificate", []string{"TLS_CERT", missing, "TLS_KEY", key, "TLS_CA", caFile}, []string{missing}},
		{"garbage CA", []string{"TLS_CERT", cert, "TLS_KEY", key, "TLS_CA", garbage}, []string{garbage, "no PEM certificate"}},
		{"no key", []string{"TLS_CERT", cert, "TLS_CA", caFile}, []string{"TLS_KEY not set"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(binary)
			for k, v := range nodeEnv(nil, tt.env...) {
				cmd.Env = append(cmd.Env, k+"="+v)
			}
			out, err := runBounded(t, cmd)
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit: %v; output:\n%s", err, out)
			}
			for _, want := range tt.want {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
		})
	}
}

// A capture of the loopback traffic on both nodes' remote ports, while a
// chat goes from node-a's gateway to node-b and its answer back, holds
// the chat's marker when the link is open, and holds it nowhere when
// CLUSTER_KEY locks the link.
func TestLinkCaptureShowsNoPlaintext(t *testing.T) {
	tcpdump, err := exec.LookPath("tcpdump")
	if err != nil {
		t.Fatal("the capture test needs tcpdump: install the Debian package tcpdump (make deps does)")
	}
	if os.Geteuid() != 0 {
		const why = "the capture test reads loopback packets with tcpdump, which needs root"
		if os.Getenv("CI") == "true" {
			t.Fatal(why + ": CI must run it as root")
		}
		t.Skip(why + "; run make test as root (CI does) to include it")
	}
	for _, tt := range []struct {
		name  string
		extra []string
		open  bool
	}{
		{"open link", nil, true},
		{"CLUSTER_KEY", []string{"CLUSTER_KEY", linkKey}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			layout := writeTemp(t, reflectLayout)
			a := startMember(t, "node-a", layout, nil, append([]string{"LLM_NAME", "llm-a", "REMOTE_PORT", strconv.Itoa(freePort(t))}, tt.extra...)...)
			b := startMember(t, "node-b", layout, a, append([]string{"LLM_NAME", "llm-b", "REMOTE_PORT", strconv.Itoa(freePort(t))}, tt.extra...)...)
			a.waitAlive(t, 2)
			b.waitAlive(t, 2)

			c := startCapture(t, tcpdump, a, b)
			secret := marker(t, "troupe-secret")
			code, node, answer := routedChat(t, a.process, "llm-b", secret)
			if code != 200 || node != "node-b" || answer != secret {
				t.Fatalf("the chat: %d from %q: %q; want node-b's answer", code, node, answer)
			}
			toA, toB := c.stop(t, a, b)
			t.Logf("captured %d bytes to node-a's remote port, %d to node-b's", len(toA), len(toB))
			inRequest, inAnswer := bytes.Contains(toB, []byte(secret)), bytes.Contains(toA, []byte(secret))
			if tt.open {
				// The capture sees what crosses: the test can fail.
				if !inRequest || !inAnswer {
					t.Fatalf("open link: the marker is in the request %v, in the answer %v; the capture missed the chat", inRequest, inAnswer)
				}
				return
			}
			if inRequest || inAnswer || bytes.Contains(c.raw(t), []byte(secret)) {
				t.Fatalf("locked link: the marker crossed in plaintext (request %v, answer %v)", inRequest, inAnswer)
			}
		})
	}
}

// capture is tcpdump writing the packets of two nodes' remote ports.
type capture struct {
	cmd  *exec.Cmd
	file string
	done chan struct{} // closed when tcpdump has exited
}

func startCapture(t *testing.T, tcpdump string, a, b *member) *capture {
	t.Helper()
	c := &capture{file: filepath.Join(t.TempDir(), "remote.pcap"), done: make(chan struct{})}
	filter := fmt.Sprintf("tcp and (port %s or port %s)", a.env["REMOTE_PORT"], b.env["REMOTE_PORT"])
	// -U writes each packet as it comes, so the file can be watched.
	c.cmd = exec.Command(tcpdump, "-i", "lo", "-U", "-s", "0", "-w", c.file, filter)
	var stderr syncBuffer
	c.cmd.Stderr = &stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = c.cmd.Process.Kill()
			<-c.done
		}
	})
	waitFor(t, func() bool { return strings.Contains(stderr.String(), "listening on lo") }, "tcpdump to listen: "+stderr.String())
	return c
}

// stop ends the capture once every packet sent so far is in it: packets
// are written in order, so a last one sent now with a sentinel shows when
// the chat's are all there. It returns the TCP payloads sent to a's and to
// b's remote port.
func (c *capture) stop(t *testing.T, a, b *member) (toA, toB []byte) {
	t.Helper()
	sentinel := marker(t, "capture-end")
	conn, err := net.Dial("tcp", remoteOf(b))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte(sentinel))
	conn.Close()
	waitFor(t, func() bool { return bytes.Contains(c.raw(t), []byte(sentinel)) }, "the capture to hold the sentinel")
	if err := c.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("tcpdump did not stop")
	}
	raw := c.raw(t)
	return payloads(t, raw, a.env["REMOTE_PORT"]), payloads(t, raw, b.env["REMOTE_PORT"])
}

func (c *capture) raw(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(c.file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// payloads returns, in order, the TCP payloads of the IPv4 packets of a
// pcap capture on lo (Ethernet framing) sent to port.
func payloads(t *testing.T, pcap []byte, port string) []byte {
	t.Helper()
	if len(pcap) < 24 || byteorder.LittleEndian.Uint32(pcap) != 0xa1b2c3d4 || byteorder.LittleEndian.Uint32(pcap[20:]) != 1 {
		t.Fatalf("not a little-endian Ethernet pcap file (%d bytes)", len(pcap))
	}
	var out []byte
	for rest := pcap[24:]; len(rest) >= 16; {
		n := int(byteorder.LittleEndian.Uint32(rest[8:]))
		if len(rest) < 16+n {
			break // the last packet, cut short by the stop
		}
		frame := rest[16 : 16+n]
		rest = rest[16+n:]
		if len(frame) < 14+20 || byteorder.BigEndian.Uint16(frame[12:]) != 0x0800 {
			continue
		}
		ip := frame[14:]
		ihl := int(ip[0]&0x0f) * 4
		total := int(byteorder.BigEndian.Uint16(ip[2:]))
		if ip[9] != 6 || total > len(ip) || total < ihl+20 {
			continue
		}
		tcp := ip[ihl:total]
		if strconv.Itoa(int(byteorder.BigEndian.Uint16(tcp[2:]))) != port {
			continue
		}
		out = append(out, tcp[int(tcp[12]>>4)*4:]...)
	}
	return out
}

// unknownMessage is a message of a type no Troupe binary links: its type
// name is unknown to the receiving node.
func unknownMessage(t *testing.T) (string, []byte) {
	t.Helper()
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("madeup/secret.proto"), Package: proto.String("madeup.v9"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{Name: proto.String("Secret"), Field: []*descriptorpb.FieldDescriptorProto{{
			Name: proto.String("text"), Number: proto.Int32(1), JsonName: proto.String("text"),
			Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		}}}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	md := fd.Messages().Get(0)
	msg := dynamicpb.NewMessage(md)
	msg.Set(md.Fields().Get(0), protoreflect.ValueOfString("from a newer binary"))
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	return string(md.FullName()), b
}

// http2Truncated is a client's HTTP/2 preface and the start of a HEADERS
// frame that says 1000 bytes follow, then stops.
var http2Truncated = append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"), 0x00, 0x03, 0xe8, 0x01, 0x04, 0x00, 0x00, 0x00, 0x01, 'g', 'a')

// Bad bytes on the remote port never stop a node: a batch with a message
// type the node does not know (which crashes protoactor's reader), a
// unary call (which protoactor answers with a panic), garbage, and a
// truncated HTTP/2 frame, plain and inside TLS. Each is dropped and
// counted, and the node then serves a chat over the link as before.
func TestLinkBadBytes(t *testing.T) {
	for _, tt := range []struct {
		name  string
		extra []string
		creds func(t *testing.T) credentials.TransportCredentials
		dial  func(t *testing.T, addr string) net.Conn
	}{
		{"open link", nil,
			func(*testing.T) credentials.TransportCredentials { return insecure.NewCredentials() },
			func(t *testing.T, addr string) net.Conn {
				conn, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatal(err)
				}
				return conn
			}},
		{"CLUSTER_KEY", []string{"CLUSTER_KEY", linkKey},
			func(t *testing.T) credentials.TransportCredentials { return credentials.NewTLS(linkClient(t, linkKey)) },
			func(t *testing.T, addr string) net.Conn {
				cfg := linkClient(t, linkKey)
				cfg.NextProtos = []string{"h2"}
				conn, err := tls.Dial("tcp", addr, cfg)
				if err != nil {
					t.Fatal(err)
				}
				return conn
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			layout := writeTemp(t, reflectLayout)
			a := startMember(t, "node-a", layout, nil, append([]string{"LLM_NAME", "llm-a", "REMOTE_PORT", strconv.Itoa(freePort(t))}, tt.extra...)...)
			b := startMember(t, "node-b", layout, a, append([]string{"LLM_NAME", "llm-b", "REMOTE_PORT", strconv.Itoa(freePort(t))}, tt.extra...)...)
			a.waitAlive(t, 2)
			b.waitAlive(t, 2)

			p, err := connect(remoteOf(b), tt.creds(t))
			if err != nil {
				t.Fatal(err)
			}
			defer p.close()
			name, data := unknownMessage(t)
			p.send(t, &remote.MessageBatch{
				TypeNames: []string{name},
				Targets:   []*actor.PID{actor.NewPID(remoteOf(b), "troupe/chats")},
				Envelopes: []*remote.MessageEnvelope{{TypeId: 0, Target: 0, MessageData: data}},
			})
			waitFor(t, func() bool { return b.metric(t, `troupe_remote_dropped_total{reason="unknown_type"}`) == 1 },
				"node-b to drop and count the message of an unknown type")

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := remote.NewRemotingClient(p.conn).ListProcesses(ctx, &remote.ListProcessesRequest{}); err == nil {
				t.Fatal("a unary call was served")
			}
			waitFor(t, func() bool { return b.metric(t, `troupe_remote_dropped_total{reason="unary_call"}`) == 1 },
				"node-b to refuse and count the unary call")

			garbage := make([]byte, 4096)
			if _, err := rand.Read(garbage); err != nil {
				t.Fatal(err)
			}
			for _, bad := range [][]byte{garbage, http2Truncated, http2Truncated[:30]} {
				conn := tt.dial(t, remoteOf(b))
				_, _ = conn.Write(bad)
				conn.Close()
			}
			// Garbage outside TLS, too: on a locked link, a refused handshake.
			conn, err := net.Dial("tcp", remoteOf(b))
			if err != nil {
				t.Fatal(err)
			}
			_, _ = conn.Write(garbage)
			conn.Close()
			if tt.extra != nil {
				waitFor(t, func() bool { return b.metric(t, `troupe_remote_refused_total{reason="not_tls"}`) >= 1 },
					"node-b to count the garbage as a refused handshake")
			}

			for i, prompt := range []string{marker(t, "after"), marker(t, "again")} {
				if code, node, answer := routedChat(t, a.process, "llm-b", prompt); code != 200 || node != "node-b" || answer != prompt {
					t.Fatalf("chat %d after the bad bytes: %d from %q: %q", i, code, node, answer)
				}
			}
			if n := b.metric(t, "troupe_remote_panics_total"); n != 0 {
				t.Errorf("node-b recovered %v panics", n)
			}
		})
	}
}
