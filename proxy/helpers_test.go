package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"net"
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

// client is the shared POP3 test client.
type client = testutil.POP3

func (e *env) dial() *client {
	e.t.Helper()
	return testutil.DialPOP3(e.t, e.addr)
}

// dialReady dials and reads the greeting.
func (e *env) dialReady() *client {
	e.t.Helper()
	c := e.dial()
	c.ExpectPrefix("+OK")
	return c
}

// login dials, reads the greeting and logs in.
func (e *env) login(user, pass string) *client {
	e.t.Helper()
	c := e.dialReady()
	c.CmdPrefix("USER "+user, "+OK")
	c.CmdPrefix("PASS "+pass, "+OK")
	return c
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

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
