// Package rest is popgate's backend for mail stores that implement the REST
// store contract, version 1 (docs/rest-store.md, docs/rest-store.openapi.yaml):
// POST /sessions, GET /messages (paged), GET /messages/{id}, POST /commit,
// DELETE /sessions/current.
//
// One Backend keeps one pool of keep-alive connections, reused across POP3
// sessions. Lists are decoded as a stream, messages are streamed (bare LF
// turned into CRLF, the octets checked against the listed size), every read
// has a deadline, every JSON answer a size bound. Store texts never reach a
// POP3 client: failures are backends.ErrAuthFailed, ErrInUse, ErrUnavailable
// or ErrMessageGone carrying the store's answer as their cause, for the log.
package rest

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
)

// Bounds on what the backend reads (docs/rest-store.md, "Retries, timeouts
// and limits").
const (
	maxSessionBody = 64 << 10
	maxPageBody    = 32 << 20
	maxCommitBody  = 16 << 20
	maxProblemBody = 8 << 10
	maxRetryAfter  = 10 * time.Second
	maxRetries     = 2
	maxIDLen       = 1024
	maxMessages    = 10_000_000
)

// Backend is one configured REST store. It is safe for concurrent use.
type Backend struct {
	cfg      Config
	base     string // URL without a trailing slash
	log      zerolog.Logger
	client   *http.Client
	tr       *http.Transport
	markSeen bool
	cache    *lru.Cache[string, *snapEntry] // nil when disabled
	sizes    *lru.Cache[string, int64]      // maildrop\x00id\x00listed size → octets delivered
	hits     atomic.Int64                   // logins served from the cache (tests)
	tokens   backends.Tokens                // OAuth2 tokens of named credentials; nil: none configured
}

// snapEntry is one maildrop's last listing and its state. Never modified
// once stored.
type snapEntry struct {
	state string
	msgs  []backends.Message
}

var _ backends.Backend = (*Backend)(nil)

// New checks cfg and returns the backend. cfg holds every value: start
// from DefaultConfig. It logs a warning when certificate verification is
// off, and when the url is plain http:// to a host that is not loopback.
func New(cfg Config, log zerolog.Logger) (*Backend, error) {
	if err := backends.CheckConfig(&cfg); err != nil {
		return nil, err
	}
	u, _ := url.Parse(cfg.URL)
	b := &Backend{
		cfg:      cfg,
		base:     strings.TrimRight(cfg.URL, "/"),
		log:      log.With().Str("backend", cfg.Name).Logger(),
		markSeen: cfg.MarkSeen,
	}
	var tlsCfg *tls.Config
	if u.Scheme == "https" {
		var err error
		if tlsCfg, err = cfg.Upstream.ClientConfig(u.Hostname()); err != nil {
			return nil, err
		}
		if cfg.Upstream.InsecureSkipVerify {
			b.log.Warn().Str("url", cfg.URL).Msg("insecure_skip_verify is on: the REST store's certificate is not verified")
		}
	} else if !loopback(u.Hostname()) {
		b.log.Warn().Str("url", cfg.URL).Msg("the REST store is reached over plain http: passwords cross the network unencrypted")
	}
	d := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	b.tr = &http.Transport{
		DialContext:           d.DialContext,
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ResponseHeaderTimeout: cfg.CommandTimeout,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
		DisableCompression:    true, // sizes are octets on the wire; no gzip surprises
	}
	b.client = &http.Client{
		Transport: b.tr,
		// The contract has no redirects; following one could send the
		// bearer token or the password elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if cfg.SnapshotCache > 0 {
		b.cache, _ = lru.New[string, *snapEntry](cfg.SnapshotCache)
	}
	b.sizes, _ = lru.New[string, int64](10000)
	return b, nil
}

// Config returns the configuration with defaults applied.
func (b *Backend) Config() Config { return b.cfg }

// Close releases the backend's idle connections. Sessions still open keep
// working; their connections close when they end.
func (b *Backend) Close() error {
	b.tr.CloseIdleConnections()
	return nil
}

// CacheHits returns how many logins reused a cached listing after a 304.
func (b *Backend) CacheHits() int64 { return b.hits.Load() }

// call is one HTTP request of the contract.
type call struct {
	method, path string
	query        url.Values
	token        string
	header       map[string]string
	body         []byte
	idempotent   bool // a 429/503 with Retry-After may be retried
}

// callError is a failure with an HTTP status, for the log (status, and the
// problem's title and detail); it holds nothing of the request.
type callError struct {
	op     string
	status int
	detail string
}

func (e *callError) Error() string {
	s := fmt.Sprintf("rest %s: HTTP %d", e.op, e.status)
	if e.detail != "" {
		s += ": " + e.detail
	}
	return s
}

