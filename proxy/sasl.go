package proxy

// AUTH (RFC 5034) and the SASL mechanisms. saslMechanisms is the only list
// of them: CAPA's SASL line, AUTH without an argument and AUTH's dispatch
// all read it. A new mechanism (XOAUTH2, OAUTHBEARER) is a row here and a
// function that turns its exchange into backends.Credentials; login does
// the rest.

import (
	"bytes"
	"encoding/base64"
	"errors"
	"strings"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/oauth"
)

// saslMechanism is one SASL mechanism.
type saslMechanism struct {
	name string // as in AUTH and CAPA, upper case
	// password: the client sends a password; the mechanism is offered only
	// where plaintextOK allows it.
	password bool
	// bearer: the client sends an OAuth2 bearer token, passed through to
	// the upstream; offered only when the backend can take one
	// (backends.BearerAcceptor).
	bearer bool
	// exchange runs the mechanism after "AUTH name [initial-response]"
	// (initial is nil without one) and returns the credentials to check.
	// Errors: errSASLAuth (a malformed or unauthorised identity: a failed
	// login), errSASLCancelled, other SASL errors (protocol faults), or a
	// *sessionEnd when the connection failed.
	exchange func(ss *session, initial *string) (backends.Credentials, error)
}

// saslMechanisms are the mechanisms offered, in CAPA order. APOP and
// CRAM-MD5 would need the clear password upstream; they are not offered.
var saslMechanisms = [...]saslMechanism{
	{name: "PLAIN", password: true, exchange: (*session).saslPLAIN},                               // RFC 4616
	{name: "LOGIN", password: true, exchange: (*session).saslLOGIN},                               // draft-murchison-sasl-login
	{name: oauth.OAUTHBEARER, password: true, bearer: true, exchange: (*session).saslOAUTHBEARER}, // RFC 7628
	{name: oauth.XOAUTH2, password: true, bearer: true, exchange: (*session).saslXOAUTH2},         // Google's and Microsoft's
}

// bearerOK reports whether a client's bearer token can be passed through:
// some backend behind the gateway logs in with tokens.
func (ss *session) bearerOK() bool { return backends.AcceptsBearer(ss.o.Backend) }

// mechanismsOffered returns the mechanisms that may be used now.
func (ss *session) mechanismsOffered() []string {
	var out []string
	for i := range saslMechanisms {
		if m := &saslMechanisms[i]; (!m.password || ss.plaintextOK()) && (!m.bearer || ss.bearerOK()) {
			out = append(out, m.name)
		}
	}
	return out
}

// offerSASL: the SASL capability lists the mechanisms offered now (RFC
// 5034 §6), before login only.
func (ss *session) offerSASL() (string, bool) {
	if ss.state != stateAuthorization {
		return "", false
	}
	m := ss.mechanismsOffered()
	return strings.Join(m, " "), len(m) > 0
}

var (
	errSASLCancelled = errors.New("authentication cancelled")
	errSASLBase64    = errors.New("invalid base64 in SASL response")
	errSASLTooLong   = errors.New("SASL response too long")
	errSASLAuth      = errors.New("malformed or unauthorised SASL identity")
)

// cmdAUTH runs a SASL exchange (RFC 5034 §4). Without an argument it lists
// the mechanisms, as older clients expect (RFC 5034 §4 note, RFC 1734).
func (ss *session) cmdAUTH(a args) (reply, error) {
	f := fields(a.text)
	if len(f) == 0 {
		return reply{text: "SASL mechanisms follow", then: func() error {
			for _, m := range ss.mechanismsOffered() {
				ss.conn.w.WriteString(m + "\r\n")
			}
			ss.conn.w.WriteString(".\r\n")
			return nil
		}}, nil
	}
	if len(f) > 2 {
		return reply{}, fault("AUTH takes a mechanism and an optional initial response")
	}
	var mech *saslMechanism
	for i := range saslMechanisms {
		if strings.EqualFold(f[0], saslMechanisms[i].name) && (!saslMechanisms[i].bearer || ss.bearerOK()) {
			mech = &saslMechanisms[i]
		}
	}
	if mech == nil {
		return reply{}, fault("unsupported SASL mechanism")
	}
	if mech.password && !ss.plaintextOK() {
		return reply{}, ss.plaintextRefusal()
	}
	var initial *string
	if len(f) == 2 {
		initial = &f[1]
	}
	c, err := mech.exchange(ss, initial)
	switch {
	case err == nil:
		return ss.login(c)
	case errors.Is(err, errSASLAuth):
		return reply{}, ss.authFailed(c.Username, mech.name, err, "")
	case errors.Is(err, errSASLCancelled):
		return reply{}, refusal(backends.CodeNone, err.Error()) // RFC 5034 §4: the client's right
	case errors.Is(err, errLongLineBusy):
		return reply{}, ss.saslBusy()
	}
	if se, ok := err.(*sessionEnd); ok {
		return reply{}, se
	}
	return reply{}, fault(err.Error())
}

