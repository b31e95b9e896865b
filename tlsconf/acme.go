package tlsconf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
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

// ACMEConfig is the `tls.acme:` section.
type ACMEConfig struct {
	// Domains are the names to obtain certificates for; the first one is
	// served to clients that send no SNI.
	Domains []string `yaml:"domains"`
	// Email is the ACME account contact (optional but recommended).
	Email string `yaml:"email"`
	// CA is the ACME directory URL. Empty: Let's Encrypt production.
	CA string `yaml:"ca"`
	// CARoot is a PEM file of an extra root trusted for the CA's HTTPS
	// endpoint (private CAs, Pebble in tests).
	CARoot string `yaml:"ca_root"`
	// Storage is the folder where certificates, keys and the account live.
	// Empty: certmagic's default folder under the user's home.
	Storage string `yaml:"storage"`
	// Challenge is "tls-alpn" (default) or "http".
	Challenge string `yaml:"challenge"`
	// HTTPAddress is where HTTP-01 is answered with challenge "http",
	// e.g. ":80" (the default). The CA always connects to port 80 unless
	// a proxy forwards it.
	HTTPAddress string `yaml:"http_address"`
	// TLSALPNAddress is where certmagic answers TLS-ALPN-01 during a
	// challenge when nothing else listens there (default ":443"; the CA
	// always connects to port 443). popgate's implicit-TLS listeners answer
	// TLS-ALPN-01 too, so a listener on this address takes precedence.
	TLSALPNAddress string `yaml:"tls_alpn_address"`
}

func (a *ACMEConfig) challenge() string {
	if a.Challenge == "" {
		return ChallengeTLSALPN
	}
	return a.Challenge
}

func (a *ACMEConfig) validate() []error {
	var errs []error
	if len(a.Domains) == 0 {
		errs = append(errs, errors.New("tls.acme.domains: at least one domain is required"))
	}
	for _, d := range a.Domains {
		if d == "" || net.ParseIP(d) != nil {
			errs = append(errs, fmt.Errorf("tls.acme.domains: %q is not a DNS name", d))
		}
	}
	if a.CA != "" {
		if u, err := url.Parse(a.CA); err != nil || u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
			errs = append(errs, fmt.Errorf("tls.acme.ca: %q is not an http(s) URL", a.CA))
		}
	}
	switch a.Challenge {
	case "", ChallengeTLSALPN, ChallengeHTTP:
	default:
		errs = append(errs, fmt.Errorf("tls.acme.challenge: %q: want tls-alpn or http", a.Challenge))
	}
	if a.HTTPAddress != "" {
		if _, _, err := net.SplitHostPort(a.HTTPAddress); err != nil {
			errs = append(errs, fmt.Errorf("tls.acme.http_address: %w", err))
		}
	}
	if a.TLSALPNAddress != "" {
		if _, _, err := net.SplitHostPort(a.TLSALPNAddress); err != nil {
			errs = append(errs, fmt.Errorf("tls.acme.tls_alpn_address: %w", err))
		}
	}
	return errs
}

type acmeState struct{}

func (m *Manager) startACME(ctx context.Context) error {
	return errors.New("tls.acme: not implemented yet")
}

func (s *acmeState) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	return nil, errors.New("tlsconf: ACME not implemented")
}

func (s *acmeState) close() error { return nil }
