package proxy

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
)

// Lock, commit and backend-failure behaviour (DESIGN invariants 1, 3, 6).

const aliceKey = "memory:alice"

func TestLockInUse(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c1 := e.login("alice", "secret pw")
	c2 := e.dialReady()
	c2.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: -ERR [IN-USE] maildrop already in use
		C: STAT
		S: -ERR command not valid before login
	`)
	// A refused session closes its upstream mailbox at once.
	eventually(t, "second mailbox closed", func() bool { return e.be.OpenMailboxes() == 1 })
	// Free right after QUIT: no wait needed.
	c1.Script(`
		C: QUIT
		S: +OK bye
	`)
	if e.locker.Held(aliceKey) {
		t.Fatal("lock still held after +OK to QUIT")
	}
	c2.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK maildrop has 1 messages*
	`)
}

func TestLockFreedAfterDrop(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c := e.login("alice", "secret pw")
	c.Script(`
		C: DELE 1
		S: +OK message 1 deleted
	`)
	if !e.locker.Held(aliceKey) {
		t.Fatal("lock not held during the session")
	}
	c.Conn().Close()
	eventually(t, "lock freed after drop", func() bool { return !e.locker.Held(aliceKey) })
	eventually(t, "mailbox closed", func() bool { return e.be.OpenMailboxes() == 0 })
	e.login("alice", "secret pw")
	if n := len(e.be.Commits()); n != 0 {
		t.Fatalf("drop committed %d times", n)
	}
	if len(e.be.UIDLs("alice")) != 1 {
		t.Fatal("drop deleted a message")
	}
	eventually(t, "logout line", func() bool { return strings.Contains(e.logs.String(), `"end":"drop"`) })
}

func TestIdleTimeout(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.IdleTimeout = time.Second }})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c := e.login("alice", "secret pw")
	c.Script(`
		C: DELE 1
		S: +OK message 1 deleted
	`)
	// RFC 1939 §3: the autologout timer closes without a response or UPDATE.
	c.ExpectClosed()
	eventually(t, "lock freed after timeout", func() bool { return !e.locker.Held(aliceKey) })
	if n := len(e.be.Commits()); n != 0 || len(e.be.UIDLs("alice")) != 1 {
		t.Fatalf("timeout committed (%d commits)", n)
	}
	eventually(t, "logout line", func() bool { return strings.Contains(e.logs.String(), `"end":"timeout"`) })
	e.login("alice", "secret pw")
}

func TestLoginTimeout(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.LoginTimeout = 200 * time.Millisecond }})
	c := e.dialReady()
	c.ExpectClosed()
}

func TestQuitWithoutDeleteDoesNotCommit(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c := e.login("alice", "secret pw")
	c.Script(`
		C: DELE 1
		S: +OK message 1 deleted
		C: RSET
		S: +OK maildrop has 1 messages*
		C: QUIT
		S: +OK bye
	`)
	if n := e.be.CommitCalls(); n != 0 {
		t.Fatalf("Commit called %d times without marked messages", n)
	}
}

func TestCommitFailure(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	e.be.Append("alice", []byte("S: 2\r\n\r\ny\r\n"))
	before := e.be.UIDLs("alice")
	e.be.SetFaults(memory.Faults{Commit: errors.New("upstream said NO [secret detail]")})
	c := e.login("alice", "secret pw")
	c.Script(`
		C: DELE 1
		S: +OK message 1 deleted
		C: QUIT
		S: -ERR [SYS/TEMP] internal error, try again later
		S: <closed>
	`)
	if got := e.be.UIDLs("alice"); strings.Join(got, ",") != strings.Join(before, ",") || len(e.be.Commits()) != 0 {
		t.Fatalf("store changed after failed commit: %v", got)
	}
	if n := e.be.CommitCalls(); n != 1 {
		t.Fatalf("Commit called %d times, want exactly once", n)
	}
	eventually(t, "lock freed", func() bool { return !e.locker.Held(aliceKey) })
	eventually(t, "logout line", func() bool { return strings.Contains(e.logs.String(), `"end":"commit_failed"`) })

	// A backend error with its own code and text reaches the client as is.
	e.be.SetFaults(memory.Faults{Commit: backends.ErrUnavailable.Wrap(errors.New("detail"))})
	c = e.login("alice", "secret pw")
	c.Script(`
		C: DELE 2
		S: +OK message 2 deleted
		C: QUIT
		S: -ERR [SYS/TEMP] mail store unavailable, try again later
	`)
	if len(e.be.UIDLs("alice")) != 2 {
		t.Fatal("store changed after failed commit")
	}
}

