package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"go/build"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/popgate/popgate/internal/testutil"
	"github.com/rs/zerolog"
)

// pebbleBinary finds the pebble ACME test server: $PEBBLE, PATH, then
// $GOPATH/bin (where `go install github.com/letsencrypt/pebble/v2/cmd/pebble`
// puts it). Missing: fatal when CI=true, skipped otherwise.
func pebbleBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("PEBBLE"); p != "" {
		return p
	}
	if p, err := exec.LookPath("pebble"); err == nil {
		return p
	}
	p := filepath.Join(build.Default.GOPATH, "bin", "pebble")
	if _, err := os.Stat(p); err == nil {
		return p
	}
	msg := "pebble not found (go install github.com/letsencrypt/pebble/v2/cmd/pebble@latest)"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// freePort returns a loopback port no other caller in this test binary got.
func freePort(t *testing.T) int { return testutil.FreePort(t) }

// startLoopbackDNS answers every A query with 127.0.0.1 (and AAAA with
// nothing), so Pebble's validation of any test name reaches loopback.
func startLoopbackDNS(t *testing.T) string {
	t.Helper()
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		for _, q := range r.Question {
			if q.Qtype == dns.TypeA {
				m.Answer = append(m.Answer, &dns.A{
					Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1},
					A:   net.IPv4(127, 0, 0, 1),
				})
			}
		}
		_ = w.WriteMsg(m)
	})
	// Same port over TCP and UDP: Pebble's resolver may use either.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", ln.Addr().String())
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	for _, srv := range []*dns.Server{{Listener: ln, Handler: handler}, {PacketConn: pc, Handler: handler}} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		<-started
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
	return ln.Addr().String()
}

// pebble is a running Pebble ACME server on loopback.
type pebble struct {
	dirURL  string // ACME directory
	mgmtURL string // management interface (roots)
	caRoot  string // PEM file trusted for Pebble's own HTTPS listeners
	client  *http.Client
	out     *syncBuffer
}

// startPebble runs Pebble validating HTTP-01 on httpPort and TLS-ALPN-01 on
// tlsPort of 127.0.0.1 (every name resolves there).
func startPebble(t *testing.T, httpPort, tlsPort int) *pebble {
	t.Helper()
	return startPebbleValidity(t, httpPort, tlsPort, 7776000)
}

// startPebbleValidity is startPebble issuing certificates valid for
// validity seconds.
func startPebbleValidity(t *testing.T, httpPort, tlsPort, validity int) *pebble {
	t.Helper()
	bin := pebbleBinary(t)
	dir := t.TempDir()
	ca := newTestCA(t)
	certPEM, keyPEM, _ := ca.issue(t, "ecdsa", "localhost", "127.0.0.1")
	writePair(t, filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), certPEM, keyPEM)
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	listen, mgmt := freePort(t), freePort(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", listen),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":                    filepath.Join(dir, "cert.pem"),
		"privateKey":                     filepath.Join(dir, "key.pem"),
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]int{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default": map[string]any{"description": "test", "validityPeriod": validity},
		},
	}}
	data, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(dir, "pebble.json")
	if err := os.WriteFile(cfgFile, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", cfgFile, "-dnsserver", startLoopbackDNS(t))
	cmd.Env = append(os.Environ(),
		"PEBBLE_VA_NOSLEEP=1", "PEBBLE_VA_ALWAYS_VALID=0",
		"PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pebble: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() || os.Getenv("PEBBLE_LOG") != "" {
			t.Logf("pebble output:\n%s", out.String())
		}
	})
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	p := &pebble{
		dirURL:  fmt.Sprintf("https://127.0.0.1:%d/dir", listen),
		mgmtURL: fmt.Sprintf("https://127.0.0.1:%d", mgmt),
		caRoot:  caFile,
		client:  &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}},
		out:     out,
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := p.client.Get(p.dirURL)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble not answering at %s: %v\n%s", p.dirURL, err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

