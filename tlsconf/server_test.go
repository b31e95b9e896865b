package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"

	"github.com/rs/zerolog"
)

// syncBuffer collects output written by other goroutines.
type syncBuffer = testutil.SyncBuffer

// testLogger writes to the test log.
func testLogger(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.DebugLevel).With().Timestamp().Logger()
}

func TestStaticCertificateServed(t *testing.T) {
	f := newStaticFixture(t, Config{})
	c := dial(t, f.srv.addr, f.client())
	if got := servedSerial(c); got.Cmp(f.serial) != 0 {
		t.Fatalf("served serial %v, want %v", got, f.serial)
	}
	// The chain from the file is sent: leaf then CA.
	if n := len(c.ConnectionState().PeerCertificates); n != 2 {
		t.Errorf("peer sent %d certificates, want leaf + chain (2)", n)
	}
	// ALPN "pop3" offered and selected.
	if p := c.ConnectionState().NegotiatedProtocol; p != "pop3" {
		t.Errorf("negotiated ALPN %q, want pop3", p)
	}
	if v := c.ConnectionState().Version; v < tls.VersionTLS12 {
		t.Errorf("TLS version %x below 1.2", v)
	}
	echo(t, c, "CAPA")
}

func TestServerConfigShape(t *testing.T) {
	f := newStaticFixture(t, Config{})
	cfg := f.m.ServerConfig()
	if cfg != f.m.ServerConfig() {
		t.Error("ServerConfig returns a different *tls.Config each call; listeners would not share reloads")
	}
	if cfg.GetCertificate == nil || len(cfg.Certificates) != 0 {
		t.Error("ServerConfig must pick the certificate per handshake through GetCertificate")
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("MinVersion %x, want TLS 1.2 by default", cfg.MinVersion)
	}
	if cfg.CipherSuites != nil {
		t.Error("CipherSuites set; Go's defaults are wanted")
	}
	if len(cfg.NextProtos) != 1 || cfg.NextProtos[0] != "pop3" {
		t.Errorf("NextProtos %q, want [pop3] for static files", cfg.NextProtos)
	}
}

func TestNoSNIGetsDefaultCertificate(t *testing.T) {
	f := newStaticFixture(t, Config{})
	// Dialing an IP address sends no SNI (RFC 6066 §3 forbids IP literals);
	// the certificate must still come and verify for the address.
	c := dial(t, f.srv.addr, &tls.Config{RootCAs: f.ca.pool})
	echo(t, c, "x")
	if sni := f.srv.lastHandshake(t).ServerName; sni != "" {
		t.Fatalf("client sent SNI %q; test needs a client without SNI", sni)
	}
	if got := servedSerial(c); got.Cmp(f.serial) != 0 {
		t.Fatalf("no-SNI client got serial %v, want %v", got, f.serial)
	}
}

func TestMinVersionDefaultRefusesTLS11(t *testing.T) {
	f := newStaticFixture(t, Config{})
	cfg := f.client()
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	c, err := tls.Dial("tcp", f.srv.addr, cfg)
	if err == nil {
		c.Close()
		t.Fatal("a TLS 1.1 client completed a handshake; default minimum is 1.2")
	}
	// TLS 1.2 exactly is accepted.
	cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	c2 := dial(t, f.srv.addr, cfg)
	if v := c2.ConnectionState().Version; v != tls.VersionTLS12 {
		t.Fatalf("version %x, want TLS 1.2", v)
	}
}

func TestMinVersionExplicitOldAllowedWithWarning(t *testing.T) {
	var logs syncBuffer
	dir := t.TempDir()
	ca := newTestCA(t)
	certPEM, keyPEM, _ := ca.issue(t, "ecdsa", "pop.example.test")
	c := Config{CertFile: dir + "/c.pem", KeyFile: dir + "/k.pem", MinVersion: "1.1"}
	writePair(t, c.CertFile, c.KeyFile, certPEM, keyPEM)
	m, err := New(context.Background(), c, zerolog.New(&logs))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !strings.Contains(logs.String(), `"level":"warn"`) || !strings.Contains(logs.String(), "min_version") {
		t.Errorf("no warning about min_version 1.1 logged at start: %s", logs.String())
	}
	srv := startTLSServer(t, m.ServerConfig())
	conn := dial(t, srv.addr, &tls.Config{RootCAs: ca.pool, ServerName: "pop.example.test",
		MinVersion: tls.VersionTLS11, MaxVersion: tls.VersionTLS11})
	if v := conn.ConnectionState().Version; v != tls.VersionTLS11 {
		t.Fatalf("version %x, want TLS 1.1 when min_version 1.1 is set", v)
	}
	echo(t, conn, "old device")

	// No warning for the default.
	var logs2 syncBuffer
	c.MinVersion = ""
	m2, err := New(context.Background(), c, zerolog.New(&logs2))
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if strings.Contains(logs2.String(), `"level":"warn"`) {
		t.Errorf("warning logged for default min_version: %s", logs2.String())
	}
}

