package proxy

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
)

// Issue 14: session.max_errors counts protocol faults only (default 20).

// A client that checks its deleted messages, and pipelines TOP over a range
// running past the end of the maildrop, gets many correct -ERR answers in a
// row; its session must survive to QUIT and commit its deletions.
func TestMaxErrorsIgnoresAnswersAboutMessageNumbers(t *testing.T) {
	e := newEnv(t, envConfig{}) // MaxErrors left at its default
	var uidls []string
	for i := 1; i <= 5; i++ {
		uidls = append(uidls, e.be.Append("alice", []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i))))
	}
	c := e.login("alice", "secret pw")
	c.CmdPrefix("DELE 2", "+OK")
	c.CmdPrefix("DELE 4", "+OK")
	n := 0
	for _, m := range []string{"2", "4"} {
		for _, cmd := range []string{"LIST " + m, "UIDL " + m, "RETR " + m, "TOP " + m + " 0", "DELE " + m} {
			c.Send(cmd)
			c.Expect("-ERR message " + m + " already deleted")
			n++
		}
	}
	for _, cmd := range []string{"LIST 0", "RETR 0", "UIDL 6", "DELE 99"} {
		c.Send(cmd)
		c.Expect("-ERR no such message, only 5 messages in maildrop")
		n++
	}
	// TOP n 0 pipelined over 6..30, in one write.
	var b strings.Builder
	for i := 6; i <= 30; i++ {
		fmt.Fprintf(&b, "TOP %d 0\r\n", i)
	}
	c.SendRaw(b.String())
	for i := 6; i <= 30; i++ {
		c.Expect("-ERR no such message, only 5 messages in maildrop")
		n++
	}
	if n <= DefaultMaxErrors {
		t.Fatalf("test sends only %d -ERR answers in a row", n)
	}
	c.Script(`
		C: QUIT
		S: +OK bye, 2 messages deleted
		S: <closed>
	`)
	want := []string{uidls[0], uidls[2], uidls[4]}
	if got := e.be.UIDLs("alice"); !reflect.DeepEqual(got, want) {
		t.Fatalf("store after QUIT holds %q, want %q", got, want)
	}
}

// Upstream failures and failed logins do not count either.
func TestMaxErrorsIgnoresUpstreamAndAuthFailures(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxErrors = 2; o.MaxAuthFailures = 100 }})
	e.be.Append("alice", []byte("Subject: 1\r\n\r\nbody\r\n"))
	c := e.dialReady()
	for i := 0; i < 5; i++ {
		c.Script(`
			C: USER alice
			S: +OK send PASS
			C: PASS wrong
			S: -ERR [AUTH] authentication failed
			C: AUTH PLAIN ` + b64("\x00alice\x00wrong") + `
			S: -ERR [AUTH] authentication failed
		`)
	}
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK maildrop has 1 messages*
	`)
	e.be.SetFaults(memory.Faults{Open: backends.ErrUnavailable})
	for i := 0; i < 5; i++ {
		c.CmdPrefix("RETR 1", "-ERR [SYS/TEMP]")
		c.CmdPrefix("TOP 1 0", "-ERR [SYS/TEMP]")
	}
	c.Script(`
		C: QUIT
		S: +OK bye
		S: <closed>
	`)
}

// Protocol faults count: the default closes the connection at the 20th in
// a row, and a success resets the count.
func TestMaxErrorsDefaultCountsProtocolFaults(t *testing.T) {
	e := newEnv(t, envConfig{})
	e.be.Append("alice", []byte("Subject: 1\r\n\r\nbody\r\n"))
	c := e.login("alice", "secret pw")
	faults := []struct{ cmd, answer string }{
		{"XYZZY", "-ERR unknown command"},
		{"USER bob", "-ERR already logged in"},
		{"STAT 1", "-ERR STAT takes no argument"},
		{"LIST one", "-ERR invalid message number"},
		{"RETR", "-ERR RETR needs one message number"},
		{"TOP 1", "-ERR TOP needs a message number and a line count"},
		{"TOP 1 x", "-ERR invalid line count"},
		{"DELE -1", "-ERR invalid message number"},
		{"NOOP " + strings.Repeat("x", 300), "-ERR command line too long (at most 255 octets)"},
	}
	for i := 0; i < DefaultMaxErrors-1; i++ {
		f := faults[i%len(faults)]
		c.Send(f.cmd)
		c.Expect(f.answer)
	}
	c.CmdPrefix("NOOP", "+OK")
	for i := 0; i < DefaultMaxErrors-1; i++ {
		f := faults[i%len(faults)]
		c.Send(f.cmd)
		c.Expect(f.answer)
	}
	c.Send("XYZZY")
	c.Expect("-ERR unknown command")
	c.ExpectClosed()
	if got := e.be.UIDLs("alice"); len(got) != 1 {
		t.Fatalf("store holds %d messages, want 1", len(got))
	}
}
