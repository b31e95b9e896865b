package rest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/popgate/popgate/tlsconf"
)

// Defaults applied by New for zero values.
const (
	DefaultDialTimeout    = 10 * time.Second
	DefaultCommandTimeout = 30 * time.Second
	// DefaultSnapshotCache is how many maildrops' listings the snapshot
	// cache keeps.
	DefaultSnapshotCache = 10000
)

// Delete policies a REST store can honour: the contract has no folders and
// no keywords, so move and flag are not available.
const (
	PolicyExpunge = "expunge" // the client's deletions are sent in the commit
	PolicyKeep    = "keep"    // nothing is ever deleted; only seen marks are sent
)

// Config is one REST backend (docs/rest-store.md).
type Config struct {
	Name string // backend name from the configuration (logs)
	// URL is the contract's base url, http:// or https://; the calls are
	// URL + "/sessions" and so on. http:// off loopback is accepted with a
	// warning logged once.
	URL string
	// Headers are sent on every call (an API key, say). They may not
	// replace the contract's own headers (Authorization, Content-Type,
	// Idempotency-Key, If-None-Match, …). Values are never logged.
	Headers map[string]string
	// MarkSeen nil = true: the ids the client retrieved completely with RETR
	// (never TOP) are sent as the commit's "seen", whatever the end of the
	// session.
	MarkSeen *bool
	// DeletePolicy is "expunge" (default) or "keep".
	DeletePolicy   string
	DialTimeout    time.Duration    // default 10s: connect and TLS handshake
	CommandTimeout time.Duration    // default 30s: each call until its headers, and every read of a body
	Upstream       tlsconf.Upstream // ca_file, server_name, min_version, insecure_skip_verify
	// SnapshotCache is how many maildrops' listings (with their state) are
	// kept for If-None-Match. 0 means DefaultSnapshotCache; negative
	// disables.
	SnapshotCache int
}

// reservedHeaders are set by the backend itself.
var reservedHeaders = []string{"Authorization", "Content-Type", "Content-Length", "Idempotency-Key", "If-None-Match", "Host", "Transfer-Encoding", "Connection", "Accept-Encoding"}

// Validate reports every problem of c, each naming its configuration key.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.URL == "" {
		add("url is required")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		add("url %q: want http(s)://host[:port]/path", c.URL)
	} else if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		add("url %q: no query, fragment or user info", c.URL)
	}
	for k, v := range c.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n\t") {
			add("headers: invalid header name %q", k)
			continue
		}
		for _, r := range reservedHeaders {
			if strings.EqualFold(k, r) {
				add("headers: %s is set by popgate itself", http.CanonicalHeaderKey(k))
			}
		}
		if strings.ContainsAny(v, "\r\n\x00") {
			add("headers.%s: control characters in the value", k)
		}
	}
	switch c.DeletePolicy {
	case "", PolicyExpunge, PolicyKeep:
	case "move", "flag":
		add("delete.policy %q: a REST store has no folders or keywords; want expunge or keep", c.DeletePolicy)
	default:
		add("delete.policy %q: want expunge or keep", c.DeletePolicy)
	}
	if c.DialTimeout < 0 {
		add("dial_timeout must not be negative")
	}
	if c.CommandTimeout < 0 {
		add("command_timeout must not be negative")
	}
	if _, err := tlsconf.ParseVersion(c.Upstream.MinVersion); err != nil {
		add("min_version: %v", err)
	}
	return errors.Join(errs...)
}

// loopback reports whether host names the local machine.
func loopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
