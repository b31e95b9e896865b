package identity

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/throttle"
)

// Upstream is what the Gate logs in through: popgate's router.
type Upstream interface {
	// Resolve returns the backend and the upstream login name for a login
	// name, or ok false when no route matches.
	Resolve(login string) (backend, upstream string, ok bool)
	// LoginTo logs in at the named backend with c as it is; backend ""
	// routes c.Username.
	LoginTo(ctx context.Context, backend string, c backends.Credentials) (backends.Mailbox, error)
}

// Options configure a Gate.
type Options struct {
	Upstream Upstream // required
	// Source checks device credentials; nil passes logins through to the
	// routes with the client's own credentials.
	Source Source
	// Store holds failures and last logins; nil: a throttle.Memory of the
	// default capacity. Keep one Store across reloads.
	Store throttle.Store
	// Policy is the failure delay (auth.failure_delay, failure_max_delay).
	Policy throttle.Policy
	// LoginDelay is session.login_delay: the minimum time between two
	// logins to one maildrop, unless the identity has its own.
	LoginDelay time.Duration
	Logger     zerolog.Logger
	// Observer counts the logins the failure penalty delayed and those
	// LOGIN-DELAY refused (internal/metrics); nil: none.
	Observer Observer
}

// Observer receives the throttling events metrics count.
type Observer interface {
	// Throttled: a login waited a failure delay before its credentials
	// were checked (ThrottledFailures), or was refused by LOGIN-DELAY
	// (ThrottledLoginDelay).
	Throttled(reason string)
}

// Reasons passed to Observer.Throttled (popgate_throttled_logins_total).
const (
	ThrottledFailures   = "auth_failures"
	ThrottledLoginDelay = "login_delay"
)

// Gate is a backends.Backend that decides logins before the upstream sees
// them (see the package comment). Safe for concurrent use.
type Gate struct {
	o       Options
	limiter *throttle.Limiter
	sleep   func(context.Context, time.Duration) bool // throttle.Sleep; tests record instead
}

// New returns a Gate.
func New(o Options) *Gate {
	if o.Store == nil {
		o.Store = throttle.NewMemory(0)
	}
	return &Gate{o: o, limiter: &throttle.Limiter{Store: o.Store, Policy: o.Policy}, sleep: throttle.Sleep}
}

func (g *Gate) throttled(reason string) {
	if g.o.Observer != nil {
		g.o.Observer.Throttled(reason)
	}
}

// penalty reports whether the failure penalty is on (auth.failure_delay
// above 0): only then are failures counted.
func (g *Gate) penalty() bool { return g.o.Policy.Base > 0 }

// LoginDelay is the global minimum time between logins (session.login_delay).
func (g *Gate) LoginDelay() time.Duration { return g.o.LoginDelay }

// PerUserLoginDelay reports whether a login may get a login delay other
// than the global one.
func (g *Gate) PerUserLoginDelay() bool { return g.o.Source != nil && g.o.Source.PerUserLoginDelay() }

var (
	errAccountUpstream = &backends.Error{Code: backends.CodeSysTemp, Text: "the mail store refused this account's upstream login, try again later"}
	errUnknownBackend  = &backends.Error{Code: backends.CodeSysTemp, Text: backends.ErrUnavailable.Text}
	// errStateUnavailable: the login state (failure counts, LOGIN-DELAY
	// claims; Redis with a cluster section) cannot be read or written.
	// The login is refused rather than let through without its limits.
	errStateUnavailable = &backends.Error{Code: backends.CodeSysTemp, Text: "login service unavailable, try again later"}
)

// cutError is the error of a login that ended during its failure delay,
// before its credentials were checked (command_timeout or shutdown): the
// client gets [SYS/TEMP]; metrics count the login as "throttled".
type cutError struct{ err *backends.Error }

func (e cutError) Error() string { return e.err.Error() }
func (e cutError) Unwrap() error { return e.err }

// LoginResult names the login result for metrics (popgate_logins_total).
func (cutError) LoginResult() string { return "throttled" }

