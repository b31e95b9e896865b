package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends/memory"
)

func TestPipelining(t *testing.T) {
	e := newEnv(t, envConfig{})
	for i := 0; i < 5; i++ {
		e.be.Append("alice", []byte(fmt.Sprintf("S: %d\r\n\r\n.body %d\r\n", i, i)))
	}
	c := e.dialReady()
	// Login and 50 commands in one write (RFC 2449 §6.6).
	var batch strings.Builder
	var want []string
	batch.WriteString("USER alice\r\nPASS secret pw\r\n")
	want = append(want, "+OK send PASS", "+OK maildrop has 5 messages (85 octets)")
	for i := 0; i < 50; i++ {
		n := i%5 + 1
		switch i % 5 {
		case 0:
			batch.WriteString("STAT\r\n")
			want = append(want, "+OK 5 85")
		case 1:
			fmt.Fprintf(&batch, "LIST %d\r\n", n)
			want = append(want, fmt.Sprintf("+OK %d 17", n))
		case 2:
			fmt.Fprintf(&batch, "RETR %d\r\n", n)
			want = append(want, "+OK 17 octets", fmt.Sprintf("S: %d", n-1), "", fmt.Sprintf("..body %d", n-1), ".")
		case 3:
			batch.WriteString("NOOP\r\n")
			want = append(want, "+OK")
		case 4:
			batch.WriteString("BOGUS\r\n")
			want = append(want, "-ERR unknown command")
		}
	}
	c.SendRaw(batch.String())
	for i, w := range want {
		if got := c.Line(); got != w {
			t.Fatalf("answer line %d = %q, want %q", i, got, w)
		}
	}
	c.Script(`
		C: QUIT
		S: +OK bye
	`)
}

func TestConnectionLimits(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxConns = 2 }})
	c1 := e.dialReady()
	e.dialReady()
	c3 := e.dial()
	c3.Expect("-ERR [SYS/TEMP] too many connections")
	c3.ExpectClosed()
	c1.Script(`
		C: QUIT
		S: +OK bye
	`)
	// The slot is free again once the first session has ended.
	eventually(t, "free slot", func() bool {
		c := e.dial()
		return strings.HasPrefix(c.Line(), "+OK")
	})
}

func TestConnectionLimitPerIP(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxConnsPerIP = 1 }})
	e.dialReady()
	c2 := e.dial()
	c2.Expect("-ERR [SYS/TEMP] too many connections")
	c2.ExpectClosed()
}

// DESIGN invariant 8: no password or AUTH payload in any log line, even at
// trace level.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) {
		o.Logger = o.Logger.Level(-1) // trace
		o.MaxAuthFailures = 10
	}})
	e.be.AddUser("carol", "c0rrect-h0rse")
	secrets := []string{"secret pw", "hunter2", "c0rrect-h0rse", "wrong-pass-1"}
	payloads := []string{
		b64("\x00alice\x00secret pw"),
		b64("\x00bob\x00hunter2"),
		b64("\x00alice\x00wrong-pass-1"),
		b64("c0rrect-h0rse"),
	}
	// USER/PASS, good and bad.
	c := e.dialReady()
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS wrong-pass-1
		S: -ERR [AUTH]*
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK*
		C: QUIT
		S: +OK bye
	`)
	// AUTH PLAIN with an initial response, and a bad one.
	c = e.dialReady()
	c.Script(`
		C: AUTH PLAIN ` + payloads[2] + `
		S: -ERR [AUTH]*
		C: AUTH PLAIN ` + payloads[0] + `
		S: +OK*
		C: QUIT
		S: +OK bye
	`)
	// AUTH PLAIN by continuation.
	c = e.dialReady()
	c.Script(`
		C: AUTH PLAIN
		S: + 
		C: ` + payloads[1] + `
		S: +OK*
		C: QUIT
		S: +OK bye
	`)
	// AUTH LOGIN.
	c = e.dialReady()
	c.Script(`
		C: AUTH LOGIN ` + b64("carol") + `
		S: + *
		C: ` + payloads[3] + `
		S: +OK*
		C: QUIT
		S: +OK bye
	`)
	eventually(t, "four logins logged", func() bool { return strings.Count(e.logs.String(), `"end":"quit"`) == 4 })
	logs := e.logs.String()
	for _, s := range append(secrets, payloads...) {
		if strings.Contains(logs, s) {
			t.Errorf("log holds secret %q", s)
		}
	}
	for _, want := range []string{`"user":"alice"`, `"user":"bob"`, `"user":"carol"`, `"mechanism":"PLAIN"`, `"cmd":"PASS"`, `"message":"authentication failed"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
}

