package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/popgate/popgate/internal/netconf"
)

// Challenge types accepted in tls.acme.challenge.
const (
	ChallengeTLSALPN = "tls-alpn" // RFC 8737 TLS-ALPN-01 (default)
	ChallengeHTTP    = "http"     // RFC 8555 §8.3 HTTP-01
)

// LetsEncryptProduction is the default ACME directory.
const LetsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"

// acmeTLS1Protocol is the ALPN protocol of TLS-ALPN-01 (RFC 8737 §6.2).
const acmeTLS1Protocol = "acme-tls/1"

// DefaultACMEStorage is where ACME state lives when storage is not set.
const DefaultACMEStorage = "/var/lib/popgate/acme"

// ACMEConfig is the `tls.acme:` section of the configuration file, decoded
// there as it is: this is the one definition of the ACME settings. Empty
// values take the defaults the methods below resolve.
type ACMEConfig struct {
	// Domains are the names to obtain certificates for; the first one is
	// served to clients that send no SNI. Required.
	Domains []string `yaml:"domains"`
	// Email is the ACME account contact (optional but recommended).
	Email string `yaml:"email"`
	// CA is the ACME directory URL (https, RFC 8555 §6.1). Empty: Let's
	// Encrypt production.
	CA string `yaml:"ca"`
	// CARoot is a PEM file of an extra root trusted for the CA's HTTPS
	// endpoint (private CAs, Pebble in tests).
	CARoot string `yaml:"ca_root"`
	// Storage is the folder where certificates, keys and the account live.
	// Empty: DefaultACMEStorage.
	Storage string `yaml:"storage"`
	// Challenge is "tls-alpn" (the default) or "http".
	Challenge string `yaml:"challenge"`
	// HTTPAddress is where HTTP-01 is answered with challenge "http"
	// (default ":80"). The CA always connects to port 80 unless a proxy
	// forwards it.
	HTTPAddress string `yaml:"http_address"`
	// TLSALPNAddress is where certmagic answers TLS-ALPN-01 during a
	// challenge when nothing else listens there (default ":443"; the CA
	// always connects to port 443). popgate's implicit-TLS listeners answer
	// TLS-ALPN-01 too, so a listener on this address takes precedence.
	TLSALPNAddress string `yaml:"tls_alpn_address"`
}

// Directory is the ACME directory URL in use.
func (a *ACMEConfig) Directory() string {
	if a.CA == "" {
		return LetsEncryptProduction
	}
	return a.CA
}

// ChallengeType is the challenge in use: ChallengeTLSALPN or ChallengeHTTP.
func (a *ACMEConfig) ChallengeType() string {
	if a.Challenge == "" {
		return ChallengeTLSALPN
	}
	return a.Challenge
}

// StorageDir is the folder in use for certificates, keys and the account.
func (a *ACMEConfig) StorageDir() string {
	if a.Storage == "" {
		return DefaultACMEStorage
	}
	return a.Storage
}

// check reports the problems of the acme section by key relative to it.
func (a *ACMEConfig) check(add func(key, format string, args ...any)) {
	if len(a.Domains) == 0 {
		add("domains", "at least one domain is required")
	}
	for i, d := range a.Domains {
		if d == "" || strings.ContainsAny(d, " /:@") || net.ParseIP(d) != nil {
			add(fmt.Sprintf("domains[%d]", i), "%q is not a DNS name", d)
		}
	}
	if a.CA != "" {
		// RFC 8555 §6.1: ACME is spoken over HTTPS only.
		if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" || u.Host == "" {
			add("ca", "%q is not an https:// directory URL", a.CA)
		}
	}
	if a.CARoot != "" {
		if err := checkFile(a.CARoot); err != nil {
			add("ca_root", "%v", err)
		}
	}
	switch a.Challenge {
	case "", ChallengeTLSALPN:
		if a.HTTPAddress != "" {
			add("http_address", "only used with challenge: http")
		}
		if a.TLSALPNAddress != "" {
			if err := netconf.CheckAddress(a.TLSALPNAddress); err != nil {
				add("tls_alpn_address", "%v", err)
			}
		}
	case ChallengeHTTP:
		if a.HTTPAddress != "" {
			if err := netconf.CheckAddress(a.HTTPAddress); err != nil {
				add("http_address", "%v", err)
			}
		}
		if a.TLSALPNAddress != "" {
			add("tls_alpn_address", "only used with challenge: tls-alpn")
		}
	default:
		add("challenge", "unknown challenge %q (want tls-alpn or http)", a.Challenge)
	}
}

// acmeState is the certmagic side of a Manager.
type acmeState struct {
	domains []string
	magic   *certmagic.Config
	cache   *certmagic.Cache
	issuer  *certmagic.ACMEIssuer
	cancel  context.CancelFunc

	httpSrv *http.Server // HTTP-01 answerer, challenge "http" only
	httpLn  net.Listener
	httpWG  sync.WaitGroup

	mu      sync.Mutex
	lastErr error // last "cert_failed" event, for Ready
}

