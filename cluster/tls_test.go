package cluster

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc/credentials"
)

// Every node derives the same CA from the same key, byte for byte, and
// another key gives another CA.
func TestDeriveCA(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	a, _, err := deriveCA(key)
	if err != nil {
		t.Fatal(err)
	}
	b, _, err := deriveCA(bytes.Clone(key))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Raw, b.Raw) {
		t.Fatal("the same key derived two different CA certificates")
	}
	other, _, err := deriveCA(bytes.Repeat([]byte{8}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Raw, other.Raw) {
		t.Fatal("two keys derived the same CA")
	}
}

// handshake runs one TLS handshake over loopback between a server with
// creds and a client with cfg, and returns both sides' errors. A server
// that accepts writes one byte, so that a refusal a TLS 1.3 client only
// learns after its handshake (its certificate is checked last) shows as
// the client's error too.
func handshake(t *testing.T, creds credentials.TransportCredentials, cfg *tls.Config, plain []byte) (clientErr, serverErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		raw, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer raw.Close()
		conn, _, err := creds.ServerHandshake(raw)
		if err == nil {
			_, err = conn.Write([]byte{1})
			conn.Close()
		}
		served <- err
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if plain != nil {
		_, _ = conn.Write(plain)
		_ = conn.(*net.TCPConn).CloseWrite()
		_, clientErr = io.ReadAll(conn)
		return clientErr, <-served
	}
	c := tls.Client(conn, cfg)
	if clientErr = c.Handshake(); clientErr == nil {
		_, clientErr = c.Read(make([]byte, 1))
	}
	return clientErr, <-served
}

func testGuard() *guard { return newGuard(slog.New(slog.DiscardHandler), nil) }

// Nodes of one key talk; a node of another key, a client without a
// certificate and a client that does not speak TLS are refused, and each
// refusal is counted under its reason.
func TestKeyLinkRefusesStrangers(t *testing.T) {
	key := bytes.Repeat([]byte{1}, 32)
	server, _, err := keyTLS(key, "server")
	if err != nil {
		t.Fatal(err)
	}
	_, friend, err := keyTLS(key, "friend")
	if err != nil {
		t.Fatal(err)
	}
	_, stranger, err := keyTLS(bytes.Repeat([]byte{2}, 32), "stranger")
	if err != nil {
		t.Fatal(err)
	}
	noCert := friend.Clone()
	noCert.Certificates = nil
	oldTLS := friend.Clone()
	oldTLS.MinVersion, oldTLS.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	tests := []struct {
		name   string
		client *tls.Config
		plain  []byte
		reason string // "" when the handshake must succeed
	}{
		{"same key", friend, nil, ""},
		{"another key", stranger, nil, "bad_certificate"},
		{"no certificate", noCert, nil, "no_certificate"},
		{"not TLS", nil, []byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), "not_tls"},
		{"TLS 1.2", oldTLS, nil, "handshake"},
		{"hang-up", nil, []byte{}, "incomplete"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := testGuard()
			creds := &refusingCreds{TransportCredentials: credentials.NewTLS(server), g: g}
			clientErr, serverErr := handshake(t, creds, tt.client, tt.plain)
			if tt.reason == "" {
				if clientErr != nil || serverErr != nil {
					t.Fatalf("client: %v; server: %v", clientErr, serverErr)
				}
				return
			}
			if serverErr == nil {
				t.Fatal("the server accepted the connection")
			}
			if tt.plain == nil && clientErr == nil {
				t.Fatal("the client thinks it is connected")
			}
			for _, r := range refusalReasons {
				want := 0.0
				if r == tt.reason {
					want = 1
				}
				if got := testutil.ToFloat64(g.metrics.refused.WithLabelValues(r)); got != want {
					t.Errorf("refused{reason=%q} = %v, want %v (server error: %v)", r, got, want, serverErr)
				}
			}
		})
	}
}

// pki is an operator's CA, for the file tests.
type pki struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &pki{cert: cert, key: key}
}

