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
	c.Expect("+OK POP3 server ready")
	c.Send("quit") // keywords are case-insensitive (RFC 1939 §3)
	c.Expect("+OK bye")
	c.ExpectClosed()
}

func TestBasicSession(t *testing.T) {
	e := newEnv(t, envConfig{})
	m1 := "Subject: one\r\n\r\nhello\r\n"
	m2 := "Subject: two\r\n\r\nworld\r\nsecond line\r\n"
	u1 := e.be.Append("alice", []byte(m1))
	u2 := e.be.Append("alice", []byte(m2))
	total := len(m1) + len(m2)

	c := e.dialReady()
	c.Send("USER alice")
	c.Expect("+OK send PASS")
	c.Send("PASS secret pw") // RFC 1939 §7: a password may contain spaces
	c.Expect(fmt.Sprintf("+OK maildrop has 2 messages (%d octets)", total))
	c.Send("STAT")
	c.Expect(fmt.Sprintf("+OK 2 %d", total))
	c.Send("LIST")
	c.Expect(fmt.Sprintf("+OK 2 messages (%d octets)", total))
	if got, want := c.Multi(), []string{fmt.Sprintf("1 %d", len(m1)), fmt.Sprintf("2 %d", len(m2))}; !reflect.DeepEqual(got, want) {
		t.Fatalf("LIST = %q, want %q", got, want)
	}
	c.Send("LIST 2")
	c.Expect(fmt.Sprintf("+OK 2 %d", len(m2)))
	c.Send("UIDL")
	c.Expect("+OK unique-id listing follows")
	if got, want := c.Multi(), []string{"1 " + u1, "2 " + u2}; !reflect.DeepEqual(got, want) {
		t.Fatalf("UIDL = %q, want %q", got, want)
	}
	c.Send("UIDL 1")
	c.Expect("+OK 1 " + u1)
	c.Send("RETR 2")
	c.Expect(fmt.Sprintf("+OK %d octets", len(m2)))
	if got := string(c.Body()); got != m2 {
		t.Fatalf("RETR 2 = %q, want %q", got, m2)
	}
	c.Send("DELE 1")
	c.Expect("+OK message 1 deleted")
	c.Send("STAT")
	c.Expect(fmt.Sprintf("+OK 1 %d", len(m2)))
	c.Send("QUIT")
	c.Expect("+OK bye, 1 messages deleted")
	c.ExpectClosed()

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
