package tlsconf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// ALPNProtocol is POP3's protocol ID in the IANA TLS ALPN registry,
// offered on every listener (RFC 7301 §3).
const ALPNProtocol = "pop3"

// DefaultPollInterval is how often static certificate files are checked for
// changes.
const DefaultPollInterval = 5 * time.Second

// Config is the `tls:` section: either static PEM files or ACME.
type Config struct {
	// CertFile is a PEM file holding the certificate followed by its chain.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile's first certificate.
	KeyFile string `yaml:"key_file"`
	// MinVersion is "1.2" (default) or "1.3"; "1.0" and "1.1" are accepted
	// only when set explicitly, for old devices, and New logs a warning.
	MinVersion string `yaml:"min_version"`
	// ACME obtains and renews certificates automatically; exclusive with
	// CertFile/KeyFile.
	ACME *ACMEConfig `yaml:"acme"`
}

// IsZero reports whether no certificate source is configured at all.
func (c Config) IsZero() bool {
	return c.CertFile == "" && c.KeyFile == "" && c.ACME == nil
}

// Check reports every problem of c to add, by key relative to the tls
// section ("cert_file", "acme.domains[0]"; "" for the section itself). It
// checks that the files exist but does not read them: New does. The
// configuration file's checks and New both use it, so they cannot disagree.
func (c Config) Check(add func(key, format string, args ...any)) {
	if _, err := ParseVersion(c.MinVersion); err != nil {
		add("min_version", "unknown version %q (want 1.0, 1.1, 1.2 or 1.3)", c.MinVersion)
	}
	static := c.CertFile != "" || c.KeyFile != ""
	switch {
	case static && c.ACME != nil:
		add("", "use either cert_file/key_file or acme, not both")
	case !static && c.ACME == nil:
		add("", "set cert_file and key_file, or acme")
	case static:
		for _, f := range []struct{ key, other, path string }{{"cert_file", "key_file", c.CertFile}, {"key_file", "cert_file", c.KeyFile}} {
			if f.path == "" {
				add(f.key, "required with %s", f.other)
			} else if err := checkFile(f.path); err != nil {
				add(f.key, "%v", err)
			}
		}
	default:
		c.ACME.check(func(key, format string, args ...any) { add("acme."+key, format, args...) })
	}
}

// Validate returns every problem of c as errors naming the key
// (tls.cert_file, tls.acme.domains[0], …).
func (c Config) Validate() []error {
	var errs []error
	c.Check(func(key, format string, args ...any) {
		k := "tls"
		if key != "" {
			k += "." + key
		}
		errs = append(errs, fmt.Errorf("%s: %s", k, fmt.Sprintf(format, args...)))
	})
	return errs
}

// checkFile checks that a file exists and can be opened.
func checkFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		if pe, ok := err.(*os.PathError); ok {
			return fmt.Errorf("%s: %v", path, pe.Err)
		}
		return err
	}
	return f.Close()
}

// Option tunes a Manager; the zero set of options is the production default.
type Option func(*Manager)

// WithPollInterval sets how often static certificate files are checked for
// changes (default DefaultPollInterval). d <= 0 turns polling off.
func WithPollInterval(d time.Duration) Option {
	return func(m *Manager) { m.poll = d }
}

// Manager serves popgate's server certificate: one stable *tls.Config for
// every listener whose certificate can change underneath (reload, renewal).
type Manager struct {
	log  zerolog.Logger
	cfg  Config
	poll time.Duration

	tlsConfig *tls.Config

	// static files (or SelfSigned)
	cert    atomic.Pointer[tls.Certificate]
	mu      sync.Mutex // serialises loads from Reload and the watcher
	stamp   fileStamp  // files' state at the last load attempt
	stop    chan struct{}
	done    sync.WaitGroup
	closeMu sync.Once

	acme *acmeState // nil unless ACME

	// ACME tuning for tests; zero: certmagic's defaults.
	renewCheck time.Duration // how often the cache looks for certificates to renew
	renewRatio float64       // fraction of the lifetime that is the renewal window
}

// New builds the Manager for c: static files are loaded now (an error names
// the file) and watched; ACME starts obtaining or loading certificates in
// the background (see Manager.Ready). Close releases what New started.
func New(ctx context.Context, c Config, log zerolog.Logger, opts ...Option) (*Manager, error) {
	if errs := c.Validate(); len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	minV, _ := ParseVersion(c.MinVersion)
	if minV < tls.VersionTLS12 {
		log.Warn().Str("min_version", c.MinVersion).
			Msg("tls.min_version below 1.2 accepts obsolete TLS versions; keep it only for devices that need it")
	}
	m := &Manager{log: log, cfg: c, poll: DefaultPollInterval, stop: make(chan struct{})}
	for _, o := range opts {
		o(m)
	}
	m.tlsConfig = m.newTLSConfig(minV)
	if c.ACME != nil {
		if err := m.startACME(ctx); err != nil {
			return nil, err
		}
		return m, nil
	}
	if err := m.load(); err != nil {
		return nil, err
	}
	if m.poll > 0 {
		m.done.Add(1)
		go m.watch()
	}
	return m, nil
}