// files writes the CA and a node certificate it signed with the given
// extended key usages, and returns their paths.
func (p *pki) files(t *testing.T, usages ...x509.ExtKeyUsage) TLSFiles {
	t.Helper()
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "node"},
		DNSNames: []string{"node.example"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usages}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	f := TLSFiles{Cert: filepath.Join(dir, "node.pem"), Key: filepath.Join(dir, "node.key"), CA: filepath.Join(dir, "ca.pem")}
	for path, block := range map[string]*pem.Block{
		f.Cert: {Type: "CERTIFICATE", Bytes: der},
		f.Key:  {Type: "PRIVATE KEY", Bytes: keyDER},
		f.CA:   {Type: "CERTIFICATE", Bytes: p.cert.Raw},
	} {
		if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// Nodes whose certificates one CA signed talk, whatever names the
// certificates carry; a node of another CA is refused.
func TestFileLink(t *testing.T) {
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	ca := newPKI(t)
	server, _, err := fileTLS(ca.files(t, both...))
	if err != nil {
		t.Fatal(err)
	}
	_, friend, err := fileTLS(ca.files(t, both...))
	if err != nil {
		t.Fatal(err)
	}
	_, stranger, err := fileTLS(newPKI(t).files(t, both...))
	if err != nil {
		t.Fatal(err)
	}
	g := testGuard()
	creds := &refusingCreds{TransportCredentials: credentials.NewTLS(server), g: g}
	if c, s := handshake(t, creds, friend, nil); c != nil || s != nil {
		t.Fatalf("same CA: client %v, server %v", c, s)
	}
	if c, s := handshake(t, creds, stranger, nil); c == nil || s == nil {
		t.Fatalf("another CA: client %v, server %v; want both refused", c, s)
	}
	if n := testutil.ToFloat64(g.metrics.refused.WithLabelValues("bad_certificate")); n != 1 {
		t.Errorf("refused{bad_certificate} = %v, want 1", n)
	}
}

// Bad files stop the node with an error that names the file.
func TestFileLinkErrors(t *testing.T) {
	ca := newPKI(t)
	good := ca.files(t, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	other := newPKI(t).files(t)
	serverOnly := ca.files(t, x509.ExtKeyUsageServerAuth)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	tests := []struct {
		name  string
		files TLSFiles
		want  string
	}{
		{"missing certificate", TLSFiles{Cert: missing, Key: good.Key, CA: good.CA}, missing},
		{"garbage key", TLSFiles{Cert: good.Cert, Key: garbage, CA: good.CA}, garbage},
		{"key of another certificate", TLSFiles{Cert: good.Cert, Key: other.Key, CA: good.CA}, other.Key},
		{"missing CA", TLSFiles{Cert: good.Cert, Key: good.Key, CA: missing}, missing},
		{"garbage CA", TLSFiles{Cert: good.Cert, Key: good.Key, CA: garbage}, garbage},
		{"another CA", TLSFiles{Cert: good.Cert, Key: good.Key, CA: other.CA}, good.Cert},
		{"server usage only", serverOnly, serverOnly.Cert},
		{"no key given", TLSFiles{Cert: good.Cert, CA: good.CA}, "all three or none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{TLS: tt.files}
			err := cfg.TLS.check()
			if err == nil {
				_, _, _, err = linkTLS(cfg)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err %v, want one naming %q", err, tt.want)
			}
		})
	}
}

// Files win over the key for the remote link; with neither it is open.
func TestLinkChoice(t *testing.T) {
	files := newPKI(t).files(t)
	key := bytes.Repeat([]byte{3}, 16)
	for _, tt := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, linkOpen},
		{Config{Key: key}, linkKey},
		{Config{Key: key, TLS: files}, linkFiles},
		{Config{TLS: files}, linkFiles},
	} {
		_, _, how, err := linkTLS(tt.cfg)
		if err != nil || how != tt.want {
			t.Errorf("key %v, files %v: %q, %v; want %q", tt.cfg.Key != nil, tt.cfg.TLS.given(), how, err, tt.want)
		}
	}
}
