package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/testutil"
)

// Issue 13, the proxy defects found in reading the code.

// slowBackend makes Login and Snapshot each take delay (or end with their
// context, as a store client does).
type slowBackend struct {
	backends.Backend
	delay time.Duration
}
type slowBox struct {
	backends.Mailbox
	delay time.Duration
}

func wait(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s slowBackend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	if err := wait(ctx, s.delay); err != nil {
		return nil, err
	}
	mb, err := s.Backend.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	return slowBox{mb, s.delay}, nil
}

func (s slowBox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	if err := wait(ctx, s.delay); err != nil {
		return nil, err
	}
	return s.Mailbox.Snapshot(ctx)
}

// Defect 1: CommandTimeout bounds each backend call of the login (Login,
// TryLock, Snapshot), as Options documents, not the three together. Each
// call here takes 60% of it.
func TestCommandTimeoutPerLoginCall(t *testing.T) {
	const timeout = 2 * time.Second
	e := newEnv(t, envConfig{opts: func(o *Options) {
		o.CommandTimeout = timeout
		o.Backend = slowBackend{o.Backend, timeout * 6 / 10}
	}})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c := e.dialReady()
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK maildrop has 1 messages (11 octets)
		C: QUIT
		S: +OK bye
	`)
}

// stallBox delivers the first `after` octets of each message, then its
// reader blocks until the context given to Open ends (a stalled HTTP body).
type stallBackend struct {
	backends.Backend
	after int
}
type stallBox struct {
	backends.Mailbox
	after int
}
type stallReader struct{ ctx context.Context }

func (s stallBackend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	mb, err := s.Backend.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	return stallBox{mb, s.after}, nil
}

func (s stallBox) Open(ctx context.Context, m backends.Message, lines int) (io.ReadCloser, error) {
	rc, err := s.Mailbox.Open(ctx, m, lines)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(rc, int64(s.after)), &stallReader{ctx: ctx}), rc}, nil
}

func (s *stallReader) Read([]byte) (int, error) {
	<-s.ctx.Done()
	return 0, s.ctx.Err()
}

// Defect 2: a store that stops sending in the middle of a message. After
// CommandTimeout without progress the client is disconnected, never given
// a terminator; before +OK it gets -ERR [SYS/TEMP]. Other sessions go on.
func TestStalledMessageStream(t *testing.T) {
	for _, after := range []int{5, 0} {
		e := newEnv(t, envConfig{opts: func(o *Options) {
			o.CommandTimeout = 300 * time.Millisecond
			o.Backend = stallBackend{o.Backend, after}
		}})
		e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
		e.be.Append("bob", []byte("S: 2\r\n\r\ny\r\n"))
		c := e.login("alice", "secret pw")
		c.Send("RETR 1")
		if after == 0 {
			c.Expect("-ERR [SYS/TEMP] internal error, try again later")
			c.Script(`
				C: NOOP
				S: +OK
			`)
			continue
		}
		// What arrives before the close (the answer may still sit in the
		// write buffer) is at most the +OK and the 5 octets, never a
		// terminator.
		if got := string(c.ReadToClose()); !strings.HasPrefix("+OK 11 octets\r\nS: 1\r", got) {
			t.Fatalf("after a stalled stream got %q, want a prefix of the +OK and the 5 octets sent, and no terminator", got)
		}
		eventually(t, "stall logged", func() bool {
			return strings.Contains(e.logs.String(), "message stream stalled")
		})
		e.login("bob", "hunter2")
	}
}

// Defect 4: Update refuses options that Serve would refuse for a listener
// being served, and keeps the options in use (a nil TLSConfig used to
// become a "session panicked" at the next connection).
func TestUpdateRefusesOptionsTheListenersCannotUse(t *testing.T) {
	e, pool := tlsEnv(t, TLSImplicit, false)
	eventually(t, "listener registered", func() bool {
		e.srv.mu.Lock()
		defer e.srv.mu.Unlock()
		return len(e.srv.listeners) == 1
	})
	for name, change := range map[string]func(*Options){
		"no TLSConfig":  func(o *Options) { o.TLSConfig = nil },
		"no Backend":    func(o *Options) { o.Backend = nil },
		"EXPIRE soon":   func(o *Options) { o.Expire = "soon" },
		"line break in": func(o *Options) { o.Implementation = "x\r\nSTLS" },
	} {
		o := e.opts
		change(&o)
		if err := e.srv.Update(o); err == nil {
			t.Errorf("Update with %s succeeded", name)
		}
	}
	c := testutil.DialPOP3S(t, e.addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	c.Expect("+OK POP3 server ready")
	c.Login("alice", "secret pw")
	if strings.Contains(e.logs.String(), "panicked") {
		t.Fatalf("a session panicked:\n%s", e.logs)
	}
}

// Defect 3: connections over the limit are refused in the accept loop: no
// goroutine each and, on an implicit-TLS listener, no handshake (a client
// that never sends a ClientHello used to hold a goroutine for 10 s).
func TestRefusalsCostNoGoroutine(t *testing.T) {
	e, pool := tlsEnv(t, TLSImplicit, false)
	o := e.opts
	o.MaxConns = 1
	if err := e.srv.Update(o); err != nil {
		t.Fatal(err)
	}
	held := testutil.DialPOP3S(t, e.addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	held.Expect("+OK POP3 server ready")
	before := runtime.NumGoroutine()
	const flood = 50
	var conns []*client
	for i := 0; i < flood; i++ {
		nc, err := net.DialTimeout("tcp", e.addr, ioTimeout) // plain TCP, no ClientHello
		if err != nil {
			continue // reset already: refused
		}
		conns = append(conns, testutil.NewPOP3(t, nc))
	}
	eventually(t, "all accepted", func() bool { return e.srv.nextID.Load() == 1+flood })
	if n := runtime.NumGoroutine(); n > before+flood/5 {
		t.Fatalf("%d goroutines for %d refused connections (%d before)", n, flood, before)
	}
	for _, c := range conns {
		c.ExpectClosed()
	}
	held.Script(`
		C: CAPA
		S: +OK capability list follows*
	`)
	if n := strings.Count(e.logs.String(), "connection limit reached"); n < 1 || n > 2 {
		t.Errorf("%d refusal log lines for %d refusals, want them aggregated", n, flood)
	}
}

// recordingListener hands out connections that remember every buffer the
// server reads into (the bufio.Reader's own buffer, pooled).
type recordingListener struct {
	net.Listener
	mu   sync.Mutex
	bufs [][]byte
}

type recordingConn struct {
	net.Conn
	l *recordingListener
}

func (l *recordingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return recordingConn{c, l}, nil
}

func (c recordingConn) Read(p []byte) (int, error) {
	c.l.mu.Lock()
	c.l.bufs = append(c.l.bufs, p[:cap(p)])
	c.l.mu.Unlock()
	return c.Conn.Read(p)
}

// residue reports whether any buffer read into still holds s.
func (l *recordingListener) residue(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.bufs {
		if bytes.Contains(b, []byte(s)) {
			return true
		}
	}
	return false
}

// Defect 7: a password line does not stay in the pooled read buffer after
// the command, whether the login succeeds or not.
func TestPasswordNotLeftInReadBuffers(t *testing.T) {
	be := memory.New()
	be.AddUser("alice", "s3cret-Password-of-alice")
	srv := New(Options{Backend: be, AllowPlaintext: true, AuthFailureDelay: -1, MaxAuthFailures: 10})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &recordingListener{Listener: l}
	go srv.Serve(rl, ListenerConfig{})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	c := testutil.DialPOP3(t, l.Addr().String())
	c.Script(`
		S: +OK*
		C: PASS wrong-Password-number-1
		S: -ERR PASS must follow USER
		C: USER alice
		S: +OK send PASS
		C: PASS wrong-Password-number-2
		S: -ERR [AUTH] authentication failed
		C: AUTH PLAIN ` + b64("bob\x00alice\x00wrong-Password-number-3") + `
		S: -ERR [AUTH] authentication failed
		C: AUTH LOGIN
		S: + VXNlcm5hbWU6
		C: ` + b64("alice") + `
		S: + UGFzc3dvcmQ6
		C: ` + b64("s3cret-Password-of-alice") + `
		S: +OK*
		C: NOOP
		S: +OK
	`)
	// Later, shorter lines overwrite the start of the buffer only: look
	// for the end of each secret.
	for _, s := range []string{"wrong-Password-number-1", "wrong-Password-number-2", b64("bob\x00alice\x00wrong-Password-number-3"), b64("s3cret-Password-of-alice")} {
		if tail := s[len(s)-12:]; rl.residue(tail) {
			t.Errorf("the end of %q is still in a read buffer", s)
		}
	}
}

// failingSnapshot is a backend whose Snapshot always fails.
type failingSnapshot struct{ backends.Backend }
type failingSnapshotBox struct{ backends.Mailbox }

func (f failingSnapshot) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	mb, err := f.Backend.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	return failingSnapshotBox{mb}, nil
}

func (failingSnapshotBox) Snapshot(context.Context) ([]backends.Message, error) {
	return nil, errors.New("upstream listing broke")
}

// The "backend call failed" line names the user, also when the call is
// the login's snapshot (before the session's logger has the user), and
// never the password; a failed login leaves the logger anonymous.
func TestBackendCallFailedNamesUser(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.Backend = failingSnapshot{o.Backend} }})
	c := e.dialReady()
	c.CmdPrefix("USER alice", "+OK")
	c.CmdPrefix("PASS secret pw", "-ERR [SYS/TEMP]")
	c.CmdPrefix("USER mallory", "+OK")
	c.CmdPrefix("PASS nope", "-ERR [AUTH]")
	c.CmdPrefix("QUIT", "+OK")
	eventually(t, "session end", func() bool { return strings.Contains(e.logs.String(), `"session end"`) })
	var found bool
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, "secret pw") {
			t.Errorf("the password in the log: %s", l)
		}
		if strings.Contains(l, `"backend call failed"`) {
			found = true
			if !strings.Contains(l, `"user":"alice"`) || !strings.Contains(l, `"op":"snapshot"`) {
				t.Errorf("backend call failed without user alice or op snapshot: %s", l)
			}
		}
		if strings.Contains(l, `"session end"`) && strings.Contains(l, `"user"`) {
			t.Errorf("session end of a session that never logged in names a user: %s", l)
		}
		if strings.Count(l, `"user":`) > 1 {
			t.Errorf("user twice: %s", l)
		}
	}
	if !found {
		t.Errorf("no backend call failed line:\n%s", e.logs.String())
	}
}
