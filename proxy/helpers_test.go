package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/lock"
)

// ioTimeout bounds every client read in tests; generous for a noisy box.
const ioTimeout = 20 * time.Second

// syncBuffer collects output written by other goroutines.
type syncBuffer = testutil.SyncBuffer

// env is a server on a loopback port in front of a memory backend.
type env struct {
	t      testing.TB
	be     *memory.Backend
	locker *lock.Local
	srv    *Server
	opts   Options
	addr   string
	logs   *syncBuffer
	served chan error
}

type envConfig struct {
	lc   ListenerConfig
	opts func(*Options)
}

func newEnv(t testing.TB, cfg envConfig) *env {
	t.Helper()
	e := &env{t: t, be: memory.New(), locker: lock.NewLocal(), logs: &syncBuffer{}, served: make(chan error, 1)}
	e.be.AddUser("alice", "secret pw")
	e.be.AddUser("bob", "hunter2")
	e.opts = Options{
		Backend:          e.be,
		Locker:           e.locker,
		AllowPlaintext:   true,
		AuthFailureDelay: time.Millisecond,
		Logger:           zerolog.New(e.logs).Level(zerolog.DebugLevel),
	}
	if cfg.opts != nil {
		cfg.opts(&e.opts)
	}
	if cfg.lc.Name == "" {
		cfg.lc.Name = "test"
	}
	e.srv = New(e.opts)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = l.Addr().String()
	go func() { e.served <- e.srv.Serve(l, cfg.lc) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.srv.Shutdown(ctx)
		if err := <-e.served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return e
}

// client is a raw POP3 client over a real socket.
type client struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func (e *env) dial() *client {
	e.t.Helper()
	c, err := net.DialTimeout("tcp", e.addr, ioTimeout)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return &client{t: e.t, c: c, r: bufio.NewReader(c)}
}

// dialReady dials and reads the greeting.
func (e *env) dialReady() *client {
	e.t.Helper()
	c := e.dial()
	c.expectPrefix("+OK")
	return c
}

// login dials, reads the greeting and logs in as alice.
func (e *env) login(user, pass string) *client {
	e.t.Helper()
	c := e.dialReady()
	c.cmdPrefix("USER "+user, "+OK")
	c.cmdPrefix("PASS "+pass, "+OK")
	return c
}

func (c *client) send(s string) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.c, s+"\r\n"); err != nil {
		c.t.Fatalf("send %q: %v", s, err)
	}
}

func (c *client) sendRaw(s string) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// line reads one line and checks that it ends in CRLF.
func (c *client) line() string {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(ioTimeout))
	s, err := c.r.ReadString('\n')
	if err != nil {
		c.t.Fatalf("read line: %v (got %q)", err, s)
	}
	if !strings.HasSuffix(s, "\r\n") {
		c.t.Fatalf("line %q does not end in CRLF", s)
	}
	return strings.TrimSuffix(s, "\r\n")
}

func (c *client) expect(want string) {
	c.t.Helper()
	if got := c.line(); got != want {
		c.t.Fatalf("got %q, want %q", got, want)
	}
}

func (c *client) expectPrefix(prefix string) string {
	c.t.Helper()
	got := c.line()
	if !strings.HasPrefix(got, prefix) {
		c.t.Fatalf("got %q, want prefix %q", got, prefix)
	}
	return got
}

func (c *client) cmdPrefix(s, prefix string) string {
	c.t.Helper()
	c.send(s)
	return c.expectPrefix(prefix)
}

// multi reads the lines of a multi-line body up to the terminator, raw
// (still dot-stuffed).
func (c *client) multi() []string {
	c.t.Helper()
	var out []string
	for {
		l := c.line()
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

// body reads a multi-line body and undoes the dot-stuffing, returning the
// octets with CRLF line ends.
func (c *client) body() []byte {
	c.t.Helper()
	var b bytes.Buffer
	for _, l := range c.multi() {
		l = strings.TrimPrefix(l, ".")
		b.WriteString(l + "\r\n")
	}
	return b.Bytes()
}

// expectClosed checks that the server closed the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(ioTimeout))
	s, err := c.r.ReadString('\n')
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		c.t.Fatalf("connection still open (read %q, %v)", s, err)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %v", ioTimeout)
	}
}

// eventually retries cond until it holds or ioTimeout passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testCert returns a self-signed certificate for 127.0.0.1 / localhost and
// a pool that trusts it.
func testCert(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	c, err := testutil.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	return c.TLS, c.Pool
}

// script runs a transcript: "C: x" sends x, "S: y" expects the line y
// ("S: y*" expects a line starting with y), "S: <closed>" expects the
// server to close the connection. Leading tabs and blank lines are ignored.
func (c *client) script(s string) {
	c.t.Helper()
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimLeft(l, "\t ")
		switch {
		case l == "":
		case l == "C:":
			c.send("")
		case strings.HasPrefix(l, "C: "):
			c.send(l[3:])
		case l == "S: <closed>":
			c.expectClosed()
		case strings.HasPrefix(l, "S: ") && strings.HasSuffix(l, "*"):
			c.expectPrefix(strings.TrimSuffix(l[3:], "*"))
		case strings.HasPrefix(l, "S: "):
			c.expect(l[3:])
		default:
			c.t.Fatalf("bad script line %q", l)
		}
	}
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