func (m *Manager) newTLSConfig(minV uint16) *tls.Config {
	protos := []string{ALPNProtocol}
	if m.cfg.ACME != nil && m.cfg.ACME.ChallengeType() == ChallengeTLSALPN {
		protos = append(protos, acmeTLS1Protocol)
	}
	cfg := &tls.Config{
		MinVersion:     minV,
		NextProtos:     protos,
		GetCertificate: m.getCertificate,
		// CipherSuites left nil: Go's default suites.
	}
	// RFC 7301 §3.2 lets a server that supports none of the client's
	// protocols answer with no_application_protocol, and Go's server does.
	// A mail client that offers some other protocol name (imap, http/1.1,
	// …) must still get POP3, so such a client is served without ALPN.
	noALPN := cfg.Clone()
	noALPN.NextProtos = nil
	cfg.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if len(hello.SupportedProtos) == 0 {
			return nil, nil
		}
		for _, p := range hello.SupportedProtos {
			if slices.Contains(protos, p) {
				return nil, nil
			}
		}
		return noALPN, nil
	}
	return cfg
}

// ServerConfig returns the one *tls.Config every listener (implicit TLS and
// STLS) uses. It picks the certificate per handshake, so reloads and
// renewals reach the next handshake while open sessions keep theirs.
// Callers must not modify it; Clone it to change a field.
func (m *Manager) ServerConfig() *tls.Config { return m.tlsConfig }

func (m *Manager) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if m.acme != nil {
		return m.acme.getCertificate(hello)
	}
	// One certificate: clients without SNI, or with any name, get it.
	c := m.cert.Load()
	if c == nil {
		return nil, errors.New("tlsconf: no certificate loaded")
	}
	return c, nil
}

// Leaf returns the certificate currently served to clients without SNI, or
// nil when none is available yet (ACME before the first issuance).
func (m *Manager) Leaf() *x509.Certificate {
	if m.acme != nil {
		return m.acme.leaf()
	}
	c, err := m.getCertificate(&tls.ClientHelloInfo{})
	if err != nil || c == nil {
		return nil
	}
	if c.Leaf != nil {
		return c.Leaf
	}
	if len(c.Certificate) == 0 {
		return nil
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		return nil
	}
	return leaf
}

// Reload re-reads the static certificate files (SIGHUP). On error the
// certificate served so far stays and the error is returned. With ACME or
// a self-signed certificate it does nothing.
func (m *Manager) Reload() error {
	if m.acme != nil || m.cfg.CertFile == "" {
		return nil
	}
	return m.load()
}

// Close stops file watching and, with ACME, certificate maintenance and the
// HTTP-01 listener. Handshakes after Close still get the last certificate.
func (m *Manager) Close() error {
	var err error
	m.closeMu.Do(func() {
		close(m.stop)
		m.done.Wait()
		if m.acme != nil {
			err = m.acme.close()
		}
	})
	return err
}

// load reads CertFile/KeyFile and, when they parse, swaps the served
// certificate.
func (m *Manager) load() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stamp = stampFiles(m.cfg.CertFile, m.cfg.KeyFile)
	cert, err := loadKeyPair(m.cfg.CertFile, m.cfg.KeyFile)
	if err != nil {
		return err
	}
	m.cert.Store(cert)
	ev := m.log.Info()
	msg := "TLS certificate loaded"
	if time.Now().After(cert.Leaf.NotAfter) {
		ev, msg = m.log.Warn(), "TLS certificate loaded but expired"
	}
	ev.Str("cert_file", m.cfg.CertFile).Strs("names", certNames(cert.Leaf)).
		Time("not_after", cert.Leaf.NotAfter).Msg(msg)
	return nil
}

func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("tls: loading tls.cert_file %s / tls.key_file %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		leaf, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			return nil, fmt.Errorf("tls: tls.cert_file %s: %w", certFile, err)
		}
		cert.Leaf = leaf
	}
	return &cert, nil
}

func certNames(c *x509.Certificate) []string {
	if c == nil {
		return nil
	}
	names := append([]string(nil), c.DNSNames...)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	return names
}

// watch polls the files' mtime and size and reloads when they change. A
// failed load (for example a half-written pair) keeps the old certificate
// and is retried when the files change again.
func (m *Manager) watch() {
	defer m.done.Done()
	t := time.NewTicker(m.poll)
	defer t.Stop()
	for {
		select {
		case <-m.stop:
			return
		case <-t.C:
		}
		now := stampFiles(m.cfg.CertFile, m.cfg.KeyFile)
		m.mu.Lock()
		changed := now != m.stamp
		m.mu.Unlock()
		if !changed {
			continue
		}
		if err := m.load(); err != nil {
			m.log.Error().Err(err).Msg("TLS certificate files changed but could not be loaded; keeping the previous certificate")
		}
	}
}

type fileStamp struct {
	certMod, keyMod   time.Time
	certSize, keySize int64
}

func stampFiles(certFile, keyFile string) fileStamp {
	var s fileStamp
	if fi, err := statFile(certFile); err == nil {
		s.certMod, s.certSize = fi.ModTime(), fi.Size()
	}
	if fi, err := statFile(keyFile); err == nil {
		s.keyMod, s.keySize = fi.ModTime(), fi.Size()
	}
	return s
}

// hostList normalises SelfSigned's hosts into DNS names and IPs.
func hostList(hosts []string) (dns []string, ips []net.IP) {
	for _, h := range hosts {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		dns = append(dns, h)
	}
	return dns, ips
}
