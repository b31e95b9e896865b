// Package imap is the POP3 gateway's IMAP backend: one upstream IMAP
// connection per POP3 session (go-imap v2 imapclient), a snapshot of the
// mailbox at login, messages streamed in bounded chunks, and the session's
// deletions applied at QUIT by the backend's delete policy.
//
// UIDLs follow Dovecot's pop3_uidl_format by default ("%08Xu%08Xv"). Note
// that Dovecot writes these hex digits in lowercase (checked against
// Dovecot 2.3's own POP3 in the tests); "%08XUu%08XUv" gives uppercase.
//
// Upstream texts never reach the POP3 client: failures are returned as
// backends.ErrAuthFailed ([AUTH]) or backends.ErrUnavailable ([SYS/TEMP])
// carrying the upstream error as their cause, for the log only.
package imap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/emersion/go-sasl"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/oauth"
)

// Backend is one configured IMAP upstream. It is safe for concurrent use;
// each Login opens its own upstream connection.
type Backend struct {
	cfg      Config
	log      zerolog.Logger
	uidl     uidlTemplate
	tls      *tls.Config // nil for tls: none
	markSeen bool
	keyword  imap.Flag
	chunk    int
	pools    []bufPool  // ascending sizes; the last is chunk octets
	cache    *snapCache // nil when disabled
	pool     *warmPool  // nil when reuse is off

	warnNoUIDPlus sync.Once

	tokens    backends.Tokens // OAuth2 tokens of named credentials; nil: none configured
	bearer    atomic.Bool     // the upstream offered XOAUTH2 or OAUTHBEARER
	probeOnce sync.Once
}

var _ backends.Backend = (*Backend)(nil)

// New checks cfg and returns the backend. cfg holds every value: start
// from DefaultConfig. It logs a warning when certificate verification is
// turned off.
func New(cfg Config, log zerolog.Logger) (*Backend, error) {
	if err := backends.CheckConfig(&cfg); err != nil {
		return nil, err
	}
	t, err := parseUIDLTemplate(cfg.UIDLTemplate)
	if err != nil {
		return nil, fmt.Errorf("uidl_template: %w", err)
	}
	b := &Backend{
		cfg:      cfg,
		log:      log.With().Str("backend", cfg.Name).Logger(),
		uidl:     t,
		markSeen: cfg.MarkSeen,
		keyword:  imap.Flag(cfg.Delete.Keyword),
		chunk:    cfg.ChunkSize,
		cache:    newSnapCache(cfg.SnapshotCache),
		pool:     newWarmPool(cfg.Reuse),
	}
	for size := 16 << 10; size < b.chunk; size *= 4 {
		b.pools = append(b.pools, newBufPool(size))
	}
	b.pools = append(b.pools, newBufPool(b.chunk))
	if cfg.TLS != "none" {
		host, _, _ := net.SplitHostPort(cfg.Address)
		b.tls, err = cfg.Upstream.ClientConfig(host)
		if err != nil {
			return nil, err
		}
		if cfg.TLS == "implicit" {
			b.tls.NextProtos = []string{"imap"}
		}
		if cfg.Upstream.InsecureSkipVerify {
			b.log.Warn().Str("address", cfg.Address).Msg("insecure_skip_verify is on: the upstream IMAP server's certificate is not verified")
		}
	}
	return b, nil
}

// Config returns the configuration with defaults applied.
func (b *Backend) Config() Config { return b.cfg }

// Login opens one upstream IMAP session for c: connect (with TLS as
// configured), then authenticate. With a bearer token (c.Token, or the
// access token of c.Credential from the backend's Tokens) that is
// AUTHENTICATE OAUTHBEARER (RFC 7628) or XOAUTH2, whichever the server
// advertises; with a password, AUTHENTICATE PLAIN when offered, else LOGIN.
//
// When the server rejects a credential's token, the token is reported
// invalid, a new one obtained and the login retried once on a new
// connection. A token that cannot be obtained answers [SYS/TEMP].
func (b *Backend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	return backends.LoginWithToken(ctx, c, b.tokens, b.log, b.login, func(err error) bool {
		return errors.Is(err, backends.ErrAuthFailed)
	})
}

// SetTokens gives the backend the OAuth2 tokens of named credentials
// (Credentials.Credential). Call it before the first Login.
func (b *Backend) SetTokens(t backends.Tokens) { b.tokens = t }

