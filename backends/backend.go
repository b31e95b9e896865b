// Package backends holds the contract between the POP3 engine (package proxy)
// and the mail stores behind it. A store implements Backend; one POP3 session
// drives one Mailbox from login to logout. proxy never imports a concrete
// backend and a backend never speaks POP3.
package backends

import (
	"context"
	"io"
	"net"
	"time"
)

// Backend authenticates a user against one store and opens the maildrop.
// It is safe for concurrent use: every POP3 session calls Login on it.
//
// Login returns an *Error with CodeAuth when the store rejects the
// credentials, and an *Error with CodeSysTemp (or a plain error, which the
// proxy turns into [SYS/TEMP]) when the store cannot be reached or fails.
//
// Close releases what the backend holds across sessions (connection
// pools, caches, background work). The gateway calls it once, on shutdown,
// or after a reload replaced the backend and the last session it served
// has ended; no Login is called after Close.
type Backend interface {
	Login(ctx context.Context, c Credentials) (Mailbox, error)
	Close() error
}

// Mailbox is one session's view of a maildrop. The proxy calls its methods
// from one goroutine, never concurrently, and always calls Close last.
type Mailbox interface {
	// Snapshot lists the messages once, at login. Sizes are exact octets as
	// Open delivers them (CRLF line endings, before dot-stuffing). The order
	// of the slice is the POP3 message numbering (first element is 1).
	Snapshot(ctx context.Context) ([]Message, error)
	// Open streams one message, or its header plus the first bodyLines body
	// lines (bodyLines < 0: the whole message). It is called before +OK is
	// written; an error here becomes -ERR and the session goes on. A message
	// that vanished upstream returns ErrMessageGone.
	Open(ctx context.Context, m Message, bodyLines int) (io.ReadCloser, error)
	// Commit applies the session's deletions. It is called at most once, only
	// after QUIT in the TRANSACTION state, and only with messages of the
	// snapshot. An error means the deletions were not (all) applied; what was
	// not removed must stay.
	Commit(ctx context.Context, deleted []Message) error
	// Close releases the upstream session. It is always called, exactly once.
	Close() error
}

// Message is one entry of the snapshot.
type Message struct {
	UIDL string // 1–70 octets in 0x21–0x7E, unique in the maildrop, stable across sessions (RFC 1939 §7)
	Size int64  // exact octets of the message as Open(…, -1) delivers it
	Ref  string // the backend's own handle (IMAP UID, JMAP id, …); opaque to the proxy
}

// Credentials is what the client proved at login.
type Credentials struct {
	// Username is the login name; after routing, the name sent upstream.
	Username string
	// Password is the password, or the bearer token for token mechanisms.
	// It must never be logged or put into an error text.
	Password string
	// Mechanism is how the client authenticated: "USER" (USER/PASS),
	// "PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER".
	Mechanism string
	// Token is an OAuth2 bearer token to log in upstream with (XOAUTH2 or
	// OAUTHBEARER) instead of Password: a client's own token (AUTH XOAUTH2
	// or OAUTHBEARER), or one an auth hook returned. Never logged.
	Token string
	// Credential names an OAuth2 credential of the configuration
	// (`credentials:`) whose access token logs in upstream instead of
	// Password; the backend gets it from its Tokens. An account's
	// `upstream: {user, credential}` sets it.
	Credential string
	// RemoteAddr is the client's address (after PROXY protocol, if any).
	RemoteAddr net.Addr
	// TLS reports whether the client connection is encrypted.
	TLS bool
	// Listener names the listener the client connected to ("" if unknown).
	Listener string
}

// String describes the credentials without the secret, so that a %v in a
// log line cannot leak it.
func (c Credentials) String() string {
	s := "user=" + c.Username + " mechanism=" + c.Mechanism + " password=<redacted>"
	if c.Token != "" {
		s += " token=<redacted>"
	}
	if c.Credential != "" {
		s += " credential=" + c.Credential
	}
	return s
}

// Tokens hands out OAuth2 access tokens of named credentials (package
// internal/oauth's Custodian). Backends that log in with tokens take one.
type Tokens interface {
	// AccessToken returns a valid access token of credential, refreshing
	// it first when needed. Its errors hold no secret.
	AccessToken(ctx context.Context, credential string) (string, error)
	// Invalidate reports that the upstream rejected token: the next
	// AccessToken call gets a new one (one refresh however many callers).
	Invalidate(credential, token string)
}

// BearerAcceptor is an optional interface of a Backend: whether it can log
// in upstream with a client's own bearer token (the upstream offers
// XOAUTH2 or OAUTHBEARER). CAPA names those SASL mechanisms only when some
// backend can.
type BearerAcceptor interface {
	AcceptsBearer() bool
}

// AcceptsBearer reports whether b implements BearerAcceptor and can take a
// client's bearer token now.
func AcceptsBearer(b Backend) bool {
	a, ok := b.(BearerAcceptor)
	return ok && a.AcceptsBearer()
}

// GoString hides the secret from %#v as well.
func (c Credentials) GoString() string { return "backends.Credentials{" + c.String() + "}" }

// MaildropIdentifier is an optional interface of a Mailbox: the key under
// which the proxy locks the maildrop (DESIGN invariant 6). Without it the
// proxy locks on Credentials.Username.
type MaildropIdentifier interface {
	MaildropID() string
}

// MaildropID returns the lock key for mb opened with c.
func MaildropID(mb Mailbox, c Credentials) string {
	if id, ok := mb.(MaildropIdentifier); ok {
		if s := id.MaildropID(); s != "" {
			return s
		}
	}
	return c.Username
}

// LoginDelayer is an optional interface of a Mailbox: the minimum time
// between two logins to this maildrop that applies to the session, which
// CAPA announces after login (RFC 2449 §6.5). 0: none.
type LoginDelayer interface {
	LoginDelay() time.Duration
}

// LoginDelayOf returns the login delay of mb or of a Mailbox it wraps
// (through Unwrap() Mailbox), and whether one implements LoginDelayer.
func LoginDelayOf(mb Mailbox) (time.Duration, bool) {
	for mb != nil {
		if ld, ok := mb.(LoginDelayer); ok {
			return ld.LoginDelay(), true
		}
		u, ok := mb.(interface{ Unwrap() Mailbox })
		if !ok {
			return 0, false
		}
		mb = u.Unwrap()
	}
	return 0, false
}

// NextHinter is an optional interface of a Mailbox: after opening message
// m for RETR, the proxy names the message the client will likely retrieve
// next (the following one, while the client retrieves in order: RETR 1,
// 2, …), so that the store can start fetching it while m streams. It is a
// hint only: the client may ask for another message, or for none, and the
// store must serve every Open exactly as without the hint (data fetched
// ahead for one message is never served for another). A store keeps what
// it fetched ahead bounded and short-lived, and drops it at the latest on
// Commit and Close. Found through Unwrapper chains (Find).
type NextHinter interface {
	HintNext(next Message)
}
