// Package tlsconf builds the *tls.Config values popgate uses: toward clients
// (static files, self-signed for the demo, ACME) and toward upstream stores.
//
// Toward clients, a Manager hands out one *tls.Config (ServerConfig) shared
// by every listener; it picks the certificate per handshake, so a reload
// (SIGHUP, changed files) or an ACME renewal reaches the next handshake
// while open sessions keep theirs. With ACME (github.com/caddyserver/certmagic)
// TLS-ALPN-01 (RFC 8737) is answered by every listener using ServerConfig
// and, during a challenge, on tls.acme.tls_alpn_address when nothing else
// listens there; HTTP-01 (RFC 8555 §8.3) on tls.acme.http_address.
// certmagic's zap logs are written to the caller's zerolog logger.
package tlsconf

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Upstream holds the TLS settings toward an upstream store, shared by every
// backend type that dials a network store: it embeds Upstream in its
// configuration with `yaml:",inline"` (keys server_name, ca_file,
// min_version, insecure_skip_verify) and checks it with
// Check. The zero value verifies the server against the system roots
// with TLS 1.2 or later.
type Upstream struct {
	// ServerName overrides the name verified in the server certificate (and
	// sent as SNI). Empty: the host part of the dialed address.
	ServerName string `yaml:"server_name"`
	// CAFile is a PEM bundle of extra trusted roots. Empty: system roots only.
	CAFile string `yaml:"ca_file"`
	// MinVersion is "1.0", "1.1", "1.2" or "1.3". Empty: "1.2".
	MinVersion string `yaml:"min_version"`
	// InsecureSkipVerify turns certificate verification off. The caller logs
	// a warning at start when it is set.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// Check reports the problems of u to add, by key (min_version, ca_file;
// tls for settings that make no sense because the store is reached without
// TLS: tlsOn false). A backend type's Check passes its Checker's Add.
func (u Upstream) Check(tlsOn bool, add func(key, format string, args ...any)) {
	if _, err := ParseVersion(u.MinVersion); err != nil {
		add("min_version", "unknown version %q (want 1.0, 1.1, 1.2 or 1.3)", u.MinVersion)
	}
	if u.CAFile != "" {
		if err := checkFile(u.CAFile); err != nil {
			add("ca_file", "%v", err)
		}
	}
	if !tlsOn && (u.CAFile != "" || u.ServerName != "" || u.InsecureSkipVerify || u.MinVersion != "") {
		add("tls", "none, but server_name, ca_file, min_version or insecure_skip_verify is set")
	}
}

// Summary is ", certificate NOT verified" when verification is off, else
// "": what check-config appends to a backend's TLS mode.
func (u Upstream) Summary() string {
	if u.InsecureSkipVerify {
		return ", certificate NOT verified"
	}
	return ""
}

// ClientConfig returns the *tls.Config for dialing host (the host part of
// the upstream address, used when ServerName is empty).
func (u Upstream) ClientConfig(host string) (*tls.Config, error) {
	minV, err := ParseVersion(u.MinVersion)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		ServerName:         host,
		MinVersion:         minV,
		InsecureSkipVerify: u.InsecureSkipVerify, //nolint:gosec // opt-in, warned about at start
	}
	if u.ServerName != "" {
		cfg.ServerName = u.ServerName
	}
	if u.CAFile != "" {
		pem, err := os.ReadFile(u.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls ca_file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca_file %s: no PEM certificate found", u.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// ParseVersion maps "1.0" … "1.3" to the crypto/tls constant; "" is TLS 1.2.
func ParseVersion(s string) (uint16, error) {
	switch s {
	case "", "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	case "1.1":
		return tls.VersionTLS11, nil
	case "1.0":
		return tls.VersionTLS10, nil
	}
	return 0, fmt.Errorf("tls min_version %q: want 1.0, 1.1, 1.2 or 1.3", s)
}
