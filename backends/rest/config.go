package rest

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/tlsconf"
)

// Type is the rest store type: `type: rest` in a backend section.
var Type = backends.Type{Name: "rest", New: func() backends.Config { c := DefaultConfig(); return &c }}

// DefaultCommandTimeout is the shared command_timeout default (each HTTP
// call), for check-store.
const DefaultCommandTimeout = backends.DefaultCommandTimeout

// Config is one REST backend: the keys of a `type: rest` section
// (docs/rest-store.md).
type Config struct {
	// URL is the contract's base url, http:// or https://; the calls are
	// URL + "/sessions" and so on. http:// to a host that is not loopback
	// is accepted with a warning logged once.
	URL string `yaml:"url"`
	// Headers are sent on every call (an API key, say: write it as
	// "${STORE_API_KEY}"). They may not replace the contract's own headers
	// (Authorization, Content-Type, Idempotency-Key, If-None-Match, …).
	// Values are never logged.
	Headers map[string]string `yaml:"headers"`
	// Upstream holds the shared TLS keys for https:// urls: server_name,
	// ca_file, min_version, insecure_skip_verify.
	tlsconf.Upstream `yaml:",inline"`
	// Store holds the keys every store type shares, as this type reads
	// them: dial_timeout (connect and TLS handshake), command_timeout (each
	// call until its response headers, and every read of a body),
	// mark_seen (the ids retrieved completely by RETR are sent as the
	// commit's "seen", whatever the end of the session), snapshot_cache
	// (maildrops whose last listing and state are kept for If-None-Match; 0
	// disables), delete (expunge sends the client's deletions in the
	// commit, keep never does; move and flag do not exist for a store
	// without folders or keywords).
	backends.Store `yaml:",inline"`

	// Name is the backend's name in the file (logs); set by Build.
	Name string `yaml:"-"`
}

// DefaultConfig returns a configuration holding every default; the file's
// section is decoded over it. URL has none.
func DefaultConfig() Config {
	return Config{Store: backends.DefaultStore()}
}

// reservedHeaders are set by the backend itself.
var reservedHeaders = []string{"Authorization", "Content-Type", "Content-Length", "Idempotency-Key", "If-None-Match", "Host", "Transfer-Encoding", "Connection", "Accept-Encoding"}

// Check implements backends.Config.
func (c *Config) Check(k *backends.Checker) {
	u, err := url.Parse(c.URL)
	switch {
	case c.URL == "":
		k.Add("url", "required (the store's contract url, such as https://store.internal.example/pop/v1)")
	case err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		k.Add("url", "%q: want http(s)://host[:port]/path", c.URL)
	case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		k.Add("url", "%q: no query, fragment or user info", c.URL)
	}
	https := err == nil && u.Scheme == "https"
	c.Upstream.Check(https, func(key, format string, args ...any) {
		if key == "tls" {
			k.Add("url", "http://, but server_name, ca_file, min_version or insecure_skip_verify is set")
			return
		}
		k.Add(key, format, args...)
	})
	names := make([]string, 0, len(c.Headers))
	for name := range c.Headers {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if name == "" || strings.ContainsAny(name, " :\r\n\t\x00") {
			k.Add("headers", "invalid header name %q", name)
			continue
		}
		for _, r := range reservedHeaders {
			if strings.EqualFold(name, r) {
				k.Add("headers."+name, "%s is set by popgate itself", http.CanonicalHeaderKey(name))
			}
		}
		if strings.ContainsAny(c.Headers[name], "\r\n\x00") {
			k.Add("headers."+name, "control characters in the value")
		}
	}
	c.Store.Check(k, nil)
	switch c.Delete.Policy {
	case backends.PolicyMove, backends.PolicyFlag:
		k.Add("delete.policy", "%q: a REST store has no folders or keywords (want expunge or keep)", c.Delete.Policy)
	}
}

// Summary implements backends.Config.
func (c *Config) Summary() string {
	s := c.URL + c.Upstream.Summary()
	if len(c.Headers) > 0 {
		s += fmt.Sprintf(", %d extra header(s)", len(c.Headers))
	}
	return s + ", " + c.Store.Summary()
}

// Build implements backends.Config.
func (c *Config) Build(env backends.Env) (backends.Backend, error) {
	cfg := *c
	cfg.Name = env.Name
	b, err := New(cfg, env.Log)
	if err != nil {
		return nil, err
	}
	if env.Tokens != nil {
		b.SetTokens(env.Tokens)
	}
	return b, nil
}

// loopback reports whether host names the local machine.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
