package jmap

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/popgate/popgate/tlsconf"
)

// Defaults applied by New for zero values.
const (
	DefaultCommandTimeout = 30 * time.Second
	DefaultDialTimeout    = 10 * time.Second
	DefaultMailboxRole    = "inbox"
	DefaultKeyword        = "$POP3Deleted"
	// DefaultMoveFolder is the target of policy move without a folder:
	// the mailbox with the trash role (RFC 8621 §2, RFC 8457).
	DefaultMoveFolder = "role:trash"
	// DefaultSnapshotCache is how many maildrops' listings the snapshot
	// cache keeps.
	DefaultSnapshotCache = 10000
	// MaxResponse bounds every API (JSON) response body; a larger one is
	// an error, never read whole into memory anyway (responses are decoded
	// as a stream).
	MaxResponse = 64 << 20
	// maxSessionResponse bounds the session resource.
	maxSessionResponse = 1 << 20
)

// Delete policies (the keys every store type shares).
const (
	PolicyExpunge = "expunge"
	PolicyMove    = "move"
	PolicyFlag    = "flag"
	PolicyKeep    = "keep"
)

// Config is one JMAP backend (type: jmap).
type Config struct {
	Name string // backend name from the config (logs, lock key prefix)
	// URL is the JMAP session resource (RFC 8620 §2), e.g.
	// https://api.example.com/.well-known/jmap. http:// is accepted (a
	// warning is logged once unless the host is a loopback address).
	URL string
	// MailboxRole picks the maildrop by role (RFC 8621 §2, e.g. "inbox").
	// Default "inbox" unless Mailbox is set; not both.
	MailboxRole string
	// Mailbox picks the maildrop by its name (the full name of a top-level
	// mailbox, or "Parent/Child" for a nested one).
	Mailbox string
	Delete  DeleteConfig
	// MarkSeen nil = true: a complete RETR sets $seen (TOP never does), for
	// all the session's messages in one Email/set at its end (QUIT, or
	// Close after a dropped connection).
	MarkSeen *bool
	// CommandTimeout bounds each HTTP request (default 30s); a download
	// gets it anew for every read of its body.
	CommandTimeout time.Duration
	// DialTimeout bounds connecting and the TLS handshake (default 10s).
	DialTimeout time.Duration
	// SnapshotCache is how many maildrops' listings are kept (least
	// recently used evicted); an entry is reused when Email/changes says
	// nothing changed since. 0 means DefaultSnapshotCache; negative
	// disables.
	SnapshotCache int
	// Upstream holds ca_file, server_name, min_version,
	// insecure_skip_verify (https only).
	Upstream tlsconf.Upstream
}

// DeleteConfig is what QUIT does to the messages the client deleted.
type DeleteConfig struct {
	Policy  string // "expunge" (default) | "move" | "flag" | "keep"
	Folder  string // for move: a mailbox name, or role:NAME (default role:trash)
	Keyword string // for flag; default "$POP3Deleted"
}

// Validate reports every problem of c, each naming its configuration key.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.URL == "" {
		add("url is required (the JMAP session resource, e.g. https://host/.well-known/jmap)")
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		add("url %q: want an http:// or https:// URL", c.URL)
	}
	if c.Mailbox != "" && c.MailboxRole != "" {
		add("mailbox and mailbox_role: set one, not both")
	}
	if c.MailboxRole != "" && !validRole(c.MailboxRole) {
		add("mailbox_role %q: want a role name such as inbox (lowercase letters)", c.MailboxRole)
	}
	if strings.ContainsAny(c.Mailbox, "\r\n\x00") {
		add("mailbox %q: control characters", c.Mailbox)
	}
	if _, err := tlsconf.ParseVersion(c.Upstream.MinVersion); err != nil {
		add("min_version: %v", err)
	}
	if c.CommandTimeout < 0 {
		add("command_timeout must not be negative")
	}
	if c.DialTimeout < 0 {
		add("dial_timeout must not be negative")
	}
	switch c.Delete.Policy {
	case "", PolicyExpunge, PolicyKeep:
	case PolicyMove:
		f := c.Delete.Folder
		if strings.ContainsAny(f, "\r\n\x00") {
			add("delete.folder %q: control characters", f)
		} else if r, ok := strings.CutPrefix(f, "role:"); ok && !validRole(r) {
			add("delete.folder %q: want role:NAME with a role such as trash", f)
		} else if (f != "" && f == c.Mailbox) || (strings.HasPrefix(f, "role:") && strings.TrimPrefix(f, "role:") == c.role()) {
			add("delete.folder %q is the mailbox itself", f)
		}
	case PolicyFlag:
		if k := c.Delete.Keyword; k != "" && !ValidKeyword(k) {
			add("delete.keyword %q: not a JMAP keyword (RFC 8621 §4.1.1: 1-255 of 0x21-0x7E, none of ( ) { ] %% * \" \\)", k)
		}
	default:
		add("delete.policy %q: want expunge, move, flag or keep", c.Delete.Policy)
	}
	if c.Delete.Folder != "" && c.Delete.Policy != PolicyMove {
		add("delete.folder is only used by policy move")
	}
	if c.Delete.Keyword != "" && c.Delete.Policy != PolicyFlag {
		add("delete.keyword is only used by policy flag")
	}
	return errors.Join(errs...)
}

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

// Summary is the one line check-config prints for this backend.
func (c Config) Summary() string {
	where := "role " + c.role()
	if c.Mailbox != "" {
		where = fmt.Sprintf("mailbox %q", c.Mailbox)
	}
	pol := c.Delete.Policy
	if pol == "" {
		pol = PolicyExpunge
	}
	switch pol {
	case PolicyMove:
		f := c.Delete.Folder
		if f == "" {
			f = DefaultMoveFolder
		}
		pol += " to " + f
	case PolicyFlag:
		k := c.Delete.Keyword
		if k == "" {
			k = DefaultKeyword
		}
		pol += " " + k
	}
	return fmt.Sprintf("jmap %s, %s, delete %s", c.URL, where, pol)
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
