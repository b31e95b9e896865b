package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"
)

func tlsEnv(t *testing.T, mode TLSMode, allowPlaintext bool) (*env, *x509.CertPool) {
	cert, pool := testCert(t)
	e := newEnv(t, envConfig{lc: ListenerConfig{Name: string(mode), TLS: mode}, opts: func(o *Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		o.AllowPlaintext = allowPlaintext
	}})
	return e, pool
}

// startTLS upgrades c after a +OK to STLS, trusting pool.
func startTLS(c *client, pool *x509.CertPool) {
	c.Handshake(&tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
}

func TestSTLS(t *testing.T) {
	e, pool := tlsEnv(t, TLSStartTLS, false)
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c := e.dialReady()
	// Before TLS no login is possible (plaintext not allowed; CAPA: TestCAPA).
	c.Script(`
		C: USER alice
		S: -ERR plaintext login disabled: use STLS first, or POP3S on port 995
		C: PASS secret pw
		S: -ERR plaintext login disabled: use STLS first, or POP3S on port 995
		C: AUTH PLAIN ` + b64("\x00alice\x00secret pw") + `
		S: -ERR plaintext login disabled: use STLS first, or POP3S on port 995
		C: AUTH
		S: +OK SASL mechanisms follow
		S: .
		C: STLS extra
		S: -ERR STLS takes no argument
		C: STLS
		S: +OK begin TLS negotiation
	`)
	startTLS(c, pool)
	// After TLS: login works, STLS does not (CAPA: TestCAPA).
	c.Script(`
		C: STLS
		S: -ERR TLS already active
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK maildrop has 1 messages (11 octets)
		C: RETR 1
		S: +OK 11 octets
		S: S: 1
		S: 
		S: x
		S: .
		C: QUIT
		S: +OK bye
	`)
	eventually(t, "tls logged", func() bool { return strings.Contains(e.logs.String(), `"tls":true`) })
}

// RFC 2595 §4 / CVE-2011-0411: a command pipelined after STLS must not be
// executed as if it had come through TLS.
func TestSTLSInjectionRefused(t *testing.T) {
	e, pool := tlsEnv(t, TLSStartTLS, false)
	c := e.dialReady()
	c.SendRaw("STLS\r\nCAPA\r\n")
	c.Expect("-ERR STLS refused: commands sent after STLS before TLS negotiation")
	// The injected command was answered in the clear, outside TLS.
	c.Expect("+OK capability list follows")
	if lines := c.Multi(); !contains(lines, "STLS") {
		t.Fatalf("CAPA after refused STLS: %q", lines)
	}
	// A clean STLS still works afterwards.
	c.Script(`
		C: STLS
		S: +OK begin TLS negotiation
	`)
	startTLS(c, pool)
	c.Script(`
		C: AUTH PLAIN ` + b64("\x00alice\x00secret pw") + `
		S: +OK*
	`)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestPlainListenerWithoutPlaintextLogin(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.AllowPlaintext = false }})
	c := e.dialReady()
	c.Script(`
		C: USER alice
		S: -ERR plaintext login disabled and this port has no TLS: login is impossible here, use POP3S on port 995
		C: AUTH LOGIN
		S: -ERR plaintext login disabled and this port has no TLS: login is impossible here, use POP3S on port 995
		C: STLS
		S: -ERR STLS not available on this port
	`)
}

func TestImplicitTLS(t *testing.T) {
	e, pool := tlsEnv(t, TLSImplicit, false)
	tc, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", e.addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	c := testutil.NewPOP3(t, tc)
	c.Script(`
		S: +OK POP3 server ready
		C: STLS
		S: -ERR TLS already active
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK*
	`)

	// A client speaking plain POP3 to the TLS port costs only its
	// connection, and the failure is logged at debug level.
	bad := e.dial()
	bad.SendRaw("USER alice\r\n")
	bad.ExpectClosed()
	eventually(t, "handshake failure logged", func() bool {
		return strings.Contains(e.logs.String(), `"level":"debug"`) && strings.Contains(e.logs.String(), "TLS handshake failed")
	})
	c.Script(`
		C: STAT
		S: +OK 0 0
	`)
}

func TestSTLSHandshakeFailure(t *testing.T) {
	e, _ := tlsEnv(t, TLSStartTLS, true)
	c := e.dialReady()
	c.Script(`
		C: STLS
		S: +OK begin TLS negotiation
	`)
	c.SendRaw("this is not a TLS ClientHello\r\n")
	c.ExpectClosed()
	eventually(t, "handshake failure logged", func() bool { return strings.Contains(e.logs.String(), "TLS handshake failed") })
	// A client offering only TLS 1.0 against Go's 1.2 minimum: the log tells why.
	old := e.dialReady()
	old.Script(`
		C: STLS
		S: +OK begin TLS negotiation
	`)
	tc := tls.Client(old.Conn(), &tls.Config{InsecureSkipVerify: true, ServerName: "pop.example", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS10})
	_ = tc.SetDeadline(time.Now().Add(ioTimeout))
	if err := tc.Handshake(); err == nil {
		t.Fatal("TLS 1.0 handshake succeeded")
	}
	eventually(t, "reason logged", func() bool {
		return strings.Contains(e.logs.String(), `"sni":"pop.example","versions":["TLS 1.0"]`)
	})
	// Others are served.
	e.login("alice", "secret pw")
}

func TestServeNeedsTLSConfig(t *testing.T) {
	s := New(Options{Backend: sizeLiar{}})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(l, ListenerConfig{TLS: TLSImplicit}); err == nil || !strings.Contains(err.Error(), "TLSConfig") {
		t.Fatalf("Serve without TLSConfig = %v", err)
	}
	if err := s.Serve(l, ListenerConfig{TLS: "bogus"}); err == nil {
		t.Fatal("Serve accepted an unknown TLS mode")
	}
	if err := New(Options{}).Serve(l, ListenerConfig{}); err == nil {
		t.Fatal("Serve without a backend succeeded")
	}
	if err := New(Options{Backend: sizeLiar{}, Expire: "soon"}).Serve(l, ListenerConfig{}); err == nil {
		t.Fatal("Serve accepted EXPIRE soon")
	}
}