// issuingRoots fetches the root Pebble signs with (management /roots/0).
func (p *pebble) issuingRoots(t *testing.T) *x509.CertPool {
	t.Helper()
	resp, err := p.client.Get(p.mgmtURL + "/roots/0")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("pebble /roots/0: %d %v", resp.StatusCode, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(body) {
		t.Fatalf("pebble /roots/0: no PEM certificate in %q", body)
	}
	return pool
}

// orders counts the orders Pebble has created.
func (p *pebble) orders() int {
	return strings.Count(p.out.String(), "Added order")
}

// verifyServed dials the implicit-TLS listener and verifies the served
// chain against roots for name, with SNI and without (no SNI: the first
// domain's certificate). It returns the served leaf.
func verifyServed(t *testing.T, addr, name string, roots *x509.CertPool) *x509.Certificate {
	t.Helper()
	c := dial(t, addr, &tls.Config{RootCAs: roots, ServerName: name, NextProtos: []string{"pop3"}})
	if p := c.ConnectionState().NegotiatedProtocol; p != "pop3" {
		t.Errorf("ALPN %q, want pop3", p)
	}
	echo(t, c, "hello")
	leaf := c.ConnectionState().PeerCertificates[0]

	noSNI := dial(t, addr, &tls.Config{
		InsecureSkipVerify: true, // verified below against the Pebble root for name
		VerifyConnection: func(cs tls.ConnectionState) error {
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
			return err
		},
	})
	echo(t, noSNI, "no sni")
	if got := noSNI.ConnectionState().PeerCertificates[0]; !got.Equal(leaf) {
		t.Errorf("no-SNI client got serial %v, want the default %v", got.SerialNumber, leaf.SerialNumber)
	}
	// An unmanaged name gets the default certificate too (not a failed
	// handshake); the client's own verification decides.
	other := dial(t, addr, &tls.Config{InsecureSkipVerify: true, ServerName: "alias.popgate.test"})
	if got := other.ConnectionState().PeerCertificates[0]; !got.Equal(leaf) {
		t.Errorf("client with an unmanaged SNI got serial %v, want the default %v", got.SerialNumber, leaf.SerialNumber)
	}
	return leaf
}

func newACMEManager(t *testing.T, c Config, log zerolog.Logger) *Manager {
	t.Helper()
	m, err := New(context.Background(), c, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	return m
}

func TestACMETLSALPNOnImplicitListenerAndReuse(t *testing.T) {
	// The implicit-TLS listener exists first: Pebble validates TLS-ALPN-01
	// on its port, and certmagic finds the address taken and leaves the
	// answer to it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startPebble(t, freePort(t), ln.Addr().(*net.TCPAddr).Port)
	const domain = "pop.popgate.test"
	var logs syncBuffer
	c := Config{ACME: &ACMEConfig{
		Domains:        []string{domain},
		Email:          "postmaster@popgate.test",
		CA:             p.dirURL,
		CARoot:         p.caRoot,
		Storage:        t.TempDir(),
		Challenge:      ChallengeTLSALPN,
		TLSALPNAddress: ln.Addr().String(),
	}}
	m1, err := New(context.Background(), c, zerolog.New(io.MultiWriter(&logs, zerolog.NewTestWriter(t))))
	if err != nil {
		t.Fatal(err)
	}
	if got := m1.ServerConfig().NextProtos; strings.Join(got, ",") != "pop3,acme-tls/1" {
		t.Errorf("NextProtos %q, want pop3 and acme-tls/1", got)
	}
	srv := serveTLS(t, ln, m1.ServerConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m1.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}

	roots := p.issuingRoots(t)
	leaf := verifyServed(t, srv.addr, domain, roots)
	if m1.Leaf() == nil || !m1.Leaf().Equal(leaf) {
		t.Error("Leaf() is not the served certificate")
	}
	// certmagic's zap logs reach zerolog, including the challenge answered
	// on our listener.
	if !strings.Contains(logs.String(), `"component":"certmagic"`) ||
		!strings.Contains(logs.String(), "tls-alpn-01") {
		t.Errorf("certmagic's log lines about tls-alpn-01 not in the zerolog output:\n%s", logs.String())
	}
	if n := p.orders(); n != 1 {
		t.Fatalf("pebble saw %d orders, want 1", n)
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart on the same storage: the certificate is reused, no new order.
	m2 := newACMEManager(t, c, testLogger(t))
	srv2 := startTLSServer(t, m2.ServerConfig())
	leaf2 := verifyServed(t, srv2.addr, domain, roots)
	if !leaf2.Equal(leaf) {
		t.Errorf("restart served a different certificate (serial %v, was %v)", leaf2.SerialNumber, leaf.SerialNumber)
	}
	if n := p.orders(); n != 1 {
		t.Errorf("pebble saw %d orders after restart, want still 1", n)
	}
}

func TestACMEHTTP01(t *testing.T) {
	httpPort := freePort(t)
	p := startPebble(t, httpPort, freePort(t))
	const domain = "mail.popgate.test"
	m := newACMEManager(t, Config{ACME: &ACMEConfig{
		Domains:     []string{domain},
		CA:          p.dirURL,
		CARoot:      p.caRoot,
		Storage:     t.TempDir(),
		Challenge:   ChallengeHTTP,
		HTTPAddress: fmt.Sprintf("127.0.0.1:%d", httpPort),
	}}, testLogger(t))
	if got := m.ServerConfig().NextProtos; strings.Join(got, ",") != "pop3" {
		t.Errorf("NextProtos %q, want only pop3 with the http challenge", got)
	}
	srv := startTLSServer(t, m.ServerConfig())
	verifyServed(t, srv.addr, domain, p.issuingRoots(t))
	if n := p.orders(); n != 1 {
		t.Errorf("pebble saw %d orders, want 1", n)
	}
	// The HTTP-01 listener answers only challenges.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET / on the HTTP-01 address: %d, want 404", resp.StatusCode)
	}
	// Close releases the HTTP-01 address.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatalf("HTTP-01 address still taken after Close: %v", err)
	}
	ln.Close()
}

func TestACMEBadCARoot(t *testing.T) {
	dir := t.TempDir()
	_, err := New(context.Background(), Config{ACME: &ACMEConfig{
		Domains: []string{"a.popgate.test"}, CARoot: dir + "/missing.pem", Storage: dir,
	}}, zerolog.Nop())
	if err == nil || !strings.Contains(err.Error(), "tls.acme.ca_root") {
		t.Fatalf("err %v, want one naming tls.acme.ca_root", err)
	}
}

// TestACMETLSALPNOwnListener: no implicit-TLS listener on the address the CA
// validates; certmagic answers TLS-ALPN-01 on TLSALPNAddress itself during
// the challenge and frees the address afterwards.
func TestACMETLSALPNOwnListener(t *testing.T) {
	alpnPort := freePort(t)
	p := startPebble(t, freePort(t), alpnPort)
	const domain = "alpn.popgate.test"
	m := newACMEManager(t, Config{ACME: &ACMEConfig{
		Domains:        []string{domain},
		CA:             p.dirURL,
		CARoot:         p.caRoot,
		Storage:        t.TempDir(),
		TLSALPNAddress: fmt.Sprintf("127.0.0.1:%d", alpnPort),
	}}, testLogger(t))
	srv := startTLSServer(t, m.ServerConfig())
	verifyServed(t, srv.addr, domain, p.issuingRoots(t))
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", alpnPort))
	if err != nil {
		t.Fatalf("TLS-ALPN address still taken after issuance: %v", err)
	}
	ln.Close()
}

// TestACMERenewalInBackground: a short-lived certificate is renewed by
// the background maintenance; the next handshake gets the new one while an
// open connection keeps working.
func TestACMERenewalInBackground(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startPebbleValidity(t, freePort(t), ln.Addr().(*net.TCPAddr).Port, 20)
	const domain = "renew.popgate.test"
	m, err := New(context.Background(), Config{ACME: &ACMEConfig{
		Domains:        []string{domain},
		CA:             p.dirURL,
		CARoot:         p.caRoot,
		Storage:        t.TempDir(),
		TLSALPNAddress: ln.Addr().String(),
	}}, testLogger(t), func(m *Manager) { m.renewCheck, m.renewRatio = 200*time.Millisecond, 0.95 })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	srv := serveTLS(t, ln, m.ServerConfig())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	roots := p.issuingRoots(t)
	client := &tls.Config{RootCAs: roots, ServerName: domain}
	old := dial(t, srv.addr, client)
	first := servedSerial(old)

	deadline := time.Now().Add(90 * time.Second)
	for {
		c := dial(t, srv.addr, client)
		got := servedSerial(c)
		c.Close()
		if got.Cmp(first) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("certificate not renewed in the background (still serial %v, %d orders)", got, p.orders())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := p.orders(); n < 2 {
		t.Errorf("pebble saw %d orders, want a renewal order", n)
	}
	echo(t, old, "still open")
}
