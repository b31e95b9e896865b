// Package oauth holds popgate's OAuth2 custody: the named upstream
// credentials of the configuration (`credentials:`), the tokens obtained
// for them through golang.org/x/oauth2 (client credentials, refresh token,
// device authorization grant), kept in an AES-GCM encrypted file
// (`token_store:`), refreshed ahead of expiry one request at a time per
// credential, and the XOAUTH2 and OAUTHBEARER (RFC 7628) SASL mechanisms
// that carry a bearer token to an IMAP server.
//
// No function of this package puts an access token, a refresh token, a
// client secret or a store key into an error text or a log line.
package oauth

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
)

// Credential types (the `type` key of a credential).
const (
	// TypeClientCredentials is the client credentials grant (RFC 6749
	// §4.4): app-only access, no person involved (Microsoft 365).
	TypeClientCredentials = "oauth2_client_credentials"
	// TypeRefreshToken is a refresh token (RFC 6749 §6) obtained once with
	// `popgate oauth enroll NAME` through the device authorization grant
	// (RFC 8628) and refreshed from then on (Gmail).
	TypeRefreshToken = "oauth2_refresh_token"
)

// CredentialConfig is one named entry of the `credentials:` section.
type CredentialConfig struct {
	// Type is oauth2_client_credentials or oauth2_refresh_token. Required.
	Type string `yaml:"type"`
	// TokenURL is the token endpoint (RFC 6749 §3.2). Required.
	TokenURL string `yaml:"token_url"`
	// DeviceAuthURL is the device authorization endpoint (RFC 8628 §3.1),
	// needed by `popgate oauth enroll` (oauth2_refresh_token only).
	DeviceAuthURL string `yaml:"device_auth_url"`
	// ClientID identifies the application registration. Required.
	ClientID string `yaml:"client_id"`
	// ClientSecret is the application's secret; write it as ${NAME}.
	// Required for oauth2_client_credentials.
	ClientSecret string `yaml:"client_secret"`
	// Scopes requested (e.g. https://outlook.office365.com/.default).
	Scopes []string `yaml:"scopes"`
	// CAFile is a PEM file of extra roots trusted for the token and device
	// endpoints (private identity providers, tests); the system roots stay.
	CAFile string `yaml:"ca_file"`
}

// String describes the credential without its secret.
func (c CredentialConfig) String() string {
	return fmt.Sprintf("%s client %s at %s", c.Type, c.ClientID, c.TokenURL)
}

// GoString hides the secret from %#v.
func (c CredentialConfig) GoString() string { return "oauth.CredentialConfig{" + c.String() + "}" }

// StoreConfig is the `token_store:` section.
type StoreConfig struct {
	// Path is the encrypted token file (created mode 0600; its folder is
	// created mode 0700 when missing). Required when credentials exist.
	Path string `yaml:"path"`
	// Key is the store key: 32 octets, base64. Write it as ${NAME}.
	Key string `yaml:"key"`
	// KeyFile holds the key (32 octets, base64) instead of Key.
	KeyFile string `yaml:"key_file"`
}

// GoString hides the key from %#v.
func (s StoreConfig) GoString() string {
	return fmt.Sprintf("oauth.StoreConfig{Path:%q, Key:<redacted>, KeyFile:%q}", s.Path, s.KeyFile)
}

// Problem is one configuration problem: the key path below the credential
// or the store (e.g. "token_url") and what is wrong, never a secret value.
type Problem struct {
	Key string
	Msg string
}

// ValidName reports whether name can name a credential: letters, digits,
// '.', '_', '-' and '@', not starting with '.'.
func ValidName(name string) bool {
	if name == "" || strings.HasPrefix(name, ".") || len(name) > 128 {
		return false
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-', r == '@':
		default:
			return false
		}
	}
	return true
}

// Check returns the problems of one credential.
func (c CredentialConfig) Check() []Problem {
	var ps []Problem
	add := func(k, f string, a ...any) { ps = append(ps, Problem{k, fmt.Sprintf(f, a...)}) }
	switch c.Type {
	case TypeClientCredentials, TypeRefreshToken:
	case "":
		add("type", "required: %s or %s", TypeClientCredentials, TypeRefreshToken)
	default:
		add("type", "%q is not %s or %s", c.Type, TypeClientCredentials, TypeRefreshToken)
	}
	checkURL := func(key, v string, required bool) {
		if v == "" {
			if required {
				add(key, "required")
			}
			return
		}
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add(key, "not an http(s) URL")
		}
	}
	checkURL("token_url", c.TokenURL, true)
	checkURL("device_auth_url", c.DeviceAuthURL, false)
	if c.DeviceAuthURL != "" && c.Type == TypeClientCredentials {
		add("device_auth_url", "only for %s (client credentials need no enrolment)", TypeRefreshToken)
	}
	if c.ClientID == "" {
		add("client_id", "required")
	}
	if c.ClientSecret == "" && c.Type == TypeClientCredentials {
		add("client_secret", "required for %s", TypeClientCredentials)
	}
	if c.CAFile != "" {
		if _, err := os.Stat(c.CAFile); err != nil {
			add("ca_file", "cannot read %s", c.CAFile)
		}
	}
	return ps
}

// Check returns the problems of the store section.
func (s StoreConfig) Check() []Problem {
	var ps []Problem
	if s.Path == "" {
		ps = append(ps, Problem{"path", "required"})
	}
	switch {
	case s.Key == "" && s.KeyFile == "":
		ps = append(ps, Problem{"key", "key or key_file is required"})
	case s.Key != "" && s.KeyFile != "":
		ps = append(ps, Problem{"key", "give key or key_file, not both"})
	default:
		if _, err := s.LoadKey(); err != nil {
			k := "key"
			if s.KeyFile != "" {
				k = "key_file"
			}
			ps = append(ps, Problem{k, err.Error()})
		}
	}
	return ps
}

// KeySize is the store key's length: AES-256.
const KeySize = 32

// LoadKey returns the 32-octet key from Key or KeyFile. Its errors never
// quote the key.
func (s StoreConfig) LoadKey() ([]byte, error) {
	text := s.Key
	if s.KeyFile != "" {
		b, err := os.ReadFile(s.KeyFile)
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("cannot read %s: %v", s.KeyFile, pe.Err)
			}
			return nil, fmt.Errorf("cannot read %s", s.KeyFile)
		}
		text = string(b)
	}
	return ParseKey(text)
}

// ParseKey decodes a key written as base64 (standard or URL alphabet,
// padded or not; surrounding space ignored). It must be 32 octets.
func ParseKey(text string) ([]byte, error) {
	text = strings.TrimSpace(text)
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if k, err := enc.DecodeString(text); err == nil {
			if len(k) != KeySize {
				return nil, fmt.Errorf("the key is %d octets, want %d (generate one with: head -c 32 /dev/urandom | base64)", len(k), KeySize)
			}
			return k, nil
		}
	}
	return nil, errors.New("the key is not base64 (generate one with: head -c 32 /dev/urandom | base64)")
}
