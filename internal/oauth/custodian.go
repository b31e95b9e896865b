package oauth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// Defaults of Options.
const (
	// DefaultRefreshAhead is how long before expiry a token is replaced
	// (at most half its lifetime).
	DefaultRefreshAhead = 5 * time.Minute
	// DefaultRequestTimeout bounds one request to the token endpoint.
	DefaultRequestTimeout = 30 * time.Second
	// retryAfterFailure is how long a token that still works is used
	// without a new attempt after a failed refresh ahead of expiry.
	retryAfterFailure = 30 * time.Second
)

// Errors of Token. They name no secret.
var (
	ErrUnknownCredential = errors.New("unknown credential")
	ErrNotEnrolled       = errors.New("not enrolled: run popgate oauth enroll")
)

// Options tune a Custodian.
type Options struct {
	Log zerolog.Logger
	// Now is the clock (tests move it forward); nil is time.Now.
	Now func() time.Time
	// RefreshAhead: DefaultRefreshAhead when zero.
	RefreshAhead time.Duration
	// RequestTimeout: DefaultRequestTimeout when zero.
	RequestTimeout time.Duration
	// RefreshLock, when set, is a lock every gateway node shares (the
	// cluster's Redis): a refresh takes it, keyed by the credential's
	// name (the Locker keeps its own key namespace), before it
	// reads the store again and asks the token endpoint, so that two
	// nodes never spend one refresh token against each other. Without it
	// the store's file lock alone serialises the processes of one host
	// (or of a shared volume whose flock works across hosts).
	RefreshLock Locker
	// LockWait bounds the wait for RefreshLock (DefaultLockWait when zero).
	LockWait time.Duration
	// LockHeld reports whether an error of RefreshLock.TryLock means that
	// another process holds the key (then the refresh waits and tries
	// again); nil: errors.Is(err, ErrLockHeld). Any other error fails the
	// refresh: a token is never refreshed without the lock.
	LockHeld func(error) bool
	// OnRefresh, when set, is told of every request to the token endpoint
	// this custodian made for a refresh: ok or failed (metrics). A token
	// another node stored meanwhile is no refresh of ours.
	OnRefresh func(ok bool)
}

// DefaultLockWait bounds the wait for Options.RefreshLock.
const DefaultLockWait = 45 * time.Second

// Locker is a non-blocking lock on a key shared by several processes
// (lock.Redis). TryLock fails with an error that Options.LockHeld
// recognises when another holder has the key.
type Locker interface {
	TryLock(ctx context.Context, key string) (release func(), err error)
}

// ErrLockHeld is the default "held by another process" error of a Locker.
var ErrLockHeld = errors.New("refresh lock held by another process")

// lockRetry is the pause between two tries of a held refresh lock.
const lockRetry = 50 * time.Millisecond

// takeLock takes the shared refresh lock of c, waiting while another
// process holds it, up to lockWait. Without a shared lock it returns a
// release that does nothing.
func (cu *Custodian) takeLock(c *cred) (func(), error) {
	if cu.lock == nil {
		return func() {}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), cu.lockWait)
	defer cancel()
	for {
		release, err := cu.lock.TryLock(ctx, c.name)
		if err == nil {
			return release, nil
		}
		if !cu.isHeld(err) {
			return nil, fmt.Errorf("refresh lock: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("refresh lock: still held by another node after %s", cu.lockWait)
		case <-time.After(lockRetry):
		}
	}
}

// Token is an access token for one upstream login.
type Token struct {
	Credential  string
	AccessToken string
	Expiry      time.Time // zero: no lifetime given
}

// String describes the token without its value.
func (t Token) String() string {
	return "token of " + t.Credential + " (expiry " + t.Expiry.Format(time.RFC3339) + ")"
}

// GoString hides the value from %#v.
func (t Token) GoString() string { return "oauth.Token{" + t.String() + "}" }

// Custodian hands out access tokens of the configured credentials. It is
// safe for concurrent use: however many sessions ask for a token that is
// missing, expiring or rejected, one request per credential goes to the
// token endpoint and all of them get its answer.
type Custodian struct {
	store     *Store
	creds     map[string]*cred
	log       zerolog.Logger
	now       func() time.Time
	ahead     time.Duration
	timeout   time.Duration
	lock      Locker
	lockWait  time.Duration
	isHeld    func(error) bool
	onRefresh func(ok bool)
}

