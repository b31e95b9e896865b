package proxy

// Logging in (RFC 1939 §4, §7; RFC 5034): USER/PASS and AUTH collect the
// credentials, and every way in ends in login, the one place where they are
// checked and the maildrop is opened. The SASL mechanisms are in sasl.go.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/lock"
)

// plaintextOK reports whether a password may be sent now: over TLS, or
// anywhere when AllowPlaintext is set.
func (ss *session) plaintextOK() bool { return ss.conn.tls || ss.o.AllowPlaintext }

// plaintextRefusal answers a login attempt that plaintextOK forbids.
func (ss *session) plaintextRefusal() error {
	if ss.lc.TLS == TLSStartTLS && ss.o.TLSConfig != nil {
		return fault("plaintext login disabled: use STLS first, or POP3S on port 995")
	}
	return fault("plaintext login disabled and this port has no TLS: login is impossible here, use POP3S on port 995")
}

// offerUSER: USER is listed in CAPA when it may be used now (RFC 2449 §6.8).
func (ss *session) offerUSER() (string, bool) {
	return "", ss.state == stateAuthorization && ss.plaintextOK()
}

// cmdUSER takes the login name (RFC 1939 §7).
func (ss *session) cmdUSER(a args) (reply, error) {
	if !ss.plaintextOK() {
		return reply{}, ss.plaintextRefusal()
	}
	name := string(a.text)
	if name == "" || strings.ContainsAny(name, " \x00") {
		return reply{}, fault("USER needs one argument: the login name")
	}
	ss.pendingUser = name
	return reply{text: "send PASS"}, nil
}

// cmdPASS logs in with the name of the previous USER (RFC 1939 §7). The
// argument is the rest of the line: a password may contain spaces.
func (ss *session) cmdPASS(a args) (reply, error) {
	if !ss.plaintextOK() {
		return reply{}, ss.plaintextRefusal()
	}
	user := ss.pendingUser
	ss.pendingUser = ""
	if user == "" {
		return reply{}, fault("PASS must follow USER")
	}
	return ss.login(backends.Credentials{Username: user, Password: string(a.text), Mechanism: "USER"})
}

// offerLoginDelay announces LOGIN-DELAY (RFC 2449 §6.5): before login the
// global value, followed by USER when a login may get its own
// (Options.LoginDelayVaries); after login the session's own, which the
// Mailbox reports through backends.LoginDelayer.
func (ss *session) offerLoginDelay() (string, bool) {
	varies := ss.o.LoginDelayVaries != nil && ss.o.LoginDelayVaries()
	secs := func(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }
	if ss.state == stateTransaction {
		if d, ok := backends.LoginDelayOf(ss.mb); ok {
			return secs(d), d > 0 || ss.o.LoginDelay > 0 || varies
		}
		return secs(ss.o.LoginDelay), ss.o.LoginDelay > 0
	}
	if varies {
		return secs(ss.o.LoginDelay) + " USER", true
	}
	return secs(ss.o.LoginDelay), ss.o.LoginDelay > 0
}

// cmdAPOP: APOP would need the clear password upstream; it is not offered
// (no timestamp in the greeting, RFC 1939 §7).
func (ss *session) cmdAPOP(args) (reply, error) {
	return reply{}, fault("APOP not supported")
}

