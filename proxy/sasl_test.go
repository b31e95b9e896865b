package proxy

import (
	"strings"
	"testing"
)

func TestSASLPlainInitialResponse(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.dialReady()
	c.Script(`
		C: AUTH PLAIN ` + b64("\x00alice\x00secret pw") + `
		S: +OK maildrop has 0 messages (0 octets)
		C: QUIT
		S: +OK bye
	`)
}

func TestSASLPlainContinuation(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.dialReady()
	c.Script(`
		C: auth plain
		S: + 
		C: ` + b64("alice\x00alice\x00secret pw") + `
		S: +OK maildrop has 0 messages (0 octets)
	`)
}

func TestSASLLogin(t *testing.T) {
	e := newEnv(t, envConfig{})
	c := e.dialReady()
	c.Script(`
		C: AUTH LOGIN
		S: + VXNlcm5hbWU6
		C: ` + b64("bob") + `
		S: + UGFzc3dvcmQ6
		C: ` + b64("hunter2") + `
		S: +OK*
	`)
	// LOGIN with the user name as initial response.
	c2 := e.dialReady()
	c2.Script(`
		C: AUTH LOGIN ` + b64("alice") + `
		S: + UGFzc3dvcmQ6
		C: ` + b64("secret pw") + `
		S: +OK*
	`)
}

func TestSASLErrors(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxAuthFailures = 10; o.MaxErrors = 100 }})
	c := e.dialReady()
	c.Script(`
		C: AUTH PLAIN
		S: + 
		C: *
		S: -ERR authentication cancelled
		C: AUTH LOGIN
		S: + VXNlcm5hbWU6
		C: *
		S: -ERR authentication cancelled
		C: AUTH PLAIN
		S: + 
		C: not base64!
		S: -ERR invalid base64 in SASL response
		C: AUTH PLAIN =
		S: -ERR [AUTH] authentication failed
		C: AUTH PLAIN ` + b64("alice\x00secret pw") + `
		S: -ERR [AUTH] authentication failed
		C: AUTH PLAIN ` + b64("bob\x00alice\x00secret pw") + `
		S: -ERR [AUTH] authentication failed
		C: AUTH PLAIN ` + b64("\x00alice\x00wrong") + `
		S: -ERR [AUTH] authentication failed
		C: AUTH PLAIN ` + b64("\x00alice\x00secret pw") + `
		S: +OK*
	`)
}

// RFC 5034 §4: continuation lines may be much longer than 255 octets (OAuth
// tokens); the initial response on the AUTH line too.
func TestSASLLongResponses(t *testing.T) {
	e := newEnv(t, envConfig{})
	long := strings.Repeat("p", 12*1024) // 16 KiB in base64
	e.be.AddUser("long", long)
	resp := b64("\x00long\x00" + long)
	if len(resp) < 16*1024 {
		t.Fatalf("response only %d octets", len(resp))
	}
	c := e.dialReady()
	c.Script(`
		C: AUTH PLAIN
		S: + 
		C: ` + resp + `
		S: +OK*
		C: QUIT
		S: +OK bye
	`)
	c2 := e.dialReady()
	c2.Script(`
		C: AUTH PLAIN ` + resp + `
		S: +OK*
	`)
	// Beyond the SASL limit: -ERR, the session goes on.
	c3 := e.dialReady()
	c3.Script(`
		C: AUTH PLAIN
		S: + 
		C: ` + strings.Repeat("A", maxSASLLine+10) + `
		S: -ERR SASL response too long
		C: NOOP
		S: -ERR command not valid before login
	`)
}