// do sends c and returns the response with its body wrapped in a deadline
// on every read. The caller closes the body. A transport failure returns
// the error and a nil response.
func (b *Backend) do(ctx context.Context, c call) (*http.Response, error) {
	u := b.base + c.path
	if len(c.query) > 0 {
		u += "?" + c.query.Encode()
	}
	for attempt := 0; ; attempt++ {
		var body io.Reader
		if c.body != nil {
			body = bytes.NewReader(c.body)
		}
		rctx, cancel := context.WithCancel(ctx)
		req, err := http.NewRequestWithContext(rctx, c.method, u, body)
		if err != nil {
			cancel()
			return nil, err
		}
		for k, v := range b.cfg.Headers {
			req.Header.Set(k, v)
		}
		if c.body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		for k, v := range c.header {
			req.Header.Set(k, v)
		}
		// The whole exchange up to the response headers is bounded too
		// (ResponseHeaderTimeout does not cover writing the request).
		t := time.AfterFunc(b.cfg.CommandTimeout, cancel)
		res, err := b.client.Do(req)
		t.Stop()
		if err != nil {
			cancel()
			return nil, fmt.Errorf("rest %s %s: %w", c.method, c.path, scrub(err))
		}
		if c.idempotent && attempt < maxRetries && (res.StatusCode == http.StatusTooManyRequests || res.StatusCode == http.StatusServiceUnavailable) {
			if wait, ok := retryAfter(res.Header.Get("Retry-After")); ok && wait <= maxRetryAfter {
				if dl, has := ctx.Deadline(); !has || time.Until(dl) > wait {
					io.Copy(io.Discard, io.LimitReader(res.Body, maxProblemBody))
					res.Body.Close()
					cancel()
					b.log.Debug().Str("call", c.method+" "+c.path).Int("status", res.StatusCode).Dur("retry_after", wait).Msg("store busy, retrying")
					select {
					case <-time.After(wait):
						continue
					case <-ctx.Done():
						return nil, fmt.Errorf("rest %s %s: %w", c.method, c.path, ctx.Err())
					}
				}
			}
		}
		res.Body = newTimedBody(res.Body, b.cfg.CommandTimeout, cancel)
		return res, nil
	}
}

// scrub drops the URL from a *url.Error (it holds no secret, but its query
// may be long); the cause stays.
func scrub(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s: %w", strings.ToLower(ue.Op), ue.Err)
	}
	return err
}

// retryAfter parses Retry-After: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 31); err == nil {
		return time.Duration(n) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		d := time.Until(t)
		if d < 0 {
			d = 0
		}
		return d, true
	}
	return 0, false
}

// failure reads a problem body (bounded) and returns a callError for res.
func failure(op string, res *http.Response) *callError {
	defer res.Body.Close()
	e := &callError{op: op, status: res.StatusCode}
	raw, _ := io.ReadAll(io.LimitReader(res.Body, maxProblemBody))
	var p struct{ Title, Detail string }
	if json.Unmarshal(raw, &p) == nil {
		e.detail = strings.TrimSpace(p.Title + " " + p.Detail)
	}
	if len(e.detail) > 200 {
		e.detail = e.detail[:200]
	}
	return e
}

// readJSON decodes a whole (bounded) JSON body into v.
func readJSON(res *http.Response, limit int64, v any) error {
	defer res.Body.Close()
	dec := json.NewDecoder(&limitReader{r: res.Body, n: limit})
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON answer: %w", err)
	}
	drain(res.Body)
	return nil
}

// drain reads what is left of a body (a newline after the JSON, say), a
// little at most, so that its connection can be reused.
func drain(r io.Reader) {
	io.Copy(io.Discard, io.LimitReader(r, 4<<10))
}

// b64token is RFC 6750 §2.1's b64token.
var b64token = regexp.MustCompile(`^[A-Za-z0-9._~+/-]+=*$`)

// SetTokens gives the backend the OAuth2 tokens of named credentials
// (Credentials.Credential). Call it before the first Login.
func (b *Backend) SetTokens(t backends.Tokens) { b.tokens = t }

// Login creates a store session for c (POST {url}/sessions). With a
// bearer token (c.Token, or the access token of c.Credential) the call
// carries `Authorization: Bearer TOKEN` and an empty password; when the
// store answers 401 to a credential's token, the token is reported
// invalid, a new one obtained and the call sent once more.
func (b *Backend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	return backends.LoginWithToken(ctx, c, b.tokens, b.log, b.login, func(err error) bool {
		var ce *callError
		return errors.As(err, &ce) && ce.status == http.StatusUnauthorized
	})
}

// bearerMechanism is the mechanism named in POST /sessions for a bearer
// login: the client's own (XOAUTH2, OAUTHBEARER), else OAUTHBEARER
// (RFC 7628) for a token popgate holds.
func bearerMechanism(c backends.Credentials) string {
	if c.Token != "" && c.Credential == "" && (c.Mechanism == "XOAUTH2" || c.Mechanism == "OAUTHBEARER") {
		return c.Mechanism
	}
	return "OAUTHBEARER"
}

