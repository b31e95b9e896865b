package proxy

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/popgate/popgate/backends"
)

// saslMechanisms are the SASL mechanisms offered where plaintext login is
// allowed. APOP and CRAM-MD5 would need the clear password upstream; they
// are not offered.
var saslMechanisms = []string{"PLAIN", "LOGIN"}

// errSASLCancelled and errSASLSyntax end an exchange with -ERR (RFC 5034 §4).
var (
	errSASLCancelled = errors.New("authentication cancelled")
	errSASLBase64    = errors.New("invalid base64 in SASL response")
	errSASLTooLong   = errors.New("SASL response too long")
)

// cmdAUTH runs a SASL exchange (RFC 5034). Without an argument it lists the
// mechanisms, as older clients expect (RFC 5034 §4 note, RFC 1734).
func (ss *session) cmdAUTH(rest []byte) act {
	args := fields(rest)
	if len(args) == 0 {
		ss.ok("SASL mechanisms follow")
		if ss.plaintextOK() {
			for _, m := range saslMechanisms {
				ss.w.WriteString(m + "\r\n")
			}
		}
		ss.w.WriteString(".\r\n")
		return actContinue
	}
	if len(args) > 2 {
		return ss.fail(backends.CodeNone, "AUTH takes a mechanism and an optional initial response")
	}
	mech := strings.ToUpper(args[0])
	if mech != "PLAIN" && mech != "LOGIN" {
		return ss.fail(backends.CodeNone, "unsupported SASL mechanism")
	}
	if !ss.plaintextOK() {
		return ss.plaintextRefusal()
	}
	var initial *string
	if len(args) == 2 {
		initial = &args[1]
	}
	var c backends.Credentials
	var err error
	var closed bool
	if mech == "PLAIN" {
		c, closed, err = ss.saslPLAIN(initial)
	} else {
		c, closed, err = ss.saslLOGIN(initial)
	}
	if closed {
		return actClose
	}
	if err != nil {
		if errors.Is(err, errSASLAuth) {
			return ss.authFailed(c.Username, mech, err, "")
		}
		if errors.Is(err, errSASLCancelled) {
			return ss.refuse(backends.CodeNone, err.Error()) // RFC 5034 §4: a client's right
		}
		return ss.fail(backends.CodeNone, err.Error())
	}
	return ss.login(c)
}

var errSASLAuth = errors.New("malformed or unauthorised SASL identity")

// saslPLAIN decodes "authzid NUL authcid NUL passwd" (RFC 4616 §2).
func (ss *session) saslPLAIN(initial *string) (backends.Credentials, bool, error) {
	resp, closed, err := ss.saslStep("", initial)
	if closed || err != nil {
		return backends.Credentials{}, closed, err
	}
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 {
		return backends.Credentials{}, false, errSASLAuth
	}
	authz, authc, pass := string(parts[0]), string(parts[1]), string(parts[2])
	c := backends.Credentials{Username: authc, Mechanism: "PLAIN"}
	// Acting as another user (proxy authorisation) is not supported.
	if authc == "" || (authz != "" && authz != authc) {
		return c, false, errSASLAuth
	}
	c.Password = pass
	return c, false, nil
}

// saslLOGIN runs the LOGIN mechanism (draft-murchison-sasl-login): the
// initial response, if any, is the user name.
func (ss *session) saslLOGIN(initial *string) (backends.Credentials, bool, error) {
	user, closed, err := ss.saslStep("Username:", initial)
	if closed || err != nil {
		return backends.Credentials{}, closed, err
	}
	c := backends.Credentials{Username: string(user), Mechanism: "LOGIN"}
	pass, closed, err := ss.saslStep("Password:", nil)
	if closed || err != nil {
		return c, closed, err
	}
	if c.Username == "" {
		return c, false, errSASLAuth
	}
	c.Password = string(pass)
	return c, false, nil
}

// saslStep returns the decoded client response: the initial response if
// given ("=" is empty, RFC 5034 §4), else the answer to a "+ challenge"
// continuation line of up to maxSASLLine octets. closed reports that the
// connection is gone (the end reason is set).
func (ss *session) saslStep(challenge string, initial *string) ([]byte, bool, error) {
	var line []byte
	if initial != nil {
		line = []byte(*initial)
	} else {
		ss.w.WriteString("+ " + base64.StdEncoding.EncodeToString([]byte(challenge)) + "\r\n")
		if err := ss.w.Flush(); err != nil {
			ss.end = ss.endFor(err)
			return nil, true, err
		}
		if err := ss.nc.SetReadDeadline(time.Now().Add(ss.o.LoginTimeout)); err != nil {
			ss.end = ss.endFor(err)
			return nil, true, err
		}
		l, err := ss.lr.readLine(maxSASLLine, nil)
		switch {
		case errors.Is(err, errLineTooLong):
			return nil, false, errSASLTooLong
		case err != nil:
			ss.end = ss.endFor(err)
			return nil, true, err
		}
		line = l
		if string(line) == "*" { // RFC 5034 §4: the client cancels
			return nil, false, errSASLCancelled
		}
	}
	if string(line) == "=" {
		return nil, false, nil
	}
	out, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil {
		return nil, false, errSASLBase64
	}
	return out, false, nil
}