func TestBackendErrors(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxErrors = 100 }})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	u2 := e.be.Append("alice", []byte("S: 2\r\n\r\n"+strings.Repeat("y", 100)+"\r\n"))

	e.be.SetFaults(memory.Faults{Login: backends.ErrUnavailable.Wrap(errors.New("dial tcp: refused"))})
	c := e.dialReady()
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: -ERR [SYS/TEMP] mail store unavailable, try again later
	`)
	e.be.SetFaults(memory.Faults{Login: errors.New("some internal detail")})
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: -ERR [SYS/TEMP] internal error, try again later
	`)
	e.be.SetFaults(memory.Faults{Login: &backends.Error{Code: backends.CodeLoginDelay, Text: "wait 5 minutes"}})
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: -ERR [LOGIN-DELAY] wait 5 minutes
	`)
	e.be.SetFaults(memory.Faults{Snapshot: errors.New("FETCH failed")})
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: -ERR [SYS/TEMP] internal error, try again later
	`)
	if e.locker.Held(aliceKey) || e.be.OpenMailboxes() != 0 {
		t.Fatal("failed snapshot left the lock or the mailbox open")
	}
	e.be.SetFaults(memory.Faults{})
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK maildrop has 2 messages*
	`)
	e.be.SetFaults(memory.Faults{Open: errors.New("FETCH BODY failed")})
	c.Script(`
		C: RETR 1
		S: -ERR [SYS/TEMP] internal error, try again later
		C: TOP 1 0
		S: -ERR [SYS/TEMP] internal error, try again later
	`)
	// A failure at the first read is still a clean -ERR.
	e.be.SetFaults(memory.Faults{Break: true})
	c.Script(`
		C: RETR 1
		S: -ERR [SYS/TEMP] internal error, try again later
	`)
	e.be.SetFaults(memory.Faults{})
	e.be.Remove("alice", u2)
	c.Script(`
		C: RETR 2
		S: -ERR message no longer available
		C: RETR 1
		S: +OK*
		S: S: 1
		S: 
		S: x
		S: .
	`)
	// A failure after +OK closes the connection without a terminator.
	e.be.SetFaults(memory.Faults{Break: true, BreakAfter: 5})
	c.Send("RETR 1")
	c.Expect("+OK 11 octets")
	rest := c.ReadToClose()
	if string(rest) != "S: 1\r" && string(rest) != "" {
		t.Fatalf("after a broken stream got %q", rest)
	}
	if strings.Contains(string(rest), "\r\n.\r\n") {
		t.Fatal("truncated message got a terminator")
	}
	eventually(t, "lock freed", func() bool { return !e.locker.Held(aliceKey) })
	if !strings.Contains(e.logs.String(), "message stream failed after +OK") {
		t.Fatalf("broken stream not logged:\n%s", e.logs)
	}
}

// sizeLiar reports every message one octet bigger than it is.
type sizeLiar struct{ backends.Backend }
type sizeLiarBox struct{ backends.Mailbox }

func (s sizeLiar) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	mb, err := s.Backend.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	return sizeLiarBox{mb}, nil
}

func (s sizeLiarBox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	msgs, err := s.Mailbox.Snapshot(ctx)
	for i := range msgs {
		msgs[i].Size++
	}
	return msgs, err
}

func TestSizeMismatchLogged(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.Backend = sizeLiar{o.Backend} }})
	e.be.Append("alice", []byte("S: 1\r\n\r\nx\r\n"))
	c := e.login("alice", "secret pw")
	c.Script(`
		C: RETR 1
		S: +OK 12 octets
		S: S: 1
		S: 
		S: x
		S: .
	`)
	eventually(t, "warning", func() bool {
		return strings.Contains(e.logs.String(), `"listed":12,"sent":11,"message":"message size differs from the snapshot"`)
	})
}

// panicky panics in Snapshot.
type panicky struct{ backends.Backend }
type panickyBox struct{ backends.Mailbox }

func (p panicky) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	mb, err := p.Backend.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	if c.Username == "bob" {
		return panickyBox{mb}, nil
	}
	return mb, nil
}

func (panickyBox) Snapshot(context.Context) ([]backends.Message, error) { panic("boom") }

func TestPanicIsContained(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.Backend = panicky{o.Backend} }})
	c := e.dialReady()
	c.Script(`
		C: USER bob
		S: +OK send PASS
		C: PASS hunter2
		S: <closed>
	`)
	eventually(t, "mailbox closed and lock free", func() bool {
		return e.be.OpenMailboxes() == 0 && !e.locker.Held("memory:bob")
	})
	if !strings.Contains(e.logs.String(), "session panicked") {
		t.Fatal("panic not logged")
	}
	// The server goes on serving.
	e.login("alice", "secret pw")
}
