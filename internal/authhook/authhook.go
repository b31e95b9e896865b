// Package authhook asks an HTTP endpoint (an ISP's user database, in the
// manner of nginx's auth_http or Dovecot's passdb) whether a login may in
// and where it goes.
//
// popgate POSTs JSON
//
//	{"user": "…", "password": "…", "mechanism": "USER", "remote_addr": "192.0.2.7", "tls": true, "listener": "pop3s 0.0.0.0:995"}
//
// and reads the answer:
//
//   - 200 {"backend": "corp", "upstream": {"user": "…", "password": "…"}, "maildrop": "…", "login_delay": 300}
//     lets the login in ("backend" may be left out: the routes decide on
//     upstream.user; "maildrop" and "login_delay", in seconds or as a
//     duration text such as "5m", are optional). Instead of "password",
//     upstream may hold "credential" (the name of an OAuth2 credential of
//     the configuration: popgate logs in with its token) or "token" (an
//     OAuth2 bearer token to log in with, never logged); at most one of
//     the three;
//   - 401 or 403 refuses it: -ERR [AUTH]; an optional body
//     {"retry_after": seconds} asks for a longer failure delay;
//   - anything else (another status, a 200 that does not parse, a
//     timeout, the hook unreachable) is -ERR [SYS/TEMP], with the cause
//     in the log.
//
// Redirects are not followed (the password would go elsewhere). Neither the
// request body nor the answer body ever reaches a log line or an error
// text; the headers are sent as configured and never logged.
package authhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/popgate/popgate/internal/identity"
)

// DefaultTimeout bounds one hook call when Config.Timeout is 0.
const DefaultTimeout = 5 * time.Second

// maxAnswer is the most of an answer body read.
const maxAnswer = 64 << 10

// Config is the accounts.http section.
type Config struct {
	URL     string            // http or https; required
	Timeout time.Duration     // per call; 0: DefaultTimeout
	Headers map[string]string // sent with every call (e.g. Authorization)
	CAFile  string            // extra trusted roots (PEM) for https
	// CredentialKnown reports whether an OAuth2 credential of that name
	// is configured (nil: any). An answer naming another is [SYS/TEMP].
	CredentialKnown func(string) bool
}

// Validate reports what is wrong with c, without secrets.
func (c Config) Validate() error {
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("url must be an http:// or https:// URL")
	}
	if u.User != nil {
		return errors.New("url must not hold credentials: put them in headers")
	}
	if c.Timeout < 0 {
		return errors.New("timeout must not be negative")
	}
	for k := range c.Headers {
		if k == "" || !validHeaderName(k) {
			return fmt.Errorf("headers: %q is not a valid header name", k)
		}
	}
	if c.CAFile != "" {
		if _, err := loadPool(c.CAFile); err != nil {
			return err
		}
	}
	return nil
}

func validHeaderName(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || c == ':' {
			return false
		}
	}
	return true
}

func loadPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("ca_file %s: %w", file, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca_file %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// Hook is an identity.Source calling an HTTP endpoint. Safe for concurrent
// use.
type Hook struct {
	cfg    Config
	client *http.Client
}

// New checks cfg and returns a Hook.
func New(cfg Config) (*Hook, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // the hook is internal; an environment proxy would see passwords
	if cfg.CAFile != "" {
		pool, err := loadPool(cfg.CAFile)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &Hook{cfg: cfg, client: &http.Client{
		Transport: tr,
		Timeout:   cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}}, nil
}

// Close releases idle connections.
func (h *Hook) Close() { h.client.CloseIdleConnections() }

type request struct {
	User       string `json:"user"`
	Password   string `json:"password"`
	Mechanism  string `json:"mechanism"`
	RemoteAddr string `json:"remote_addr"`
	TLS        bool   `json:"tls"`
	Listener   string `json:"listener"`
}

type answer struct {
	Backend  string `json:"backend"`
	Upstream *struct {
		User       string `json:"user"`
		Password   string `json:"password"`
		Credential string `json:"credential"`
		Token      string `json:"token"`
	} `json:"upstream"`
	Maildrop   string          `json:"maildrop"`
	LoginDelay json.RawMessage `json:"login_delay"`
}

type refusal struct {
	RetryAfter float64 `json:"retry_after"`
}

// PerUserLoginDelay implements identity.Source: a hook may set any login
// delay.
func (h *Hook) PerUserLoginDelay() bool { return true }

// Authenticate implements identity.Source.
func (h *Hook) Authenticate(ctx context.Context, r identity.Request) (*identity.Identity, error) {
	body, err := json.Marshal(request{
		User: r.User, Password: r.Password, Mechanism: r.Mechanism,
		RemoteAddr: ipOf(r.RemoteAddr), TLS: r.TLS, Listener: r.Listener,
	})
	if err != nil {
		return nil, errors.New("auth hook: encoding the request failed")
	}
	ctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.cfg.URL, bytes.NewReader(body))
	if err != nil {
		return nil, errors.New("auth hook: cannot build the request")
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "popgate")
	for k, v := range h.cfg.Headers {
		req.Header.Set(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("auth hook %s: %w", h.cfg.URL, cause(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("auth hook %s: reading the answer: %w", h.cfg.URL, cause(err))
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized, http.StatusForbidden:
		rej := &identity.Rejected{Reason: "auth hook answered " + strconv.Itoa(resp.StatusCode)}
		var ref refusal
		if len(data) > 0 && len(data) <= maxAnswer && json.Unmarshal(data, &ref) == nil && ref.RetryAfter > 0 && ref.RetryAfter < 86400 {
			rej.RetryAfter = time.Duration(ref.RetryAfter * float64(time.Second))
		}
		return nil, rej
	default:
		return nil, fmt.Errorf("auth hook %s: unexpected status %d", h.cfg.URL, resp.StatusCode)
	}
	if len(data) > maxAnswer {
		return nil, fmt.Errorf("auth hook %s: answer larger than %d octets", h.cfg.URL, maxAnswer)
	}
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, fmt.Errorf("auth hook %s: answer 200 is not the expected JSON object", h.cfg.URL)
	}
	if a.Upstream == nil || a.Upstream.User == "" {
		return nil, fmt.Errorf("auth hook %s: answer 200 without upstream.user", h.cfg.URL)
	}
	n := 0
	for _, v := range []string{a.Upstream.Password, a.Upstream.Credential, a.Upstream.Token} {
		if v != "" {
			n++
		}
	}
	if n > 1 {
		return nil, fmt.Errorf("auth hook %s: answer 200: upstream has more than one of password, credential and token", h.cfg.URL)
	}
	if c := a.Upstream.Credential; c != "" && h.cfg.CredentialKnown != nil && !h.cfg.CredentialKnown(c) {
		// The name is not quoted: a hook that put a token there by
		// mistake must not have it logged.
		return nil, fmt.Errorf("auth hook %s: answer 200: upstream.credential names no credential of the configuration", h.cfg.URL)
	}
	id := &identity.Identity{
		Backend: a.Backend, UpstreamUser: a.Upstream.User, UpstreamPassword: a.Upstream.Password,
		UpstreamCredential: a.Upstream.Credential, UpstreamToken: a.Upstream.Token,
		Maildrop: a.Maildrop,
	}
	if len(a.LoginDelay) > 0 && string(a.LoginDelay) != "null" {
		d, err := parseDelay(a.LoginDelay)
		if err != nil {
			return nil, fmt.Errorf("auth hook %s: answer 200: login_delay is neither seconds nor a duration", h.cfg.URL)
		}
		id.LoginDelay, id.HasLoginDelay = d, true
	}
	return id, nil
}

// parseDelay reads a number of seconds or a duration text ("5m").
func parseDelay(raw json.RawMessage) (time.Duration, error) {
	var secs float64
	if err := json.Unmarshal(raw, &secs); err == nil {
		if secs < 0 || secs > 1e7 {
			return 0, errors.New("out of range")
		}
		return time.Duration(secs * float64(time.Second)), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errors.New("bad duration")
	}
	return d, nil
}

// cause strips the *url.Error wrapper (its text repeats the URL) and says
// "timeout" plainly.
func cause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if ue.Timeout() {
			return errors.New("timeout")
		}
		return ue.Err
	}
	return err
}

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

var _ identity.Source = (*Hook)(nil)
