package proxy

import (
	"strings"
	"testing"
	"time"
)

// Transcripts of every command in every state, happy and error paths.

func TestAuthorizationState(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) {
		o.Implementation = "popgate-test"
		o.LoginDelay = 90 * time.Second
		o.Expire = "NEVER"
		o.MaxErrors = 100
		o.MaxAuthFailures = 100
	}})
	c := e.dialReady()
	c.Script(`
		C: CAPA extra
		S: -ERR CAPA takes no argument
		C: STAT
		S: -ERR command not valid before login
		C: LIST
		S: -ERR command not valid before login
		C: UIDL 1
		S: -ERR command not valid before login
		C: RETR 1
		S: -ERR command not valid before login
		C: TOP 1 1
		S: -ERR command not valid before login
		C: DELE 1
		S: -ERR command not valid before login
		C: RSET
		S: -ERR command not valid before login
		C: NOOP
		S: -ERR command not valid before login
		C: APOP alice 0123456789abcdef0123456789abcdef
		S: -ERR APOP not supported
		C: XYZZY
		S: -ERR unknown command
		C: HELLOWORLD
		S: -ERR unknown command
		C:
		S: -ERR unknown command
		C: STLS
		S: -ERR STLS not available on this port
		C: PASS secret pw
		S: -ERR PASS must follow USER
		C: USER
		S: -ERR USER needs one argument: the login name
		C: USER alice
		S: +OK send PASS
		C: NOOP
		S: -ERR command not valid before login
		C: PASS secret pw
		S: -ERR PASS must follow USER
		C: USER alice
		S: +OK send PASS
		C: PASS wrong
		S: -ERR [AUTH] authentication failed
		C: USER nobody
		S: +OK send PASS
		C: PASS secret pw
		S: -ERR [AUTH] authentication failed
		C: AUTH
		S: +OK SASL mechanisms follow
		S: PLAIN
		S: LOGIN
		S: .
		C: AUTH CRAM-MD5
		S: -ERR unsupported SASL mechanism
		C: AUTH PLAIN a b c
		S: -ERR AUTH takes a mechanism and an optional initial response
		C: uSeR alice
		S: +OK send PASS
		C: pAsS secret pw
		S: +OK maildrop has 0 messages (0 octets)
		C: QUIT
		S: +OK bye
		S: <closed>
	`)
}

