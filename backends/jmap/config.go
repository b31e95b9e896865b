package jmap

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/tlsconf"
)

// Defaults applied by New for zero values.
const (
	DefaultMailboxRole = "inbox"
	// DefaultMoveFolder is the target of policy move without a folder:
	// the mailbox with the trash role (RFC 8621 §2, RFC 8457).
	DefaultMoveFolder = "role:trash"
	// MaxResponse bounds every API (JSON) response body; a larger one is
	// an error, never read whole into memory anyway (responses are decoded
	// as a stream).
	MaxResponse = 64 << 20
	// maxSessionResponse bounds the session resource.
	maxSessionResponse = 1 << 20
)

// Type is the jmap store type: `type: jmap` in a backend section.
var Type = backends.Type{Name: "jmap", New: func() backends.Config { c := DefaultConfig(); return &c }}

// Config is one JMAP backend: the keys of a `type: jmap` section.
type Config struct {
	// URL is the JMAP session resource (RFC 8620 §2), e.g.
	// https://api.example.com/.well-known/jmap. http:// is accepted (a
	// warning is logged once unless the host is a loopback address).
	URL string `yaml:"url"`
	// MailboxRole picks the maildrop by role (RFC 8621 §2, e.g. "inbox").
	// Default "inbox" unless Mailbox is set; not both.
	MailboxRole string `yaml:"mailbox_role"`
	// Mailbox picks the maildrop by its name (the name of a top-level
	// mailbox, or "Parent/Child" for a nested one).
	Mailbox string `yaml:"mailbox"`
	// Upstream holds the shared TLS keys of network stores (https only):
	// server_name, ca_file, min_version, insecure_skip_verify.
	tlsconf.Upstream `yaml:",inline"`
	// Store holds the keys every store type shares: dial_timeout (connect
	// and TLS handshake), command_timeout (each HTTP request; each read of
	// a download's body gets it anew), mark_seen, snapshot_cache, delete
	// (folder: a mailbox name, or role:NAME; default role:trash),
	// uidl_header.
	backends.Store `yaml:",inline"`

	// Name is the backend's name in the file (logs, lock key prefix); set
	// by Build.
	Name string `yaml:"-"`
}

// DefaultConfig returns a JMAP configuration holding every default; the
// file's section is decoded over it. URL has none.
//
// Shared keys, as this type reads them: mark_seen sets $seen on the
// messages fully RETRieved that the listing did not show $seen, in the
// session's last Email/set; snapshot_cache keeps each maildrop's listing
// (id, blobId, size: about 80 octets a message on Cyrus) and reuses it
// while the account's Email state is unchanged.
func DefaultConfig() Config {
	return Config{Store: backends.DefaultStore()}
}

// store returns the shared keys with this type's own default: policy move
// without a folder moves to the mailbox with the trash role.
func (c *Config) store() backends.Store {
	s := c.Store
	if s.Delete.Policy == backends.PolicyMove && s.Delete.Folder == "" {
		s.Delete.Folder = DefaultMoveFolder
	}
	return s
}

// Check implements backends.Config.
func (c *Config) Check(k *backends.Checker) {
	if c.URL == "" {
		k.Add("url", "required (the JMAP session resource, e.g. https://host/.well-known/jmap)")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		k.Add("url", "%q: want an http:// or https:// URL", c.URL)
	}
	if c.Mailbox != "" && c.MailboxRole != "" {
		k.Add("mailbox", "set mailbox or mailbox_role, not both")
	}
	if c.MailboxRole != "" && !validRole(c.MailboxRole) {
		k.Add("mailbox_role", "%q: want a role name such as inbox (lowercase letters)", c.MailboxRole)
	}
	if strings.ContainsAny(c.Mailbox, "\r\n\x00") {
		k.Add("mailbox", "%q holds control characters", c.Mailbox)
	}
	u, _ := url.Parse(c.URL)
	c.Upstream.Check(u != nil && u.Scheme == "https", k.Add)
	st := c.store()
	st.Check(k, checkKeyword)
	if st.Delete.Policy == backends.PolicyMove {
		f := st.Delete.Folder
		if r, ok := strings.CutPrefix(f, "role:"); ok && !validRole(r) {
			k.Add("delete.folder", "%q: want role:NAME with a role such as trash", f)
		} else if (f == c.Mailbox) || (ok && r == c.role()) {
			k.Add("delete.folder", "%q is the mailbox itself", f)
		}
	}
}

// Validate runs Check outside a configuration file.
func (c Config) Validate() error { return backends.CheckConfig(&c) }

// role is the mailbox role used when no mailbox name is set.
func (c Config) role() string {
	if c.Mailbox != "" {
		return ""
	}
	if c.MailboxRole == "" {
		return DefaultMailboxRole
	}
	return c.MailboxRole
}

// Summary implements backends.Config: the line check-config prints.
func (c *Config) Summary() string {
	where := "mailbox role " + c.role()
	if c.Mailbox != "" {
		where = fmt.Sprintf("mailbox %q", c.Mailbox)
	}
	st := c.store()
	return fmt.Sprintf("%s%s, %s, %s", c.URL, c.Upstream.Summary(), where, st.Summary())
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

func validRole(r string) bool {
	if r == "" {
		return false
	}
	for i := 0; i < len(r); i++ {
		if r[i] < 'a' || r[i] > 'z' {
			return false
		}
	}
	return true
}

func checkKeyword(k string) error {
	if !ValidKeyword(k) {
		return errors.New(`not a JMAP keyword (RFC 8621 §4.1.1: 1-255 of 0x21-0x7E, none of ( ) { ] % * " \)`)
	}
	return nil
}

// ValidKeyword reports whether k is a JMAP keyword (RFC 8621 §4.1.1: the
// IMAP flag-keyword syntax, 1-255 octets of 0x21-0x7E without ( ) { ] % * " \).
func ValidKeyword(k string) bool {
	if k == "" || len(k) > 255 {
		return false
	}
	for i := 0; i < len(k); i++ {
		ch := k[i]
		if ch <= 0x20 || ch >= 0x7f || strings.IndexByte(`(){]%*"\`, ch) >= 0 {
			return false
		}
	}
	return true
}

// insecureURL reports whether u sends credentials in clear text to a host
// that is not a loopback address.
func insecureURL(u *url.URL) bool {
	if u.Scheme != "http" {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return false
	}
	ip := net.ParseIP(h)
	return ip == nil || !ip.IsLoopback()
}