// AcceptsBearer implements backends.BearerAcceptor: whether the upstream
// announced AUTH=XOAUTH2 or AUTH=OAUTHBEARER at the last connection. The
// first call starts a check in the background and answers false until it
// (or a login) has seen the server's capabilities.
func (b *Backend) AcceptsBearer() bool {
	b.probeOnce.Do(func() { go b.probe() })
	return b.bearer.Load()
}

// probe connects once to learn the capabilities before login.
func (b *Backend) probe() {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.DialTimeout)
	defer cancel()
	cl, _, err := b.connect(ctx)
	if err != nil {
		b.log.Debug().Err(err).Msg("capability probe failed")
		return
	}
	b.noteCaps(cl.Caps())
	cl.Logout().Wait()
	cl.Close()
}

func (b *Backend) noteCaps(caps imap.CapSet) {
	if caps != nil {
		b.bearer.Store(caps.Has(imap.AuthCap(oauth.OAUTHBEARER)) || caps.Has(imap.AuthCap(oauth.XOAUTH2)))
	}
}

// connect dials the server, does TLS as configured and waits for the
// greeting; the client is in the not-authenticated state.
func (b *Backend) connect(ctx context.Context) (*imapclient.Client, net.Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, b.cfg.DialTimeout)
	defer cancel()
	d := net.Dialer{}
	conn, err := d.DialContext(dctx, "tcp", b.cfg.Address)
	if err != nil {
		return nil, nil, backends.ErrUnavailable.Wrap(fmt.Errorf("imap %s: connect: %w", b.cfg.Address, err))
	}
	// The watchdog closes the connection when dctx ends before the greeting
	// (and STARTTLS) are through: go-imap has no context of its own.
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	fail := func(err error) (*imapclient.Client, net.Conn, error) {
		stop()
		conn.Close()
		if dctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, dctx.Err())
		}
		return nil, nil, backends.ErrUnavailable.Wrap(fmt.Errorf("imap %s: %w", b.cfg.Address, err))
	}
	if b.cfg.TLS == "implicit" { // RFC 8314 §3
		tc := tls.Client(conn, b.tls)
		if err := tc.HandshakeContext(dctx); err != nil {
			return fail(fmt.Errorf("tls handshake: %w", err))
		}
		conn = tc
	}
	opts := &imapclient.Options{TLSConfig: b.tls}
	var cl *imapclient.Client
	if b.cfg.TLS == "starttls" { // RFC 3501 §6.2.1
		cl, err = imapclient.NewStartTLS(conn, opts)
		if err != nil {
			return fail(fmt.Errorf("starttls: %w", err))
		}
	} else {
		cl = imapclient.New(conn, opts)
		if err := cl.WaitGreeting(); err != nil {
			cl.Close()
			return fail(fmt.Errorf("greeting: %w", err))
		}
	}
	if !stop() {
		cl.Close()
		return fail(errors.New("connect and greeting timed out"))
	}
	if cl.State() != imap.ConnStateNotAuthenticated {
		cl.Close()
		return fail(fmt.Errorf("unexpected state %v after greeting (PREAUTH?)", cl.State()))
	}
	return cl, conn, nil
}