// login checks the credentials, locks the maildrop and takes the snapshot;
// on success the session enters TRANSACTION (RFC 1939 §5). Every login,
// whatever its mechanism, comes through here:
//
//  1. admit: the gateway's own checks, before any upstream call;
//  2. Backend.Login: the store checks the credentials (-ERR [AUTH] through
//     authFailed when it refuses them);
//  3. the maildrop lock (lock.Acquire on Options.Locker; -ERR [IN-USE] when
//     held, -ERR [SYS/TEMP] when a shared lock store cannot be reached:
//     never a session without the lock), then Mailbox.Snapshot, rewritten
//     by Options.UIDLMapper when set.
func (ss *session) login(c backends.Credentials) (reply, error) {
	ss.conn.lr.wipe() // the line held the password or the SASL response
	c.RemoteAddr = ss.conn.raw.RemoteAddr()
	c.TLS = ss.conn.tls
	c.Listener = ss.lc.Name
	if err := ss.admit(c); err != nil {
		return reply{}, err
	}
	// Each backend call gets its own CommandTimeout (Options).
	ctx, cancel := context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
	mb, err := ss.o.Backend.Login(ctx, c)
	cancel()
	if err != nil {
		code, text := backends.ClientError(err)
		if code == backends.CodeAuth {
			return reply{}, ss.authFailed(c.Username, c.Mechanism, err, text)
		}
		result := loginResult(err, code)
		if result == loginError {
			ss.log.Warn().Err(err).Str("user", c.Username).Msg("backend login failed")
		}
		ss.o.Metrics.Login(result)
		return reply{}, refusal(code, text)
	}
	if mb == nil {
		ss.log.Error().Str("user", c.Username).Msg("backend returned no mailbox and no error")
		ss.o.Metrics.Login(loginError)
		return reply{}, refusal(backends.CodeSysTemp, "internal error, try again later")
	}
	// From here on the session's log lines name the user (the store
	// accepted the name); a login that fails below goes back to the
	// anonymous logger, as the client may try another name.
	anon := ss.log
	ss.log = ss.log.With().Str("user", c.Username).Logger()
	defer func() {
		if ss.state != stateTransaction {
			ss.log = anon
		}
	}()
	key := backends.MaildropID(mb, c)
	ctx, cancel = context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
	lockStart := time.Now()
	held, err := lock.Acquire(ctx, ss.o.Locker, key)
	ss.o.Metrics.LockTaken(time.Since(lockStart), errors.Is(err, lock.ErrHeld))
	cancel()
	if err != nil {
		mb.Close()
		if errors.Is(err, lock.ErrHeld) {
			ss.log.Info().Msg("maildrop in use")
			ss.o.Metrics.Login(loginInUse)
			return reply{}, refusal(backends.CodeInUse, backends.ErrInUse.Text) // RFC 2449 §8.1.1
		}
		// A shared lock store that cannot be reached: never a session
		// without the lock (RFC 3206 §4: SYS/TEMP).
		ss.log.Warn().Err(err).Msg("maildrop lock failed")
		ss.o.Metrics.Login(loginError)
		return reply{}, refusal(backends.CodeSysTemp, "cannot lock maildrop, try again later")
	}
	// From here on finish() releases both, even after a panic.
	ss.mb, ss.unlock, ss.held = mb, held.Release, held
	ctx, cancel = context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
	msgs, err := mb.Snapshot(ctx)
	cancel()
	if err == nil && ss.o.UIDLMapper != nil {
		ctx, cancel = context.WithTimeout(ss.ctx, ss.o.CommandTimeout)
		msgs, err = ss.o.UIDLMapper.MapUIDLs(ctx, key, mb, msgs)
		cancel()
	}
	var snap *snapshot
	if err == nil {
		snap, err = newSnapshot(msgs) // the backend's slice is garbage from here on
	}
	if err != nil {
		ss.closeMailbox()
		ss.o.Metrics.Login(loginError)
		return reply{}, ss.backendError("snapshot", err)
	}
	ss.o.Metrics.Login(loginOK)
	ss.snap = snap
	ss.user = c.Username
	ss.state = stateTransaction
	ss.log.Debug().Str("mechanism", c.Mechanism).Int("messages", len(msgs)).Msg("logged in")
	return reply{text: ss.maildropText()}, nil
}

// loginResult is the Observer.Login result of a refused login other than
// [AUTH]: "login_delay" for [LOGIN-DELAY] (RFC 2449 §8.1.2), the result an
// error names through a LoginResult method (the identity gate's
// "throttled"), else "error".
func loginResult(err error, code backends.Code) string {
	if code == backends.CodeLoginDelay {
		return loginTooEarly
	}
	var named interface{ LoginResult() string }
	if errors.As(err, &named) {
		switch r := named.LoginResult(); r {
		case loginThrottled:
			return r
		}
	}
	return loginError
}

// admit is where the gateway decides about a login before asking the
// store: per-device accounts, throttling of failing addresses,
// LOGIN-DELAY enforcement (RFC 2449 §8.1.2). A refusal of the credentials
// goes through authFailed so that it counts toward MaxAuthFailures. It
// admits everything today.
func (ss *session) admit(backends.Credentials) error { return nil }

// authFailed waits AuthFailureDelay and answers -ERR [AUTH] (RFC 3206 §4);
// after MaxAuthFailures the connection closes. Failed logins are not
// protocol faults.
func (ss *session) authFailed(user, mech string, err error, text string) error {
	ss.authFailures++
	ss.o.Metrics.Login(loginAuth)
	ss.log.Info().Str("user", user).Str("mechanism", mech).AnErr("reason", err).Int("failures", ss.authFailures).Msg("authentication failed")
	if ss.o.AuthFailureDelay > 0 {
		t := time.NewTimer(ss.o.AuthFailureDelay)
		select {
		case <-t.C:
		case <-ss.ctx.Done():
			t.Stop()
		}
	}
	if text == "" {
		text = backends.ErrAuthFailed.Text
	}
	e := &cmdError{code: backends.CodeAuth, text: text}
	if ss.authFailures >= ss.o.MaxAuthFailures {
		e.end = endError
	}
	return e
}