func TestReloadServesNewCertificateToNextConnection(t *testing.T) {
	f := newStaticFixture(t, Config{}, WithPollInterval(0))
	old := dial(t, f.srv.addr, f.client())
	echo(t, old, "before")

	certPEM, keyPEM, serial2 := f.ca.issue(t, "rsa", "pop.example.test")
	writePair(t, f.certFile, f.keyFile, certPEM, keyPEM)
	// Without polling and before Reload the old certificate is still served.
	if got := servedSerial(dial(t, f.srv.addr, f.client())); got.Cmp(f.serial) != 0 {
		t.Fatalf("certificate changed without reload: %v", got)
	}
	if err := f.m.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got := servedSerial(dial(t, f.srv.addr, f.client())); got.Cmp(serial2) != 0 {
		t.Fatalf("after Reload the next connection got serial %v, want %v", got, serial2)
	}
	// The open session is unaffected.
	echo(t, old, "after")
	if got := servedSerial(old); got.Cmp(f.serial) != 0 {
		t.Fatalf("open connection's certificate changed to %v", got)
	}
}

func TestReloadBadFilesKeepsOldCertificate(t *testing.T) {
	f := newStaticFixture(t, Config{}, WithPollInterval(0))
	for _, tc := range []struct {
		name     string
		cert     func() []byte
		key      func() []byte
		wantFile string
	}{
		{"garbage cert", func() []byte { return []byte("not a certificate") }, nil, f.certFile},
		{"key of another cert", nil, func() []byte { _, k, _ := f.ca.issue(t, "ecdsa", "x.test"); return k }, f.keyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			goodCert, goodKey, _ := f.ca.issue(t, "ecdsa", "pop.example.test")
			certPEM, keyPEM := goodCert, goodKey
			if tc.cert != nil {
				certPEM = tc.cert()
			}
			if tc.key != nil {
				keyPEM = tc.key()
			}
			writePair(t, f.certFile, f.keyFile, certPEM, keyPEM)
			err := f.m.Reload()
			if err == nil {
				t.Fatal("Reload of a broken pair returned nil")
			}
			if !strings.Contains(err.Error(), tc.wantFile) {
				t.Errorf("error %q does not name the file %s", err, tc.wantFile)
			}
			if got := servedSerial(dial(t, f.srv.addr, f.client())); got.Cmp(f.serial) != 0 {
				t.Fatalf("after a failed reload serial %v served, want the old %v", got, f.serial)
			}
		})
	}
}

func TestFileChangeReloadsAutomatically(t *testing.T) {
	f := newStaticFixture(t, Config{}, WithPollInterval(20*time.Millisecond))
	old := dial(t, f.srv.addr, f.client())

	// A broken write is ignored: the old certificate stays.
	writePair(t, f.certFile, f.keyFile, []byte("garbage"), []byte("garbage"))
	time.Sleep(200 * time.Millisecond) // several poll periods
	if got := servedSerial(dial(t, f.srv.addr, f.client())); got.Cmp(f.serial) != 0 {
		t.Fatalf("broken files replaced the certificate: serial %v", got)
	}

	certPEM, keyPEM, serial2 := f.ca.issue(t, "ecdsa", "pop.example.test")
	writePair(t, f.certFile, f.keyFile, certPEM, keyPEM)
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := servedSerial(dial(t, f.srv.addr, f.client()))
		if got.Cmp(serial2) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new certificate not picked up from changed files; still serial %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	echo(t, old, "still here")
	if got := servedSerial(old); got.Cmp(f.serial) != 0 {
		t.Fatalf("open connection's certificate changed to %v", got)
	}
}

func TestNewNamesMissingFile(t *testing.T) {
	dir := t.TempDir()
	_, err := New(context.Background(), Config{CertFile: dir + "/nope.pem", KeyFile: dir + "/nokey.pem"}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), dir+"/nope.pem") {
		t.Fatalf("New with a missing file: err %v, want it to name the file", err)
	}
}