func TestLogoutLine(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	e.be.Append("alice", []byte("S: 2\r\n\r\ny\r\n"))
	c := e.login("alice", "secret pw")
	c.Script(`
		C: RETR 1
		S: +OK*
		S: S: 1
		S: 
		S: x
		S: .
		C: TOP 2 0
		S: +OK*
		S: S: 2
		S: 
		S: .
		C: DELE 1
		S: +OK*
		C: QUIT
		S: +OK*
	`)
	eventually(t, "logout line", func() bool { return strings.Contains(e.logs.String(), "session end") })
	var line string
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, "session end") {
			line = l
		}
	}
	for _, want := range []string{`"level":"info"`, `"conn":1`, `"remote":"127.0.0.1:`, `"listener":"test"`, `"user":"alice"`,
		`"end":"quit"`, `"listed":2`, `"retrieved":1`, `"top":1`, `"deleted":1`, `"octets":`, `"duration":`} {
		if !strings.Contains(line, want) {
			t.Errorf("logout line %s lacks %s", line, want)
		}
	}
}

func TestUpdateKeepsOpenSessions(t *testing.T) {
	e := newEnv(t, envConfig{})
	old := e.dialReady()
	o := e.opts
	o.Implementation = "popgate-reloaded"
	if err := e.srv.Update(o); err != nil {
		t.Fatal(err)
	}
	capa := func(c *client) []string {
		c.Send("CAPA")
		c.ExpectPrefix("+OK")
		return c.Multi()
	}
	if l := capa(old); !contains(l, "IMPLEMENTATION popgate") {
		t.Fatalf("open session changed options: %q", l)
	}
	if l := capa(e.dialReady()); !contains(l, "IMPLEMENTATION popgate-reloaded") {
		t.Fatalf("new session kept old options: %q", l)
	}
}

// goroutines waits until the goroutine count drops to at most n.
func goroutinesBackTo(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(ioTimeout)
	for runtime.NumGoroutine() > n {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutine leak: %d running, want <= %d\n%s", runtime.NumGoroutine(), n, buf)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestShutdown(t *testing.T) {
	before := runtime.NumGoroutine()
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	// One session in TRANSACTION with a deletion marked, one before login,
	// one that says QUIT during the grace period.
	c1 := e.login("alice", "secret pw")
	c1.Script(`
		C: DELE 1
		S: +OK message 1 deleted
	`)
	e.dialReady()
	c3 := e.login("bob", "hunter2")
	if n := e.srv.Sessions(); n != 3 {
		t.Fatalf("Sessions() = %d, want 3", n)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctx) }()
	// No new connections once shutting down.
	eventually(t, "listener closed", func() bool {
		c, err := net.DialTimeout("tcp", e.addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	c3.Script(`
		C: QUIT
		S: +OK bye
	`)
	if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want DeadlineExceeded", err)
	}
	if err := <-e.served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
	e.served <- ErrServerClosed // for the cleanup
	c1.ExpectClosed()
	if n := len(e.be.Commits()); n != 0 || len(e.be.UIDLs("alice")) != 1 {
		t.Fatalf("shutdown committed (%d commits)", n)
	}
	if e.be.OpenMailboxes() != 0 || e.locker.Held(aliceKey) {
		t.Fatal("shutdown left a mailbox or a lock open")
	}
	if !strings.Contains(e.logs.String(), `"end":"shutdown"`) {
		t.Fatal("no shutdown end reason logged")
	}
	// Serve after Shutdown returns at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.srv.Serve(l, ListenerConfig{}); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown = %v", err)
	}
	// Close client sockets, then count goroutines.
	for _, c := range []*client{c1, c3} {
		c.Conn().Close()
	}
	goroutinesBackTo(t, before)
}

func TestShutdownWaitsForQuickSessions(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.login("alice", "secret pw").Script(`
		C: QUIT
		S: +OK bye
	`)
	ctx, cancel := context.WithTimeout(context.Background(), ioTimeout)
	defer cancel()
	if err := e.srv.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with no open session = %v", err)
	}
}

// A session streaming from a stalled backend does not hold Shutdown past
// its deadline, and commits nothing.
func TestShutdownDuringRETR(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", benchMessage(1<<20))
	e.be.SetFaults(memory.Faults{SlowRead: 20 * time.Millisecond, SlowChunk: 1024})
	c := e.login("alice", "secret pw")
	c.Script(`
		C: DELE 1
		S: +OK message 1 deleted
		C: RSET
		S: +OK*
		C: RETR 1
		S: +OK*
	`)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("Shutdown took %v", d)
	}
	if e.be.CommitCalls() != 0 || e.be.OpenMailboxes() != 0 || e.locker.Held(aliceKey) {
		t.Fatal("shutdown during RETR committed or left the maildrop open")
	}
}
