// Package identity decides every login before anything reaches an upstream
// store. Its Gate is a backends.Backend in front of the router that
//
//   - waits the failure delay the client's address and user name have
//     earned (package throttle), before the password is checked, so that a
//     right and a wrong password cost the same time;
//   - checks a device password locally (accounts file) or asks the auth
//     hook (a Source), or, without a Source, passes the login through;
//   - enforces LOGIN-DELAY per maildrop (RFC 2449 §8.1.2) before the
//     upstream login;
//   - logs in upstream with the identity's own upstream credentials.
//
// Nothing here puts a password, a hash or a token into a log line or an
// error text.
package identity

import (
	"context"
	"net"
	"strconv"
	"time"
)

// Request is a login attempt as the client made it.
type Request struct {
	User      string
	Password  string // never logged
	Mechanism string // USER, PLAIN, LOGIN, …
	// RemoteAddr is the client's address.
	RemoteAddr net.Addr
	TLS        bool
	Listener   string
}

// Identity is what a device login becomes upstream.
type Identity struct {
	// Backend names the backend to log in at; "": the routes decide on
	// UpstreamUser (and may rewrite it).
	Backend          string
	UpstreamUser     string
	UpstreamPassword string // never logged
	// UpstreamCredential names an OAuth2 credential of the configuration
	// whose access token logs in upstream (accounts file or hook
	// `upstream: {user, credential}`); UpstreamPassword is then empty.
	UpstreamCredential string
	// UpstreamToken is a bearer token to log in upstream with, as a hook
	// answered it (`upstream: {user, token}`). Never logged.
	UpstreamToken string
	// Maildrop keys LOGIN-DELAY and the maildrop lock; "": backend/user.
	Maildrop string
	// LoginDelay is this identity's own minimum time between logins when
	// HasLoginDelay; else session.login_delay applies.
	LoginDelay    time.Duration
	HasLoginDelay bool
}

// String describes the identity without its secret.
func (i Identity) String() string {
	s := "backend=" + i.Backend + " upstream_user=" + i.UpstreamUser + " password=<redacted>"
	if i.UpstreamCredential != "" {
		s += " credential=" + i.UpstreamCredential
	}
	if i.UpstreamToken != "" {
		s += " token=<redacted>"
	}
	return s
}

// GoString hides the secret from %#v as well.
func (i Identity) GoString() string { return "identity.Identity{" + i.String() + "}" }

// Source decides device logins: the accounts file or the auth hook.
type Source interface {
	// Authenticate returns the identity of a login with right
	// credentials, a *Rejected for wrong ones, and any other error when it
	// cannot decide (the client then gets [SYS/TEMP]). Error texts hold no
	// secret.
	Authenticate(ctx context.Context, r Request) (*Identity, error)
	// PerUserLoginDelay reports whether identities may carry their own
	// login delay (CAPA then announces LOGIN-DELAY with USER, RFC 2449
	// §6.5).
	PerUserLoginDelay() bool
}

// Rejected is the error of a Source for wrong credentials: -ERR [AUTH].
type Rejected struct {
	// Reason is for the log: "unknown user", "wrong password", "hook
	// answered 401", … Never a secret.
	Reason string
	// RetryAfter, when > 0, is the hook's wish for the delay before the
	// answer (capped at auth.failure_max_delay).
	RetryAfter time.Duration
}

func (r *Rejected) Error() string {
	s := "credentials rejected: " + r.Reason
	if r.RetryAfter > 0 {
		s += " (retry after " + strconv.Itoa(int(r.RetryAfter/time.Second)) + "s)"
	}
	return s
}