type cred struct {
	name   string
	cfg    CredentialConfig
	client *http.Client

	mu     sync.Mutex
	rec    *Record   // the last record seen; nil before the first load
	bad    string    // an access token the upstream rejected
	failed time.Time // when the last refresh failed
	flight *flight   // the refresh under way, if any
}

type flight struct {
	done chan struct{}
	rec  Record
	err  error
}

// New returns a custodian of creds whose tokens live in store.
func New(creds map[string]CredentialConfig, store *Store, o Options) (*Custodian, error) {
	cu := &Custodian{store: store, creds: map[string]*cred{}, log: o.Log, now: o.Now, ahead: o.RefreshAhead, timeout: o.RequestTimeout,
		lock: o.RefreshLock, lockWait: o.LockWait, isHeld: o.LockHeld, onRefresh: o.OnRefresh}
	if cu.lockWait <= 0 {
		cu.lockWait = DefaultLockWait
	}
	if cu.isHeld == nil {
		cu.isHeld = func(err error) bool { return errors.Is(err, ErrLockHeld) }
	}
	if cu.now == nil {
		cu.now = time.Now
	}
	if cu.ahead <= 0 {
		cu.ahead = DefaultRefreshAhead
	}
	if cu.timeout <= 0 {
		cu.timeout = DefaultRequestTimeout
	}
	for name, cfg := range creds {
		if !ValidName(name) {
			return nil, fmt.Errorf("credential %q: invalid name", name)
		}
		if ps := cfg.Check(); len(ps) > 0 {
			return nil, fmt.Errorf("credential %s: %s: %s", name, ps[0].Key, ps[0].Msg)
		}
		hc, err := httpClient(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("credential %s: ca_file: %w", name, err)
		}
		cu.creds[name] = &cred{name: name, cfg: cfg, client: hc}
	}
	return cu, nil
}

// httpClient returns the client for the token endpoints: the system roots
// plus those of caFile.
func httpClient(caFile string) (*http.Client, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
		}
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &http.Client{Transport: t, Timeout: DefaultRequestTimeout}, nil
}

// Names returns the configured credentials, sorted.
func (cu *Custodian) Names() []string {
	var ns []string
	for n := range cu.creds {
		ns = append(ns, n)
	}
	sort.Strings(ns)
	return ns
}

// Has reports whether name is a configured credential.
func (cu *Custodian) Has(name string) bool { _, ok := cu.creds[name]; return ok }

// refreshAhead is how long before r's expiry it is replaced.
func (cu *Custodian) refreshAhead(r *Record) time.Duration {
	a := cu.ahead
	if life := r.Expiry.Sub(r.Obtained); !r.Obtained.IsZero() && life > 0 && life/2 < a {
		a = life / 2
	}
	return a
}

// fresh: r's access token can be handed out without a refresh.
func (cu *Custodian) fresh(c *cred, r *Record) bool {
	if r == nil || r.AccessToken == "" || r.AccessToken == c.bad {
		return false
	}
	return r.Expiry.IsZero() || cu.now().Before(r.Expiry.Add(-cu.refreshAhead(r)))
}

// usable: r's access token has not expired (it may be due for a refresh).
func (cu *Custodian) usable(c *cred, r *Record) bool {
	if r == nil || r.AccessToken == "" || r.AccessToken == c.bad {
		return false
	}
	return r.Expiry.IsZero() || cu.now().Before(r.Expiry)
}

