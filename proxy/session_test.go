package proxy

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

func TestGreetingAndQuitInAuthorization(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.dial()
	c.expect("+OK POP3 server ready")
	c.send("quit") // keywords are case-insensitive (RFC 1939 §3)
	c.expect("+OK bye")
	c.expectClosed()
}

func TestBasicSession(t *testing.T) {
	e := newEnv(t, envConfig{})
	m1 := "Subject: one\r\n\r\nhello\r\n"
	m2 := "Subject: two\r\n\r\nworld\r\nsecond line\r\n"
	u1 := e.be.Append("alice", []byte(m1))
	u2 := e.be.Append("alice", []byte(m2))
	total := len(m1) + len(m2)

	c := e.dialReady()
	c.send("USER alice")
	c.expect("+OK send PASS")
	c.send("PASS secret pw") // RFC 1939 §7: a password may contain spaces
	c.expect(fmt.Sprintf("+OK maildrop has 2 messages (%d octets)", total))
	c.send("STAT")
	c.expect(fmt.Sprintf("+OK 2 %d", total))
	c.send("LIST")
	c.expect(fmt.Sprintf("+OK 2 messages (%d octets)", total))
	if got, want := c.multi(), []string{fmt.Sprintf("1 %d", len(m1)), fmt.Sprintf("2 %d", len(m2))}; !reflect.DeepEqual(got, want) {
		t.Fatalf("LIST = %q, want %q", got, want)
	}
	c.send("LIST 2")
	c.expect(fmt.Sprintf("+OK 2 %d", len(m2)))
	c.send("UIDL")
	c.expect("+OK unique-id listing follows")
	if got, want := c.multi(), []string{"1 " + u1, "2 " + u2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("UIDL = %q, want %q", got, want)
	}
	c.send("UIDL 1")
	c.expect("+OK 1 " + u1)
	c.send("RETR 2")
	c.expect(fmt.Sprintf("+OK %d octets", len(m2)))
	if got := string(c.body()); got != m2 {
		t.Fatalf("RETR 2 = %q, want %q", got, m2)
	}
	c.send("DELE 1")
	c.expect("+OK message 1 deleted")
	c.send("STAT")
	c.expect(fmt.Sprintf("+OK 1 %d", len(m2)))
	c.send("QUIT")
	c.expect("+OK bye, 1 messages deleted")
	c.expectClosed()

	if got := e.be.UIDLs("alice"); !reflect.DeepEqual(got, []string{u2}) {
		t.Fatalf("after QUIT the store holds %q, want only %q", got, u2)
	}
	commits := e.be.Commits()
	if len(commits) != 1 || !reflect.DeepEqual(commits[0].UIDLs, []string{u1}) {
		t.Fatalf("commits = %+v", commits)
	}
	eventually(t, "mailbox closed", func() bool { return e.be.OpenMailboxes() == 0 })
	eventually(t, "logout line", func() bool { return strings.Contains(e.logs.String(), `"end":"quit"`) })
}