func TestCloseStopsWatcher(t *testing.T) {
	f := newStaticFixture(t, Config{}, WithPollInterval(10*time.Millisecond))
	if err := f.m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.m.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	certPEM, keyPEM, _ := f.ca.issue(t, "ecdsa", "pop.example.test")
	writePair(t, f.certFile, f.keyFile, certPEM, keyPEM)
	time.Sleep(100 * time.Millisecond)
	if got := servedSerial(dial(t, f.srv.addr, f.client())); got.Cmp(f.serial) != 0 {
		t.Fatalf("files reloaded after Close: serial %v", got)
	}
}

func TestValidate(t *testing.T) {
	dir := t.TempDir()
	c, k := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	for _, f := range []string{c, k} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		c    Config
		want []string // substrings, one per expected error
	}{
		{"static ok", Config{CertFile: c, KeyFile: k}, nil},
		{"acme ok", Config{ACME: &ACMEConfig{Domains: []string{"pop.example.com"}}}, nil},
		{"empty", Config{}, []string{"tls: set cert_file and key_file, or acme"}},
		{"cert only", Config{CertFile: c}, []string{"tls.key_file: required with cert_file"}},
		{"key only", Config{KeyFile: k}, []string{"tls.cert_file: required with key_file"}},
		{"missing file", Config{CertFile: c, KeyFile: k + ".nope"}, []string{"tls.key_file: " + k + ".nope: no such file"}},
		{"bad version", Config{CertFile: c, KeyFile: k, MinVersion: "1.4"}, []string{"tls.min_version"}},
		{"both", Config{CertFile: c, KeyFile: k, ACME: &ACMEConfig{Domains: []string{"a.example"}}}, []string{"tls: use either"}},
		{"acme everything wrong", Config{MinVersion: "ssl3", ACME: &ACMEConfig{
			CA: "http://x", Challenge: "http", HTTPAddress: "80", TLSALPNAddress: "443"}},
			[]string{"tls.min_version", "tls.acme.domains", "tls.acme.ca", "tls.acme.http_address", "tls.acme.tls_alpn_address: only used with challenge: tls-alpn"}},
		{"acme bad challenge", Config{ACME: &ACMEConfig{Domains: []string{"a.example"}, Challenge: "dns"}}, []string{"tls.acme.challenge"}},
		{"acme ip domain", Config{ACME: &ACMEConfig{Domains: []string{"192.0.2.1"}}}, []string{"tls.acme.domains[0]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := tc.c.Validate()
			if len(errs) != len(tc.want) {
				t.Fatalf("got %d errors %v, want %d naming %v", len(errs), errs, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.HasPrefix(errs[i].Error(), w) {
					t.Errorf("error %d = %q, want it to start with the key %s", i, errs[i], w)
				}
			}
		})
	}
}

func TestSelfSigned(t *testing.T) {
	m, err := SelfSigned("pop.demo.test", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	leaf := m.Leaf()
	if leaf == nil {
		t.Fatal("Leaf() is nil")
	}
	if leaf.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("key algorithm %v, want ECDSA", leaf.PublicKeyAlgorithm)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	srv := startTLSServer(t, m.ServerConfig())
	for _, name := range []string{"pop.demo.test", ""} { // with SNI, and by IP without
		c := dial(t, srv.addr, &tls.Config{RootCAs: pool, ServerName: name, NextProtos: []string{"pop3"}})
		if c.ConnectionState().NegotiatedProtocol != "pop3" {
			t.Errorf("ALPN %q, want pop3", c.ConnectionState().NegotiatedProtocol)
		}
		echo(t, c, "demo")
	}
	if err := m.Reload(); err != nil {
		t.Errorf("Reload on a self-signed manager: %v", err)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: "pop.demo.test", MaxVersion: tls.VersionTLS11}
	if c, err := tls.Dial("tcp", srv.addr, cfg); err == nil {
		c.Close()
		t.Error("self-signed manager accepted TLS 1.1")
	}
}

// A client offering only protocols popgate does not speak still gets a
// POP3 session (no ALPN) instead of a no_application_protocol alert.
func TestForeignALPNStillServed(t *testing.T) {
	f := newStaticFixture(t, Config{})
	cfg := f.client()
	cfg.NextProtos = []string{"imap", "http/1.1"}
	c := dial(t, f.srv.addr, cfg)
	if p := c.ConnectionState().NegotiatedProtocol; p != "" {
		t.Errorf("negotiated ALPN %q, want none", p)
	}
	if got := servedSerial(c); got.Cmp(f.serial) != 0 {
		t.Fatalf("served serial %v, want %v", got, f.serial)
	}
	echo(t, c, "CAPA")
}