// Token returns an access token of credential name. A token that is
// missing, within the refresh margin of its expiry, or was passed to
// Invalidate is replaced first: the store is read again (another process
// may have refreshed it), else one request goes to the token endpoint,
// shared by every caller waiting meanwhile. When that request fails, a
// token that has not expired yet is still returned; otherwise the error
// says why (never with a secret) and the stored token stays as it was.
func (cu *Custodian) Token(ctx context.Context, name string) (Token, error) {
	c, ok := cu.creds[name]
	if !ok {
		return Token{}, fmt.Errorf("credential %q: %w", name, ErrUnknownCredential)
	}
	c.mu.Lock()
	if cu.fresh(c, c.rec) {
		t := Token{Credential: name, AccessToken: c.rec.AccessToken, Expiry: c.rec.Expiry}
		c.mu.Unlock()
		return t, nil
	}
	if cu.usable(c, c.rec) && !c.failed.IsZero() && cu.now().Sub(c.failed) < retryAfterFailure {
		// Refresh ahead failed a moment ago: do not ask the endpoint on
		// every login while the token still works.
		t := Token{Credential: name, AccessToken: c.rec.AccessToken, Expiry: c.rec.Expiry}
		c.mu.Unlock()
		return t, nil
	}
	f := c.flight
	if f == nil {
		// Another process (oauth enroll, a second gateway) may have
		// stored a newer token.
		r, found, err := cu.store.Get(name)
		if err != nil {
			c.mu.Unlock()
			return Token{}, fmt.Errorf("credential %s: %w", name, err)
		}
		if found && (c.rec == nil || r.AccessToken != c.rec.AccessToken || r.RefreshToken != c.rec.RefreshToken) {
			c.rec = &r
		}
		if cu.fresh(c, c.rec) {
			t := Token{Credential: name, AccessToken: c.rec.AccessToken, Expiry: c.rec.Expiry}
			c.mu.Unlock()
			return t, nil
		}
		var old Record
		if c.rec != nil {
			old = *c.rec
		}
		f = &flight{done: make(chan struct{})}
		c.flight = f
		go cu.refresh(c, old, f)
	}
	c.mu.Unlock()
	select {
	case <-f.done:
	case <-ctx.Done():
		return Token{}, ctx.Err()
	}
	if f.err != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if cu.usable(c, c.rec) { // refresh ahead failed, the old token still works
			return Token{Credential: name, AccessToken: c.rec.AccessToken, Expiry: c.rec.Expiry}, nil
		}
		return Token{}, fmt.Errorf("credential %s: %w", name, f.err)
	}
	return Token{Credential: name, AccessToken: f.rec.AccessToken, Expiry: f.rec.Expiry}, nil
}

// AccessToken is Token's value alone (backends.Tokens).
func (cu *Custodian) AccessToken(ctx context.Context, name string) (string, error) {
	t, err := cu.Token(ctx, name)
	return t.AccessToken, err
}

// Invalidate tells the custodian that the upstream rejected accessToken of
// credential name: the next Token call obtains a new one. Calls with a
// token already replaced do nothing, so many sessions failing with the
// same token cause one refresh.
func (cu *Custodian) Invalidate(name, accessToken string) {
	c, ok := cu.creds[name]
	if !ok {
		return
	}
	c.mu.Lock()
	if c.rec != nil && c.rec.AccessToken == accessToken {
		c.bad = accessToken
	}
	c.mu.Unlock()
}

// refresh obtains a new token for c and completes f. It runs under the
// store's lock: when another process stored a fresh token meanwhile, that
// one is taken and no request is made; otherwise the newest stored refresh
// token is used. The stored record is replaced only by a successful answer.
func (cu *Custodian) refresh(c *cred, old Record, f *flight) {
	c.mu.Lock()
	bad := c.bad
	c.mu.Unlock()
	var rec Record
	var err error
	fetched, stored := false, false
	// With a cluster, the shared lock first: the store is read again
	// under it (inside Update), so a token another node refreshed while
	// this one waited is taken as it is.
	release, lerr := cu.takeLock(c)
	if lerr != nil {
		err = lerr
	} else {
		uerr := cu.store.Update(c.name, func(cur Record, found bool) (Record, bool, error) {
			if found && cur.AccessToken != old.AccessToken && cu.freshRecord(&cur, bad) {
				rec = cur // refreshed by another process
				return cur, false, nil
			}
			if found && cur.RefreshToken != "" {
				old.RefreshToken = cur.RefreshToken
			}
			rec, err = cu.fetch(c, old)
			if err != nil {
				return Record{}, false, nil
			}
			fetched, stored = true, true
			return rec, true, nil
		})
		release()
		if uerr != nil {
			if err == nil && !fetched {
				err = uerr // the store could not be read: no token
			} else if fetched {
				stored = false
				cu.log.Error().Str("credential", c.name).Err(uerr).Msg("oauth token obtained but not stored: it is used until restart")
			}
		}
	}
	if cu.onRefresh != nil && (fetched || err != nil) {
		cu.onRefresh(fetched)
	}
	if err != nil {
		err = Describe(err)
		cu.log.Error().Str("credential", c.name).Str("type", c.cfg.Type).Err(err).
			Msg("oauth token refresh failed: the stored token is unchanged")
	} else if fetched {
		cu.log.Info().Str("credential", c.name).Str("type", c.cfg.Type).Time("expiry", rec.Expiry).Bool("stored", stored).Msg("oauth token obtained")
	} else {
		cu.log.Debug().Str("credential", c.name).Msg("oauth token refreshed by another process: taken from the store")
	}
	c.mu.Lock()
	if err == nil {
		c.rec = &rec
		c.bad = ""
		c.failed = time.Time{}
	} else {
		c.failed = cu.now()
	}
	c.flight = nil
	c.mu.Unlock()
	f.rec, f.err = rec, err
	close(f.done)
}