// login is one POST /sessions; token, when set, is sent as a bearer token
// instead of the password.
func (b *Backend) login(ctx context.Context, c backends.Credentials, token string) (backends.Mailbox, error) {
	log := b.log.With().Str("user", c.Username).Logger()
	remote := ""
	if c.RemoteAddr != nil {
		remote = c.RemoteAddr.String()
	}
	pass, mech := c.Password, c.Mechanism
	if token != "" {
		pass, mech = "", bearerMechanism(c)
	}
	body, _ := json.Marshal(map[string]any{
		"user": c.Username, "password": pass, "mechanism": mech,
		"remote_addr": remote, "tls": c.TLS,
	})
	res, err := b.do(ctx, call{method: http.MethodPost, path: "/sessions", body: body, token: token})
	if err != nil {
		log.Warn().Err(err).Msg("store login failed")
		return nil, backends.ErrUnavailable.Wrap(err)
	}
	if res.StatusCode != http.StatusCreated {
		fe := failure("POST /sessions", res)
		switch res.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			log.Info().Err(fe).Msg("store rejected the credentials")
			return nil, backends.ErrAuthFailed.Wrap(fe)
		case http.StatusLocked:
			log.Info().Err(fe).Msg("store says the maildrop is in use")
			return nil, backends.ErrInUse.Wrap(fe)
		}
		log.Warn().Err(fe).Msg("store login failed")
		return nil, backends.ErrUnavailable.Wrap(fe)
	}
	var s struct {
		Session  string `json:"session"`
		Maildrop string `json:"maildrop"`
	}
	if err := readJSON(res, maxSessionBody, &s); err != nil {
		return nil, backends.ErrUnavailable.Wrap(fmt.Errorf("rest POST /sessions: %w", err))
	}
	if !b64token.MatchString(s.Session) || len(s.Session) > 4096 || s.Maildrop == "" || len(s.Maildrop) > maxIDLen {
		err := errors.New("rest POST /sessions: answer without a valid session and maildrop")
		log.Warn().Err(err).Msg("store login failed")
		if b64token.MatchString(s.Session) {
			b.endSession(s.Session)
		}
		return nil, backends.ErrUnavailable.Wrap(err)
	}
	return &Mailbox{b: b, log: log, token: s.Session, maildrop: s.Maildrop, seen: map[string]bool{}}, nil
}

// endSession is DELETE {url}/sessions/current; its answer is ignored.
func (b *Backend) endSession(token string) {
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.CommandTimeout)
	defer cancel()
	res, err := b.do(ctx, call{method: http.MethodDelete, path: "/sessions/current", token: token, idempotent: true})
	if err != nil {
		b.log.Debug().Err(err).Msg("ending the store session failed")
		return
	}
	io.Copy(io.Discard, io.LimitReader(res.Body, maxProblemBody))
	res.Body.Close()
}

// limitReader fails (rather than truncating) past n octets.
type limitReader struct {
	r io.Reader
	n int64
}

var errTooLarge = errors.New("answer larger than the contract allows")

func (l *limitReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		// One octet more tells a body of exactly the limit from a larger one.
		var one [1]byte
		if n, _ := l.r.Read(one[:]); n > 0 {
			return 0, errTooLarge
		}
		return l.r.Read(p[:0])
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

// timedBody puts a deadline on every Read of an HTTP body: a read that
// takes longer than d cancels the request, which fails the read. Close
// releases the request.
type timedBody struct {
	rc     io.ReadCloser
	d      time.Duration
	t      *time.Timer
	fired  atomic.Bool
	cancel context.CancelFunc
	once   sync.Once
}

func newTimedBody(rc io.ReadCloser, d time.Duration, cancel context.CancelFunc) *timedBody {
	tb := &timedBody{rc: rc, d: d, cancel: cancel}
	tb.t = time.AfterFunc(time.Hour, func() { tb.fired.Store(true); cancel() })
	tb.t.Stop()
	return tb
}

var errReadTimeout = errors.New("store read timed out (command_timeout)")

func (tb *timedBody) Read(p []byte) (int, error) {
	tb.t.Reset(tb.d)
	n, err := tb.rc.Read(p)
	tb.t.Stop()
	if err != nil && err != io.EOF && tb.fired.Load() {
		err = errReadTimeout
	}
	return n, err
}

func (tb *timedBody) Close() error {
	// Body first: a body read to its end has already gone back to the
	// pool, and cancelling after that does not touch the connection.
	err := tb.rc.Close()
	tb.once.Do(func() { tb.t.Stop(); tb.cancel() })
	return err
}