// login is one upstream login attempt; token, when set, is sent with
// OAUTHBEARER or XOAUTH2 instead of the password.
func (b *Backend) login(ctx context.Context, c backends.Credentials, token string) (backends.Mailbox, error) {
	log := b.log.With().Str("user", c.Username).Logger()
	start := time.Now()
	var poolKey string
	if b.pool != nil {
		secret := c.Password
		if token != "" {
			secret = "bearer\x00" + token
		}
		poolKey = b.pool.key(c.Username, secret)
		if w := b.pool.take(poolKey); w != nil {
			m := &Mailbox{b: b, c: w.m.c, conn: w.m.conn, log: log, user: c.Username, caps: w.m.caps, poolKey: poolKey, loggedIn: w.loggedIn}
			if err := m.revalidate(ctx); err == nil {
				log.Debug().Dur("took", time.Since(start)).Msg("upstream session reused")
				return m, nil
			}
			log.Debug().Msg("warm upstream session failed its NOOP: fresh login")
			m.logout()
		}
	}
	cl, conn, err := b.connect(ctx)
	if err != nil {
		return nil, err
	}

	m := &Mailbox{b: b, c: cl, conn: conn, log: log, user: c.Username, poolKey: poolKey}
	err = m.guard(ctx, "login", func() error {
		caps := cl.Caps()
		if caps == nil {
			return errors.New("no CAPABILITY answer")
		}
		b.noteCaps(caps)
		var err error
		switch {
		case token != "" && caps.Has(imap.AuthCap(oauth.OAUTHBEARER)): // RFC 7628 §3
			err = tokenErr(cl.Authenticate(oauth.NewOAuthBearerClient(c.Username, token)))
		case token != "" && caps.Has(imap.AuthCap(oauth.XOAUTH2)):
			aerr := cl.Authenticate(oauth.NewXOAUTH2Client(c.Username, token))
			var re *oauth.RejectedError
			if errors.As(aerr, &re) { // the exchange was left open: no LOGOUT on this connection
				m.broken = aerr
			}
			err = tokenErr(aerr)
		case token != "":
			return backends.ErrUnavailable.Wrap(errors.New("the server offers neither AUTH=OAUTHBEARER nor AUTH=XOAUTH2 for a token login"))
		case caps.Has(imap.AuthCap(sasl.Plain)): // RFC 4616, SASL-IR (RFC 4959) when offered
			err = authErr(cl.Authenticate(sasl.NewPlainClient("", c.Username, c.Password)))
		case caps.Has(imap.CapLoginDisabled): // RFC 3501 §6.2.3
			return backends.ErrUnavailable.Wrap(errors.New("server announces LOGINDISABLED and no AUTH=PLAIN (use tls: starttls or implicit)"))
		default:
			err = authErr(cl.Login(c.Username, c.Password).Wait())
		}
		if err != nil {
			return err
		}
		// The capabilities after login (asked again unless the server
		// sent them with its OK) decide UIDPLUS and MOVE.
		if m.caps = cl.Caps(); m.caps == nil {
			return errors.New("no CAPABILITY answer after login")
		}
		return nil
	})
	if err != nil {
		m.Close()
		if errors.Is(err, backends.ErrAuthFailed) {
			log.Info().Err(err).Msg("upstream rejected the credentials")
		} else {
			log.Warn().Err(err).Msg("upstream login failed")
		}
		return nil, err
	}
	m.loggedIn = time.Now()
	log.Debug().Dur("took", time.Since(start)).Msg("upstream login")
	return m, nil
}

// authErr maps the answer to LOGIN/AUTHENTICATE: a NO is wrong credentials
// ([AUTH], RFC 3206 §4), except the response codes that say the server,
// not the user, is the problem (RFC 5530).
func authErr(err error) error {
	if err == nil {
		return nil
	}
	var ie *imap.Error
	if errors.As(err, &ie) && ie.Type == imap.StatusResponseTypeNo {
		switch ie.Code {
		case imap.ResponseCodeUnavailable, imap.ResponseCodeServerBug, imap.ResponseCodeLimit:
			return backends.ErrUnavailable.Wrap(err)
		case imap.ResponseCodeInUse:
			return backends.ErrInUse.Wrap(err)
		}
		return backends.ErrAuthFailed.Wrap(err)
	}
	return err
}

// tokenErr maps the answer to a token login: a NO, or the server's error
// challenge (oauth.RejectedError), means the token was rejected ([AUTH]).
func tokenErr(err error) error {
	var re *oauth.RejectedError
	if errors.As(err, &re) {
		return backends.ErrAuthFailed.Wrap(err)
	}
	return authErr(err)
}

// bufPool recycles chunk buffers of one size.
type bufPool struct {
	size int
	p    *sync.Pool
}

func newBufPool(size int) bufPool {
	return bufPool{size: size, p: &sync.Pool{New: func() any { b := make([]byte, size); return &b }}}
}

// getBuf returns a pooled buffer of at least n octets, at most the chunk
// size.
func (b *Backend) getBuf(n int64) *[]byte {
	for _, p := range b.pools {
		if int64(p.size) >= n {
			return p.p.Get().(*[]byte)
		}
	}
	return b.pools[len(b.pools)-1].p.Get().(*[]byte)
}

func (b *Backend) putBuf(buf *[]byte) {
	for _, p := range b.pools {
		if p.size == len(*buf) {
			p.p.Put(buf)
			return
		}
	}
}

// Close implements backends.Backend: it drops the snapshot cache and logs
// out the warm sessions (reuse). Every live session holds its own upstream
// connection, closed (or parked) with its Mailbox.
func (b *Backend) Close() error {
	if b.cache != nil {
		b.cache.c.Purge()
	}
	if b.pool != nil {
		b.pool.close()
	}
	return nil
}