// freshRecord is fresh for a record read outside c.mu.
func (cu *Custodian) freshRecord(r *Record, bad string) bool {
	if r.AccessToken == "" || r.AccessToken == bad {
		return false
	}
	return r.Expiry.IsZero() || cu.now().Before(r.Expiry.Add(-cu.refreshAhead(r)))
}

// fetch asks the token endpoint for a new token of c.
func (cu *Custodian) fetch(c *cred, old Record) (Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cu.timeout)
	defer cancel()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c.client)
	obtained := cu.now()
	var tok *oauth2.Token
	var err error
	switch c.cfg.Type {
	case TypeClientCredentials: // RFC 6749 §4.4
		cc := clientcredentials.Config{ClientID: c.cfg.ClientID, ClientSecret: c.cfg.ClientSecret, TokenURL: c.cfg.TokenURL, Scopes: c.cfg.Scopes}
		tok, err = cc.Token(ctx)
	case TypeRefreshToken: // RFC 6749 §6
		if old.RefreshToken == "" {
			return Record{}, ErrNotEnrolled
		}
		tok, err = c.oauthConfig().TokenSource(ctx, &oauth2.Token{RefreshToken: old.RefreshToken}).Token()
	}
	if err != nil {
		return Record{}, err
	}
	rec := recordOf(c.cfg.Type, tok, obtained)
	if rec.RefreshToken == "" { // RFC 6749 §6: the old refresh token stays valid
		rec.RefreshToken = old.RefreshToken
	}
	if rec.AccessToken == "" {
		return Record{}, errors.New("the token endpoint answered without an access token")
	}
	return rec, nil
}

func (c *cred) oauthConfig() *oauth2.Config {
	return &oauth2.Config{
		ClientID:     c.cfg.ClientID,
		ClientSecret: c.cfg.ClientSecret,
		Endpoint:     oauth2.Endpoint{TokenURL: c.cfg.TokenURL, DeviceAuthURL: c.cfg.DeviceAuthURL},
		Scopes:       c.cfg.Scopes,
	}
}

func recordOf(typ string, t *oauth2.Token, obtained time.Time) Record {
	r := Record{Type: typ, AccessToken: t.AccessToken, TokenType: t.TokenType, RefreshToken: t.RefreshToken, Obtained: obtained}
	if !t.Expiry.IsZero() {
		// x/oauth2 sets Expiry from the real clock; keep the lifetime
		// relative to ours.
		r.Expiry = obtained.Add(time.Until(t.Expiry))
	}
	return r
}

// Describe returns err with a text fit for logs and operators: the token
// endpoint's status and RFC 6749 §5.2 error code and description, never
// the response body (which may echo anything) nor a secret.
func Describe(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := "an error"
		if re.Response != nil {
			status = re.Response.Status
		}
		s := "token endpoint answered " + status
		if re.ErrorCode != "" {
			s += ": " + clip(re.ErrorCode, 64)
			if re.ErrorDescription != "" {
				s += " (" + clip(re.ErrorDescription, 200) + ")"
			}
		}
		return errors.New(s)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		host := ""
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Host
		}
		return fmt.Errorf("token endpoint %s unreachable: %v", host, ue.Err)
	}
	return err
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// Status is one credential's state for `popgate oauth status`.
type Status struct {
	Name  string
	Type  string
	State string // valid, expired, not enrolled, no token yet, unreadable
	// Expiry of the access token (zero when none or no lifetime).
	Expiry time.Time
	// Refresh reports whether a refresh token is held.
	Refresh bool
}

// States of Status.
const (
	StateValid       = "valid"
	StateExpired     = "expired"
	StateNotEnrolled = "not enrolled"
	StateNoToken     = "no token yet"
)