func TestTransactionState(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxErrors = 100 }})
	u1 := e.be.Append("alice", []byte("A: 1\r\n\r\none\r\n"))      // 13 octets
	u2 := e.be.Append("alice", []byte("B: 2\r\n\r\ntwo\r\n2\r\n")) // 16 octets
	u3 := e.be.Append("alice", []byte("C: 3\r\n\r\n"))             // 8 octets
	c := e.login("alice", "secret pw")
	c.Script(`
		C: STAT
		S: +OK 3 37
		C: STAT 1
		S: -ERR STAT takes no argument
		C: LIST
		S: +OK 3 messages (37 octets)
		S: 1 13
		S: 2 16
		S: 3 8
		S: .
		C: LIST 2
		S: +OK 2 16
		C: LIST 0
		S: -ERR no such message, only 3 messages in maildrop
		C: LIST 4
		S: -ERR no such message, only 3 messages in maildrop
		C: LIST x
		S: -ERR invalid message number
		C: LIST -1
		S: -ERR invalid message number
		C: LIST +1
		S: -ERR invalid message number
		C: LIST 99999999999999999999
		S: -ERR invalid message number
		C: LIST 1 2
		S: -ERR LIST takes at most one argument
		C: UIDL
		S: +OK unique-id listing follows
		S: 1 ` + u1 + `
		S: 2 ` + u2 + `
		S: 3 ` + u3 + `
		S: .
		C: UIDL 3
		S: +OK 3 ` + u3 + `
		C: UIDL 9
		S: -ERR no such message, only 3 messages in maildrop
		C: UIDL 1 2
		S: -ERR UIDL takes at most one argument
		C: RETR 1
		S: +OK 13 octets
		S: A: 1
		S: 
		S: one
		S: .
		C: RETR
		S: -ERR RETR needs one message number
		C: RETR 1 2
		S: -ERR RETR needs one message number
		C: RETR 4
		S: -ERR no such message, only 3 messages in maildrop
		C: TOP 2 0
		S: +OK top of message follows
		S: B: 2
		S: 
		S: .
		C: TOP 2 1
		S: +OK top of message follows
		S: B: 2
		S: 
		S: two
		S: .
		C: TOP 2 100
		S: +OK top of message follows
		S: B: 2
		S: 
		S: two
		S: 2
		S: .
		C: TOP 2
		S: -ERR TOP needs a message number and a line count
		C: TOP 2 -1
		S: -ERR invalid line count
		C: TOP 7 1
		S: -ERR no such message, only 3 messages in maildrop
		C: DELE
		S: -ERR DELE needs one message number
		C: DELE 2
		S: +OK message 2 deleted
		C: DELE 2
		S: -ERR message 2 already deleted
		C: RETR 2
		S: -ERR message 2 already deleted
		C: TOP 2 0
		S: -ERR message 2 already deleted
		C: LIST 2
		S: -ERR message 2 already deleted
		C: UIDL 2
		S: -ERR message 2 already deleted
		C: STAT
		S: +OK 2 21
		C: LIST
		S: +OK 2 messages (21 octets)
		S: 1 13
		S: 3 8
		S: .
		C: UIDL
		S: +OK unique-id listing follows
		S: 1 ` + u1 + `
		S: 3 ` + u3 + `
		S: .
		C: RSET
		S: +OK maildrop has 3 messages (37 octets)
		C: RSET x
		S: -ERR RSET takes no argument
		C: STAT
		S: +OK 3 37
		C: NOOP
		S: +OK
		C: NOOP x
		S: -ERR NOOP takes no argument
		C: USER alice
		S: -ERR already logged in
		C: PASS x
		S: -ERR already logged in
		C: AUTH PLAIN
		S: -ERR already logged in
		C: STLS
		S: -ERR already logged in
		C: APOP a b
		S: -ERR already logged in
		C: FOO
		S: -ERR unknown command
		C: DELE 3
		S: +OK message 3 deleted
		C: QUIT now
		S: -ERR QUIT takes no argument
		C: QUIT
		S: +OK bye, 1 messages deleted
		S: <closed>
	`)
	if got := strings.Join(e.be.UIDLs("alice"), " "); got != u1+" "+u2 {
		t.Fatalf("store after QUIT = %s, want %s %s", got, u1, u2)
	}
}

func TestTooManyErrorsCloses(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxErrors = 3 }})
	c := e.dialReady()
	c.Script(`
		C: FOO
		S: -ERR unknown command
		C: CAPA
		S: +OK capability list follows*
	`)
	c.Multi()
	// A success resets the count: three more errors are needed.
	c.Script(`
		C: FOO
		S: -ERR unknown command
		C: BAR
		S: -ERR unknown command
		C: BAZ
		S: -ERR unknown command
		S: <closed>
	`)
}

func TestAuthFailuresClose(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxAuthFailures = 2 }})
	c := e.dialReady()
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS nope
		S: -ERR [AUTH] authentication failed
		C: AUTH PLAIN ` + b64("\x00alice\x00nope") + `
		S: -ERR [AUTH] authentication failed
		S: <closed>
	`)
	if !strings.Contains(e.logs.String(), `"failures":2`) {
		t.Fatalf("auth failures not logged:\n%s", e.logs)
	}
}

func TestCommandLineLimit(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.dialReady()
	// RFC 2449 §4: 255 octets including CRLF are fine …
	name := strings.Repeat("a", 255-len("USER \r\n"))
	c.CmdPrefix("USER "+name, "+OK")
	// … 256 are not.
	c.CmdPrefix("USER "+name+"b", "-ERR command line too long")
	// A 1 MB line is discarded without killing the session.
	c.SendRaw("NOOP " + strings.Repeat("x", 1<<20) + "\r\n")
	c.Expect("-ERR command line too long (at most 255 octets)")
	c.Script(`
		C: USER alice
		S: +OK send PASS
		C: PASS secret pw
		S: +OK*
	`)
}
