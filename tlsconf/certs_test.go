package tlsconf

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// testCA is a CA generated for one test, issuing leaf certificates.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "popgate test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

var serialMu sync.Mutex
var nextSerial int64 = 100

// issue returns PEM cert (leaf then CA, as a chain file holds it) and PEM
// key for names; keyType is "ecdsa" or "rsa".
func (ca *testCA) issue(t testing.TB, keyType string, names ...string) (certPEM, keyPEM []byte, serial *big.Int) {
	t.Helper()
	var key crypto.Signer
	var err error
	switch keyType {
	case "rsa":
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	}
	if err != nil {
		t.Fatal(err)
	}
	serialMu.Lock()
	nextSerial++
	serial = big.NewInt(nextSerial)
	serialMu.Unlock()
	dns, ips := hostList(names)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: names[0]},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...)
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return certPEM, keyPEM, serial
}

// writePair writes the pair to the files. The files are replaced by rename,
// the way certificate tools install them.
func writePair(t testing.TB, certFile, keyFile string, certPEM, keyPEM []byte) {
	t.Helper()
	for _, f := range []struct {
		name string
		data []byte
	}{{keyFile, keyPEM}, {certFile, certPEM}} {
		tmp := f.name + ".tmp"
		if err := os.WriteFile(tmp, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, f.name); err != nil {
			t.Fatal(err)
		}
	}
}

// tlsServer runs an implicit-TLS echo server on loopback with cfg: every
// connection is handshaken, then each line read is written back.
type tlsServer struct {
	ln   net.Listener
	addr string

	mu    sync.Mutex
	hands []tls.ConnectionState // server side state of completed handshakes
	errs  []error               // failed handshakes
}

func startTLSServer(t testing.TB, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveTLS(t, ln, cfg)
}

// serveTLS runs the echo server on ln; it closes ln at cleanup.
func serveTLS(t testing.TB, ln net.Listener, cfg *tls.Config) *tlsServer {
	s := &tlsServer{ln: ln, addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, nil)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conns.Delete(c)
				defer c.Close()
				tc := tls.Server(c, cfg)
				_ = c.SetDeadline(time.Now().Add(30 * time.Second))
				if err := tc.Handshake(); err != nil {
					s.mu.Lock()
					s.errs = append(s.errs, err)
					s.mu.Unlock()
					return
				}
				_ = c.SetDeadline(time.Time{})
				s.mu.Lock()
				s.hands = append(s.hands, tc.ConnectionState())
				s.mu.Unlock()
				r := bufio.NewReader(tc)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(tc, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return s
}

func (s *tlsServer) lastHandshake(t testing.TB) tls.ConnectionState {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.hands) == 0 {
		t.Fatal("no handshake completed on the server")
	}
	return s.hands[len(s.hands)-1]
}

// dial connects with cfg and returns the connection after the handshake.
func dial(t testing.TB, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	d := &net.Dialer{Timeout: 30 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("TLS dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func echo(t testing.TB, c *tls.Conn, line string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatalf("write on TLS connection: %v", err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo on TLS connection: got %q, %v", got, err)
	}
}

func servedSerial(c *tls.Conn) *big.Int {
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

// staticFixture is a Manager on static files plus a TLS server using its
// ServerConfig.
type staticFixture struct {
	ca                *testCA
	certFile, keyFile string
	serial            *big.Int
	m                 *Manager
	srv               *tlsServer
}

func newStaticFixture(t *testing.T, c Config, opts ...Option) *staticFixture {
	t.Helper()
	dir := t.TempDir()
	f := &staticFixture{ca: newTestCA(t), certFile: filepath.Join(dir, "cert.pem"), keyFile: filepath.Join(dir, "key.pem")}
	certPEM, keyPEM, serial := f.ca.issue(t, "ecdsa", "pop.example.test", "127.0.0.1")
	writePair(t, f.certFile, f.keyFile, certPEM, keyPEM)
	f.serial = serial
	c.CertFile, c.KeyFile = f.certFile, f.keyFile
	m, err := New(context.Background(), c, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	f.m = m
	f.srv = startTLSServer(t, m.ServerConfig())
	return f
}

func (f *staticFixture) client() *tls.Config {
	return &tls.Config{RootCAs: f.ca.pool, ServerName: "pop.example.test", NextProtos: []string{"pop3"}}
}