// ipOf returns the IP of a client address ("" when unknown).
func ipOf(a net.Addr) string {
	if a == nil {
		return ""
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

// Login implements backends.Backend.
func (g *Gate) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	addr := ipOf(c.RemoteAddr)
	log := g.o.Logger.With().Str("user", c.Username).Str("remote_ip", addr).Logger()
	start := time.Now()

	// The delay earlier failures earned, before the password is checked:
	// a right password waits as long as a wrong one would start to. With
	// the penalty off (failure_delay 0) no state is read or written. A
	// state that cannot be read refuses the login: never a login without
	// its penalty.
	var counts throttle.Counts
	var waited time.Duration
	if g.penalty() {
		var err error
		counts, err = g.limiter.Counts(ctx, addr, c.Username)
		if err != nil {
			log.Error().Err(err).Msg("login state unavailable (failure counts): login refused")
			return nil, errStateUnavailable.Wrap(err)
		}
		waited = g.o.Policy.Delay(counts.Max())
		if waited > 0 {
			g.throttled(ThrottledFailures)
			log.Debug().Int("failures", counts.Max()).Dur("delay", waited).Msg("failure delay before the credentials are checked")
		}
		if !g.sleep(ctx, waited) {
			return nil, cutError{backends.ErrUnavailable.Wrap(ctx.Err())}
		}
	}

	id, err := g.identify(ctx, c)
	if err != nil {
		var rej *Rejected
		if errors.As(err, &rej) {
			return nil, g.failed(ctx, log, addr, c.Username, start, waited, rej)
		}
		log.Warn().Err(err).Msg("login could not be decided")
		return nil, backends.ErrUnavailable.Wrap(err)
	}

	// LOGIN-DELAY (RFC 2449 §8.1.2), before the upstream hears of it.
	delay := g.o.LoginDelay
	if id.HasLoginDelay {
		delay = id.LoginDelay
	}
	// The key is the maildrop the identity names, else the routed
	// upstream user: known before any upstream call.
	key := "login:" + id.Backend + "/" + id.UpstreamUser
	if id.Maildrop != "" {
		key = "login:" + id.Maildrop
	}
	claimed := false
	if delay > 0 {
		left, err := g.o.Store.ClaimLogin(ctx, key, delay)
		switch {
		case err != nil:
			log.Error().Err(err).Msg("login state unavailable (LOGIN-DELAY): login refused")
			return nil, errStateUnavailable.Wrap(err)
		case left > 0:
			secs := int((left + time.Second - 1) / time.Second)
			g.throttled(ThrottledLoginDelay)
			log.Info().Str("maildrop", key[len("login:"):]).Int("retry_after_s", secs).Msg("login refused: LOGIN-DELAY")
			return nil, &backends.Error{Code: backends.CodeLoginDelay,
				Text: "logged in too recently, try again in " + strconv.Itoa(secs) + " seconds"}
		default:
			claimed = true
		}
	}

	uc := c
	uc.Username, uc.Password = id.UpstreamUser, id.UpstreamPassword
	if g.o.Source != nil {
		// The account's upstream login: a password, a credential's token
		// or the hook's token; never what the device sent.
		uc.Credential, uc.Token = id.UpstreamCredential, id.UpstreamToken
	}
	mb, err := g.o.Upstream.LoginTo(ctx, id.Backend, uc)
	if err != nil {
		if claimed {
			if rerr := g.o.Store.ReleaseLogin(context.WithoutCancel(ctx), key); rerr != nil {
				log.Warn().Err(rerr).Msg("login state: releasing the LOGIN-DELAY claim failed")
			}
		}
		code, _ := backends.ClientError(err)
		switch {
		case code == backends.CodeAuth && g.o.Source == nil:
			// Pass-through: the upstream is the judge of the password.
			return nil, g.failed(ctx, log, addr, c.Username, start, waited, &Rejected{Reason: err.Error()})
		case code == backends.CodeAuth:
			// The device's password was right; the account's upstream
			// credentials are not: the operator's problem, not the device's.
			ev := log.Error().Err(err).Str("backend", id.Backend).Str("upstream_user", id.UpstreamUser)
			if id.UpstreamCredential != "" {
				ev = ev.Str("credential", id.UpstreamCredential)
			}
			ev.Msg("upstream refused the account's upstream credentials")
			return nil, errAccountUpstream.Wrap(err)
		case !isClientError(err):
			log.Warn().Err(err).Str("backend", id.Backend).Msg("upstream login failed")
			return nil, errUnknownBackend.Wrap(err)
		}
		return nil, err
	}
	// A right password clears the user's failures; with none counted
	// there is nothing to clear (no write per login).
	if counts.User > 0 {
		if err := g.limiter.Succeed(ctx, c.Username); err != nil {
			log.Warn().Err(err).Msg("login state: clearing the failures failed; they expire on their own")
		}
	}
	return &mailbox{Mailbox: mb, id: id.Maildrop, delay: delay}, nil
}

func isClientError(err error) bool {
	var e *backends.Error
	return errors.As(err, &e)
}

// identify returns the upstream identity of a login: the Source's, or for
// pass-through the routed one. Its Backend is always set.
func (g *Gate) identify(ctx context.Context, c backends.Credentials) (*Identity, error) {
	if g.o.Source == nil {
		b, up, ok := g.o.Upstream.Resolve(c.Username)
		if !ok {
			return nil, &Rejected{Reason: "no route matches the login name"}
		}
		return &Identity{Backend: b, UpstreamUser: up, UpstreamPassword: c.Password}, nil
	}
	id, err := g.o.Source.Authenticate(ctx, Request{
		User: c.Username, Password: c.Password, Mechanism: c.Mechanism,
		RemoteAddr: c.RemoteAddr, TLS: c.TLS, Listener: c.Listener,
	})
	if err != nil {
		return nil, err
	}
	if id == nil || id.UpstreamUser == "" {
		return nil, errors.New("source returned no upstream user")
	}
	cp := *id
	if cp.Backend == "" {
		b, up, ok := g.o.Upstream.Resolve(cp.UpstreamUser)
		if !ok {
			return nil, fmt.Errorf("no route matches the upstream user %q", cp.UpstreamUser)
		}
		cp.Backend, cp.UpstreamUser = b, up
	}
	return &cp, nil
}

// failed records a failure, waits until the answer is due (the delay the
// new count earns, counted from the start of the attempt, of which waited
// passed already) and returns the error for -ERR [AUTH] (RFC 3206 §4).
//
// A failure that cannot be recorded (the state unreachable) is still
// answered [AUTH] (the credentials are wrong), after the longest delay
// (failure_max_delay): the count is unknown, so it is taken as high.
func (g *Gate) failed(ctx context.Context, log zerolog.Logger, addr, user string, start time.Time, waited time.Duration, rej *Rejected) error {
	n := 0
	var due time.Duration
	if g.penalty() {
		var err error
		n, err = g.limiter.Fail(context.WithoutCancel(ctx), addr, user)
		due = g.o.Policy.Delay(n)
		if err != nil {
			due = max(g.o.Policy.Max, g.o.Policy.Base)
			log.Error().Err(err).Dur("delay", due).Msg("login state unavailable: failure not recorded, the longest failure delay applies")
		}
	}
	if rej.RetryAfter > 0 && g.o.Policy.Base > 0 {
		due = max(due, min(rej.RetryAfter, max(g.o.Policy.Max, g.o.Policy.Base)))
	}
	log.Info().Str("reason", rej.Reason).Int("failures", n).Dur("delay", due).Msg("login rejected")
	g.sleep(ctx, due-max(waited, time.Since(start)))
	return backends.ErrAuthFailed.Wrap(rej)
}

// mailbox is the upstream Mailbox with the gate's maildrop id and the
// session's login delay.
type mailbox struct {
	backends.Mailbox
	id    string
	delay time.Duration
}

// MaildropID implements backends.MaildropIdentifier: the maildrop the
// identity named (hook), else the upstream's own id.
func (m *mailbox) MaildropID() string {
	if m.id != "" {
		return m.id
	}
	return backends.MaildropID(m.Mailbox, backends.Credentials{})
}

// LoginDelay implements backends.LoginDelayer.
func (m *mailbox) LoginDelay() time.Duration { return m.delay }

// Unwrap returns the upstream Mailbox.
func (m *mailbox) Unwrap() backends.Mailbox { return m.Mailbox }

// Close implements backends.Backend. The Gate owns nothing: the upstream's
// backends are closed by whoever built them.
func (g *Gate) Close() error { return nil }

var _ backends.Backend = (*Gate)(nil)

// AcceptsBearer implements backends.BearerAcceptor: for pass-through,
// whether the upstream can take a client's own bearer token (CAPA then
// names XOAUTH2/OAUTHBEARER); with accounts or the hook, devices log in
// with their own passwords, so no.
func (g *Gate) AcceptsBearer() bool {
	if g.o.Source != nil {
		return false
	}
	a, ok := g.o.Upstream.(backends.BearerAcceptor)
	return ok && a.AcceptsBearer()
}

var _ backends.BearerAcceptor = (*Gate)(nil)