// saslPLAIN decodes "authzid NUL authcid NUL passwd" (RFC 4616 §2).
func (ss *session) saslPLAIN(initial *string) (backends.Credentials, error) {
	resp, err := ss.saslStep("", initial)
	if err != nil {
		return backends.Credentials{}, err
	}
	defer clear(resp)
	parts := bytes.Split(resp, []byte{0})
	if len(parts) != 3 {
		return backends.Credentials{}, errSASLAuth
	}
	authz, authc, pass := string(parts[0]), string(parts[1]), string(parts[2])
	c := backends.Credentials{Username: authc, Mechanism: "PLAIN"}
	// Acting as another user (proxy authorisation) is not supported.
	if authc == "" || (authz != "" && authz != authc) {
		return c, errSASLAuth
	}
	c.Password = pass
	return c, nil
}

// saslLOGIN runs the LOGIN mechanism (draft-murchison-sasl-login): the
// initial response, if any, is the user name.
func (ss *session) saslLOGIN(initial *string) (backends.Credentials, error) {
	user, err := ss.saslStep("Username:", initial)
	if err != nil {
		return backends.Credentials{}, err
	}
	c := backends.Credentials{Username: string(user), Mechanism: "LOGIN"}
	pass, err := ss.saslStep("Password:", nil)
	defer clear(pass)
	if err != nil {
		return c, err
	}
	if c.Username == "" {
		return c, errSASLAuth
	}
	c.Password = string(pass)
	return c, nil
}

// saslOAUTHBEARER reads the client's OAUTHBEARER message (RFC 7628 §3.1):
// the user is the GS2 authzid, the token goes upstream as it is. A
// rejected token is answered with -ERR at once, without the error
// challenge of RFC 7628 §3.2.2.
func (ss *session) saslOAUTHBEARER(initial *string) (backends.Credentials, error) {
	return ss.saslBearer(oauth.OAUTHBEARER, oauth.ParseOAuthBearer, initial)
}

// saslXOAUTH2 reads the client's XOAUTH2 message
// ("user=USER^Aauth=Bearer TOKEN^A^A").
func (ss *session) saslXOAUTH2(initial *string) (backends.Credentials, error) {
	return ss.saslBearer(oauth.XOAUTH2, oauth.ParseXOAUTH2, initial)
}

func (ss *session) saslBearer(mech string, parse func([]byte) (string, string, error), initial *string) (backends.Credentials, error) {
	resp, err := ss.saslStep("", initial)
	if err != nil {
		return backends.Credentials{}, err
	}
	user, tok, err := parse(resp)
	c := backends.Credentials{Username: user, Mechanism: mech}
	if err != nil {
		return c, errSASLAuth
	}
	c.Token = tok
	return c, nil
}

// saslStep returns the decoded client response: the initial response if
// given ("=" is empty, RFC 5034 §4), else the answer to a "+ challenge"
// continuation line of up to maxSASLLine octets, read within LoginTimeout.
func (ss *session) saslStep(challenge string, initial *string) ([]byte, error) {
	var line []byte
	if initial != nil {
		line = []byte(*initial)
		defer clear(line)
	} else {
		if err := ss.conn.prompt("+ " + base64.StdEncoding.EncodeToString([]byte(challenge))); err != nil {
			return nil, ss.gone(err)
		}
		l, err := ss.conn.readContinuation(ss.o.LoginTimeout)
		switch {
		case errors.Is(err, errLineTooLong):
			return nil, errSASLTooLong
		case errors.Is(err, errLongLineBusy):
			return nil, err
		case err != nil:
			return nil, ss.gone(err)
		}
		line = l
		if string(line) == "*" { // RFC 5034 §4: the client cancels
			return nil, errSASLCancelled
		}
	}
	if string(line) == "=" {
		return nil, nil
	}
	out, err := base64.StdEncoding.DecodeString(string(line))
	if err != nil {
		return nil, errSASLBase64
	}
	return out, nil
}

// saslBusy answers an AUTH whose long line was refused because
// Options.MaxSASLBuffers long SASL lines were being read already: -ERR
// [SYS/TEMP] (RFC 3206 §4: try again later), not a protocol fault.
func (ss *session) saslBusy() error {
	return refusal(backends.CodeSysTemp, "server busy, try again later")
}

// logSASLBusy logs a long SASL line refused by the cap, when it is refused
// (its answer waits for the line's end): at most one line a second for the
// whole server, with the number refused since the previous one.
func (ss *session) logSASLBusy() {
	if n := ss.srv.saslBufs.refusal(time.Now()); n > 0 {
		ss.log.Warn().Int("refused", n).Int("max_sasl_buffers", ss.o.MaxSASLBuffers).
			Msg("SASL buffer limit reached, AUTH refused")
	}
}