// startACME sets up certmagic with its own cache (no certmagic.Default) and
// starts managing the domains in the background: certificates in Storage
// are loaded, missing or expiring ones obtained, then renewed.
func (m *Manager) startACME(ctx context.Context) error {
	a := m.cfg.ACME
	s := &acmeState{domains: append([]string(nil), a.Domains...)}
	zl := newZapLogger(m.log.With().Str("component", "certmagic").Logger())

	var roots *x509.CertPool
	if a.CARoot != "" {
		pemData, err := os.ReadFile(a.CARoot)
		if err != nil {
			return fmt.Errorf("tls.acme.ca_root: %w", err)
		}
		roots, err = x509.SystemCertPool()
		if err != nil || roots == nil {
			roots = x509.NewCertPool()
		}
		if !roots.AppendCertsFromPEM(pemData) {
			return fmt.Errorf("tls.acme.ca_root %s: no PEM certificate found", a.CARoot)
		}
	}
	if err := os.MkdirAll(a.StorageDir(), 0o700); err != nil {
		return fmt.Errorf("tls.acme.storage: %w", err)
	}
	storage := &certmagic.FileStorage{Path: a.StorageDir()}

	var magic *certmagic.Config
	s.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert:   func(certmagic.Certificate) (*certmagic.Config, error) { return magic, nil },
		Logger:             zl,
		RenewCheckInterval: m.renewCheck,
	})
	magic = certmagic.New(s.cache, certmagic.Config{
		Storage: storage,
		Logger:  zl,
		// Clients without SNI, or with a name not managed here (an alias,
		// a bare IP), get the first domain's certificate, as with static
		// files; the client decides whether it trusts it.
		DefaultServerName:  a.Domains[0],
		FallbackServerName: a.Domains[0],
		OnEvent:            s.onEvent,
	})
	s.magic = magic

	tmpl := certmagic.ACMEIssuer{
		CA:                      a.Directory(),
		Email:                   a.Email,
		Agreed:                  true, // configuring a CA is agreeing to its terms
		TrustedRoots:            roots,
		DisableHTTPChallenge:    a.ChallengeType() != ChallengeHTTP,
		DisableTLSALPNChallenge: a.ChallengeType() != ChallengeTLSALPN,
		Logger:                  zl,
	}
	switch a.ChallengeType() {
	case ChallengeHTTP:
		addr := a.HTTPAddress
		if addr == "" {
			addr = ":80"
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			s.cache.Stop()
			return fmt.Errorf("tls.acme.http_address: %w", err)
		}
		// certmagic's solver would listen on ListenHost:AltHTTPPort during a
		// challenge; pointing it at our listener makes it find the address
		// taken and leave the answer to our server (same issuer, same
		// challenge store).
		host, _, _ := net.SplitHostPort(addr)
		tmpl.ListenHost = host
		tmpl.AltHTTPPort = ln.Addr().(*net.TCPAddr).Port
		s.httpLn = ln
	case ChallengeTLSALPN:
		addr := a.TLSALPNAddress
		if addr == "" {
			addr = ":443"
		}
		host, port, _ := net.SplitHostPort(addr)
		p, err := strconv.Atoi(port)
		if err != nil || p <= 0 || p > 65535 {
			s.cache.Stop()
			return fmt.Errorf("tls.acme.tls_alpn_address: port %q", port)
		}
		tmpl.ListenHost, tmpl.AltTLSALPNPort = host, p
	}
	s.issuer = certmagic.NewACMEIssuer(magic, tmpl)
	magic.Issuers = []certmagic.Issuer{s.issuer}

	if s.httpLn != nil {
		// RFC 8555 §8.3: GET /.well-known/acme-challenge/<token>; anything
		// else is 404.
		s.httpSrv = &http.Server{
			Handler:           s.issuer.HTTPChallengeHandler(http.NotFoundHandler()),
			ReadHeaderTimeout: 10 * time.Second,
		}
		s.httpWG.Add(1)
		go func() {
			defer s.httpWG.Done()
			_ = s.httpSrv.Serve(s.httpLn)
		}()
	}

	// Maintenance outlives the caller's (start-up) context; Close stops it.
	mctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	if err := magic.ManageAsync(mctx, s.domains); err != nil {
		s.close()
		return fmt.Errorf("tls.acme: %w", err)
	}
	m.acme = s
	return nil
}

func (s *acmeState) onEvent(_ context.Context, event string, data map[string]any) error {
	if event == "cert_failed" {
		s.mu.Lock()
		if err, ok := data["error"].(error); ok {
			s.lastErr = err
		} else {
			s.lastErr = fmt.Errorf("%v", data["error"])
		}
		s.mu.Unlock()
	}
	return nil
}

// getCertificate is certmagic's: the managed certificate for the SNI name
// (the first domain's without SNI), or the TLS-ALPN-01 challenge
// certificate when the ClientHello offers only "acme-tls/1" (RFC 8737 §3).
func (s *acmeState) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.magic.GetCertificate(hello)
}

func (s *acmeState) leaf() *x509.Certificate {
	for _, c := range s.cache.AllMatchingCertificates(s.domains[0]) {
		if c.Leaf != nil {
			return c.Leaf
		}
	}
	return nil
}

// ready reports whether every domain has a certificate in the cache.
func (s *acmeState) ready() bool {
	for _, d := range s.domains {
		if len(s.cache.AllMatchingCertificates(d)) == 0 {
			return false
		}
	}
	return true
}

func (s *acmeState) close() error {
	if s.cancel != nil {
		s.cancel()
	}
	var err error
	if s.httpSrv != nil {
		err = s.httpSrv.Close()
		s.httpWG.Wait()
	} else if s.httpLn != nil {
		err = s.httpLn.Close()
	}
	s.cache.Stop()
	return err
}

// Ready waits until a certificate is available for every configured
// domain: at once for static files, after loading from storage or the
// first issuance with ACME. When ctx ends first it returns an error with
// the last issuance failure, if any.
func (m *Manager) Ready(ctx context.Context) error {
	if m.acme == nil {
		return nil
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !m.acme.ready() {
		select {
		case <-ctx.Done():
			m.acme.mu.Lock()
			last := m.acme.lastErr
			m.acme.mu.Unlock()
			if last != nil {
				return fmt.Errorf("tls.acme: no certificate yet for %v: %w (last failure: %v)", m.acme.domains, ctx.Err(), last)
			}
			return fmt.Errorf("tls.acme: no certificate yet for %v: %w", m.acme.domains, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}
