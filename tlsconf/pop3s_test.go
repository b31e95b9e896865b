package tlsconf

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/proxy"
)

// oneMessage is a one-user, one-message store behind proxy.Server; it
// records whether the login came over TLS.
type oneMessage struct{ tlsLogin chan bool }

const oneMessageBody = "Subject: hi\r\n\r\nhello\r\n"

func (b *oneMessage) Login(_ context.Context, c backends.Credentials) (backends.Mailbox, error) {
	if c.Username != "alice" || c.Password != "pw" {
		return nil, backends.ErrAuthFailed
	}
	b.tlsLogin <- c.TLS
	return oneMailbox{}, nil
}

func (b *oneMessage) Close() error { return nil }

type oneMailbox struct{}

func (oneMailbox) Snapshot(context.Context) ([]backends.Message, error) {
	return []backends.Message{{UIDL: "m1", Size: int64(len(oneMessageBody)), Ref: "1"}}, nil
}
func (oneMailbox) Open(context.Context, backends.Message, int) (io.ReadCloser, error) {
	return io.NopCloser(strings.NewReader(oneMessageBody)), nil
}
func (oneMailbox) Commit(context.Context, []backends.Message) error { return nil }
func (oneMailbox) Close() error                                     { return nil }

// TestACMEPOP3S: proxy.Server's implicit-TLS listener, configured with the
// Manager's ServerConfig, answers Pebble's TLS-ALPN-01 validation, then a
// POP3S client verifies the Pebble-issued certificate and logs in.
func TestACMEPOP3S(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := startPebble(t, freePort(t), ln.Addr().(*net.TCPAddr).Port)
	const domain = "pop3s.popgate.test"
	m, err := New(context.Background(), Config{ACME: &ACMEConfig{
		Domains:        []string{domain},
		CA:             p.dirURL,
		CARoot:         p.caRoot,
		Storage:        t.TempDir(),
		TLSALPNAddress: ln.Addr().String(),
	}}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })

	be := &oneMessage{tlsLogin: make(chan bool, 1)}
	srv := proxy.New(proxy.Options{Backend: be, TLSConfig: m.ServerConfig(), Logger: testLogger(t)})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln, proxy.ListenerConfig{Name: "pop3s", TLS: proxy.TLSImplicit}) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-served
	})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Ready(ctx); err != nil {
		t.Fatalf("Ready: %v", err)
	}

	c := dial(t, ln.Addr().String(), &tls.Config{RootCAs: p.issuingRoots(t), ServerName: domain, NextProtos: []string{"pop3"}})
	if cs := c.ConnectionState(); cs.NegotiatedProtocol != "pop3" {
		t.Errorf("ALPN %q, want pop3", cs.NegotiatedProtocol)
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	expect := func(prefix string) {
		t.Helper()
		line, err := r.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, prefix) {
			t.Fatalf("got %q, %v; want %q…", line, err, prefix)
		}
	}
	send := func(cmd string) {
		t.Helper()
		if _, err := fmt.Fprintf(c, "%s\r\n", cmd); err != nil {
			t.Fatal(err)
		}
	}
	expect("+OK")
	send("USER alice")
	expect("+OK")
	send("PASS pw")
	expect("+OK")
	if !<-be.tlsLogin {
		t.Error("the backend saw a login without TLS")
	}
	send("STAT")
	expect(fmt.Sprintf("+OK 1 %d", len(oneMessageBody)))
	send("QUIT")
	expect("+OK")
}