// Status reads the store and describes every configured credential.
func (cu *Custodian) Status() ([]Status, error) {
	var out []Status
	for _, n := range cu.Names() {
		c := cu.creds[n]
		r, found, err := cu.store.Get(n)
		if err != nil {
			return nil, err
		}
		s := Status{Name: n, Type: c.cfg.Type, Expiry: r.Expiry, Refresh: r.RefreshToken != ""}
		switch {
		case found && r.AccessToken != "" && (r.Expiry.IsZero() || cu.now().Before(r.Expiry)):
			s.State = StateValid
		case c.cfg.Type == TypeRefreshToken && r.RefreshToken == "":
			s.State = StateNotEnrolled
		case found && r.AccessToken != "":
			s.State = StateExpired
		default:
			s.State = StateNoToken
		}
		out = append(out, s)
	}
	return out, nil
}

// Enroll runs the device authorization grant (RFC 8628) for credential
// name: it asks the device authorization endpoint for a code, writes the
// verification URL and the user code to w, polls the token endpoint until
// the person has approved (or ctx ends, or the code expires), and stores
// the token. The refresh token is what matters: from then on popgate
// refreshes the access token by itself.
func (cu *Custodian) Enroll(ctx context.Context, name string, w io.Writer) error {
	c, ok := cu.creds[name]
	if !ok {
		return fmt.Errorf("credential %q: %w", name, ErrUnknownCredential)
	}
	if c.cfg.Type != TypeRefreshToken {
		return fmt.Errorf("credential %s is %s: only %s credentials are enrolled", name, c.cfg.Type, TypeRefreshToken)
	}
	if c.cfg.DeviceAuthURL == "" {
		return fmt.Errorf("credential %s has no device_auth_url", name)
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c.client)
	cfg := c.oauthConfig()
	da, err := cfg.DeviceAuth(ctx) // RFC 8628 §3.1
	if err != nil {
		return fmt.Errorf("credential %s: device authorization: %w", name, Describe(err))
	}
	// RFC 8628 §3.3: show the URI and the code to the person.
	fmt.Fprintf(w, "To let popgate use %s, open\n\n    %s\n\nand enter the code\n\n    %s\n\n", name, da.VerificationURI, da.UserCode)
	if da.VerificationURIComplete != "" {
		fmt.Fprintf(w, "(or open %s)\n\n", da.VerificationURIComplete)
	}
	if !da.Expiry.IsZero() {
		fmt.Fprintf(w, "Waiting for the approval (the code expires at %s)…\n", da.Expiry.Format(time.RFC3339))
	}
	obtained := cu.now()
	tok, err := cfg.DeviceAccessToken(ctx, da) // RFC 8628 §3.4, §3.5
	if err != nil {
		return fmt.Errorf("credential %s: %w", name, Describe(err))
	}
	rec := recordOf(c.cfg.Type, tok, obtained)
	if rec.RefreshToken == "" {
		return fmt.Errorf("credential %s: the provider issued no refresh token (Google: ask for offline access; Microsoft: add the offline_access scope)", name)
	}
	if err := cu.store.Put(name, rec); err != nil {
		return err
	}
	c.mu.Lock()
	c.rec, c.bad = &rec, ""
	c.mu.Unlock()
	cu.log.Info().Str("credential", name).Msg("oauth credential enrolled")
	return nil
}

// Import stores a refresh token obtained elsewhere (for providers whose
// device flow does not grant the mail scope, such as Google's) for the
// oauth2_refresh_token credential name, after checking it with one
// refresh. Nothing is stored when the check fails.
func (cu *Custodian) Import(ctx context.Context, name, refreshToken string) error {
	c, ok := cu.creds[name]
	if !ok {
		return fmt.Errorf("credential %q: %w", name, ErrUnknownCredential)
	}
	if c.cfg.Type != TypeRefreshToken {
		return fmt.Errorf("credential %s is %s: only %s credentials take a refresh token", name, c.cfg.Type, TypeRefreshToken)
	}
	if refreshToken == "" {
		return errors.New("empty refresh token")
	}
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c.client)
	obtained := cu.now()
	tok, err := c.oauthConfig().TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		return fmt.Errorf("credential %s: the refresh token does not work: %w", name, Describe(err))
	}
	rec := recordOf(c.cfg.Type, tok, obtained)
	if rec.RefreshToken == "" {
		rec.RefreshToken = refreshToken
	}
	if err := cu.store.Put(name, rec); err != nil {
		return err
	}
	c.mu.Lock()
	c.rec, c.bad = &rec, ""
	c.mu.Unlock()
	cu.log.Info().Str("credential", name).Msg("oauth credential enrolled (refresh token imported)")
	return nil
}
