package proxy

import "time"

// Observer receives the events that metrics count (internal/metrics
// implements it). Label values are small fixed sets, never user names.
// Its methods are called from session goroutines and must be safe for
// concurrent use.
type Observer interface {
	// SessionStarted: a connection was accepted and is served.
	SessionStarted()
	// SessionEnded: the connection ended with the end reason of its
	// "session end" log line, having sent octets to the client.
	SessionEnded(end string, octets int64)
	// Login: a login attempt ended with result "ok", "auth", "in_use",
	// "login_delay" ([LOGIN-DELAY]), "throttled" (ended during its failure
	// delay) or "error".
	Login(result string)
	// LockTaken: taking the maildrop lock took wait; conflict when another
	// session held it.
	LockTaken(wait time.Duration, conflict bool)
	// Commit: an UPDATE-state commit ended with result "ok", "failed" or
	// "not_confirmed" (the lock could not be confirmed: nothing was sent
	// upstream), for deleted messages.
	Commit(result string, deleted int)
}

// nopObserver is the Observer of Options without one.
type nopObserver struct{}

func (nopObserver) SessionStarted()               {}
func (nopObserver) SessionEnded(string, int64)    {}
func (nopObserver) Login(string)                  {}
func (nopObserver) LockTaken(time.Duration, bool) {}
func (nopObserver) Commit(string, int)            {}

// Login results passed to Observer.Login.
const (
	loginOK    = "ok"
	loginAuth  = "auth"
	loginInUse = "in_use"
	loginError = "error"
	// loginTooEarly: refused with [LOGIN-DELAY] (RFC 2449 §8.1.2).
	loginTooEarly = "login_delay"
	// loginThrottled: ended during its failure delay, before the
	// credentials were checked (the Backend's error says so).
	loginThrottled = "throttled"
)

// commitMargin is added to CommandTimeout when a session confirms its lock
// before a commit: the lease must outlast the commit's deadline.
const commitMargin = 5 * time.Second
