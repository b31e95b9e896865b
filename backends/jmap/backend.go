// Package jmap is the POP3 gateway's JMAP backend (RFC 8620, RFC 8621):
// each POP3 session fetches the JMAP session resource with the client's
// credentials (HTTP Basic), lists the maildrop once (Email/query paged,
// chained into Email/get by back-reference, decoded as a stream), streams
// RETR/TOP from the blob download URL, and applies the session's deletions
// at QUIT with Email/set according to the delete policy.
//
// UIDLs are the JMAP Email ids (immutable, RFC 8620 §1.2; RFC 8621 §4.1.1),
// or a digest of an id that is not a valid UIDL (RFC 1939 §7).
//
// One http.Transport per backend keeps connections alive across sessions
// (HTTP/2 where the server offers it over TLS). Upstream texts never reach
// the POP3 client: failures are backends.ErrAuthFailed ([AUTH]) or
// backends.ErrUnavailable ([SYS/TEMP]) carrying the cause for the log.
package jmap

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
)

// Backend is one configured JMAP upstream. It is safe for concurrent use.
type Backend struct {
	cfg       Config
	log       zerolog.Logger
	transport *http.Transport
	client    *http.Client
	markSeen  bool
	cache     *snapCache // nil when disabled
	// crlfExtra remembers, per blobId, how many octets a blob stored with
	// bare LF line endings grows by when delivered with CRLF (blobs are
	// immutable, so this is measured once). See Mailbox.Open.
	crlfExtra *lru.Cache[string, int64]
	// pageSize, when set (tests), caps the Email/query page below the
	// server's maxObjectsInGet.
	pageSize int
	// tokens hands out the access tokens of named OAuth2 credentials
	// (Credentials.Credential); nil: none configured.
	tokens backends.Tokens
}

var _ backends.Backend = (*Backend)(nil)

// New checks cfg, applies the defaults to zero values (a Config built in
// code; a file's section starts from DefaultConfig) and returns the
// backend. It warns
// once when the URL is plain http to a host that is not loopback, and
// when certificate verification is off.
func New(cfg Config, log zerolog.Logger) (*Backend, error) {
	if cfg.CommandTimeout == 0 {
		cfg.CommandTimeout = backends.DefaultCommandTimeout
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = backends.DefaultDialTimeout
	}
	if cfg.Mailbox == "" && cfg.MailboxRole == "" {
		cfg.MailboxRole = DefaultMailboxRole
	}
	if cfg.Delete.Policy == "" {
		cfg.Delete.Policy = backends.PolicyExpunge
	}
	if cfg.Delete.Keyword == "" {
		cfg.Delete.Keyword = backends.DefaultDeleteKeyword
	}
	cfg.Store = cfg.store()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, err
	}
	b := &Backend{
		cfg:      cfg,
		log:      log.With().Str("backend", cfg.Name).Logger(),
		markSeen: cfg.MarkSeen,
		cache:    newSnapCache(cfg.SnapshotCache),
	}
	b.crlfExtra, _ = lru.New[string, int64](4096)
	var tc *tls.Config
	if u.Scheme == "https" {
		if tc, err = cfg.Upstream.ClientConfig(u.Hostname()); err != nil {
			return nil, err
		}
		if cfg.Upstream.InsecureSkipVerify {
			b.log.Warn().Str("url", cfg.URL).Msg("insecure_skip_verify is on: the JMAP server's certificate is not verified")
		}
	} else if insecureURL(u) {
		b.log.Warn().Str("url", cfg.URL).Msg("url is plain http to a host that is not loopback: passwords cross the network unencrypted")
	}
	d := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	b.transport = &http.Transport{
		Proxy:                 nil, // the JMAP server is configured directly
		DialContext:           d.DialContext,
		TLSClientConfig:       tc,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ForceAttemptHTTP2:     true, // with a custom TLS config Go needs to be told
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.CommandTimeout,
		ExpectContinueTimeout: time.Second,
		// Downloads must stay byte-exact: never transparently gunzip.
		DisableCompression: true,
	}
	b.client = &http.Client{
		Transport: b.transport,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if len(via) >= 5 {
				return errors.New("too many redirects")
			}
			return nil
		},
	}
	return b, nil
}

// Config returns the configuration with defaults applied.
func (b *Backend) Config() Config { return b.cfg }

// Close releases the backend's idle upstream connections. Sessions still
// open keep working; their connections close as they finish.
func (b *Backend) Close() error {
	b.transport.CloseIdleConnections()
	return nil
}

// SetTokens gives the backend the OAuth2 tokens of named credentials
// (Credentials.Credential). Call it before the first Login.
func (b *Backend) SetTokens(t backends.Tokens) { b.tokens = t }

// Login fetches the session resource with c's credentials (RFC 8620 §2):
// HTTP Basic with the password, or `Authorization: Bearer` with a token
// (c.Token, or the access token of c.Credential, which is refreshed and
// the request sent again once when the server answers 401). A 401/403 is
// [AUTH]; anything else that fails, or a credential's token that cannot be
// obtained, is [SYS/TEMP].
func (b *Backend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	log := b.log.With().Str("user", c.Username).Logger()
	start := time.Now()
	var cred credential = basicAuth{user: c.Username, pass: c.Password}
	switch {
	case c.Credential != "":
		log = log.With().Str("credential", c.Credential).Logger()
		if b.tokens == nil {
			err := fmt.Errorf("credential %s: no OAuth2 credentials configured", c.Credential)
			log.Error().Err(err).Msg("upstream login failed")
			return nil, backends.ErrUnavailable.Wrap(err)
		}
		tok, err := b.tokens.AccessToken(ctx, c.Credential)
		if err != nil {
			log.Warn().Err(err).Msg("no OAuth2 token for the upstream login")
			return nil, backends.ErrUnavailable.Wrap(err)
		}
		cred = &bearerAuth{tokens: b.tokens, name: c.Credential, token: tok}
	case c.Token != "":
		cred = &bearerAuth{token: c.Token}
	}
	sess, err := b.fetchSession(ctx, cred)
	if err != nil {
		err = classify(err)
		if errors.Is(err, backends.ErrAuthFailed) {
			log.Info().Err(err).Msg("upstream rejected the credentials")
		} else {
			log.Warn().Err(err).Msg("upstream login failed")
		}
		return nil, err
	}
	log.Debug().Dur("took", time.Since(start)).Str("account", sess.accountID).Msg("upstream session")
	return &Mailbox{b: b, cred: cred, user: c.Username, sess: sess, log: log}, nil
}
