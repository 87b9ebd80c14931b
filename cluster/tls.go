package cluster

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"os"
	"time"

	"github.com/asynkron/protoactor-go/remote"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// TLSFiles are an operator's PEM files for the remote link: this node's
// certificate and its key, and the CA that signed every node's
// certificate. Any certificate that CA signed is a member, so it should
// sign for this cluster only. A certificate serves as client and server:
// it needs both extended key usages (serverAuth, clientAuth), or none.
type TLSFiles struct {
	Cert, Key, CA string
}

func (f TLSFiles) given() bool { return f.Cert != "" || f.Key != "" || f.CA != "" }

func (f TLSFiles) check() error {
	if f.given() && (f.Cert == "" || f.Key == "" || f.CA == "") {
		return errors.New("TLS files: give the certificate, its key and the CA, all three or none")
	}
	return nil
}

// How the remote link is locked, for the log.
const (
	linkOpen  = "open"
	linkKey   = "mutual TLS, CA derived from the cluster key"
	linkFiles = "mutual TLS, certificate files"
)

// remoteServerName is the name every key-derived node certificate carries
// and every node asks for: nodes are reached at addresses no certificate
// could list in advance, and the CA alone says who belongs.
const remoteServerName = "troupe-node"

// caLabel makes the CA's key a key for this purpose only: the same cluster
// key also encrypts gossip. Changing it splits clusters across versions.
const caLabel = "troupe remote link CA v1"

// linkTLS returns the TLS configurations of the remote link's server and
// client side, or nils for an open link, and says which it is.
func linkTLS(cfg Config) (server, client *tls.Config, how string, err error) {
	switch {
	case cfg.TLS.given():
		server, client, err = fileTLS(cfg.TLS)
		return server, client, linkFiles, err
	case len(cfg.Key) > 0:
		server, client, err = keyTLS(cfg.Key, cfg.NodeName)
		return server, client, linkKey, err
	}
	return nil, nil, linkOpen, nil
}

// deriveCA builds the cluster's CA from its key. Everything in it is
// fixed or derived (ed25519 signs deterministically), so every node builds
// the same certificate, byte for byte, and no file needs to be shared.
func deriveCA(key []byte) (*x509.Certificate, ed25519.PrivateKey, error) {
	seed, err := hkdf.Key(sha256.New, key, nil, caLabel, ed25519.SeedSize)
	if err != nil {
		return nil, nil, err
	}
	priv := ed25519.NewKeyFromSeed(seed)
	pub := priv.Public().(ed25519.PublicKey)
	// The key id is set rather than left to crypto/x509, whose choice has
	// changed between Go versions.
	skid := sha256.Sum256(pub)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Troupe cluster CA"},
		NotBefore:             time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC), // RFC 5280: no expiry
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign,
		SubjectKeyId:          skid[:20],
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, priv, err
}

// keyTLS locks the link with the CA derived from key: the node makes
// itself a fresh key and certificate, signed by that CA, at every start,
// and requires the peer's certificate to chain to the same CA both ways.
func keyTLS(key []byte, nodeName string) (server, client *tls.Config, err error) {
	ca, caKey, err := deriveCA(key)
	if err != nil {
		return nil, nil, fmt.Errorf("deriving the cluster CA: %w", err)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: nodeName},
		DNSNames:     []string{remoteServerName},
		// An hour back, for peers whose clocks are a little behind.
		NotBefore:   time.Now().Add(-time.Hour),
		NotAfter:    ca.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, pub, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("signing this node's certificate: %w", err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: priv}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   remoteServerName,
	}
	return server, client, nil
}

// fileTLS locks the link with an operator's files, checking at start-up
// that this node's own certificate would pass its peers' checks.
func fileTLS(f TLSFiles) (server, client *tls.Config, err error) {
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate %s with key %s: %w", f.Cert, f.Key, err)
	}
	pem, err := os.ReadFile(f.CA)
	if err != nil {
		return nil, nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("CA file %s: no PEM certificate in it", f.CA)
	}
	inter := x509.NewCertPool()
	for _, der := range cert.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, nil, fmt.Errorf("certificate %s: %w", f.Cert, err)
		}
		inter.AddCert(c)
	}
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return nil, nil, fmt.Errorf("certificate %s does not pass as a node's with CA %s: %w", f.Cert, f.CA, err)
		}
	}
	server = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
	}
	client = &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// The name check is replaced, not skipped: nodes are dialled at
		// addresses an operator's certificates need not list, so the peer
		// passes when its chain leads to the CA, as clients do on the
		// server side.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the node sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		},
	}
	return server, client, nil
}

// remoteOptions lock the remote link as the configuration says, and put
// the guard in front of protoactor's endpoint reader either way.
func (c *Cluster) remoteOptions() ([]remote.ConfigOption, error) {
	server, client, how, err := linkTLS(c.cfg)
	if err != nil {
		return nil, fmt.Errorf("remote link: %w", err)
	}
	opts := c.guard.serverOptions()
	if server == nil {
		c.logger.Warn("the node-to-node link is open: unauthenticated and unencrypted; whoever reaches the remote port can use this node and read what it sends. Set CLUSTER_KEY (or TLS_CERT, TLS_KEY and TLS_CA) on every node to lock it",
			"remote", c.remoteAddress())
		return []remote.ConfigOption{remote.WithServerOptions(opts...)}, nil
	}
	if len(c.cfg.Key) == 0 {
		c.logger.Warn("gossip is not encrypted: set CLUSTER_KEY on every node to encrypt it too")
	}
	c.logger.Info("the node-to-node link is locked", "how", how)
	opts = append(opts, grpc.Creds(&refusingCreds{TransportCredentials: credentials.NewTLS(server), g: c.guard}))
	// WithDialOptions replaces protoactor's default dial options, which
	// are only grpc.WithInsecure, so no insecure credentials remain.
	return []remote.ConfigOption{
		remote.WithServerOptions(opts...),
		remote.WithDialOptions(grpc.WithTransportCredentials(credentials.NewTLS(client))),
	}, nil
}
