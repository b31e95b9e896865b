package backends

import (
	"fmt"
	"strings"
	"time"
)

// Delete policies: what QUIT does upstream with the messages the client
// deleted (DESIGN invariant 2: only those).
const (
	PolicyExpunge = "expunge" // remove exactly those messages
	PolicyMove    = "move"    // move them to Delete.Folder
	PolicyFlag    = "flag"    // add Delete.Keyword; later sessions hide them
	PolicyKeep    = "keep"    // leave them
)

// Defaults of the keys every store type shares.
const (
	DefaultDeleteKeyword  = "$POP3Deleted"
	DefaultDialTimeout    = 10 * time.Second
	DefaultCommandTimeout = 30 * time.Second
	// DefaultSnapshotCache is how many maildrops' listings a backend keeps.
	DefaultSnapshotCache = 10000
)

// Store holds the keys every store type shares, with the same meaning
// everywhere. A type embeds it in its configuration with `yaml:",inline"`,
// starts from DefaultStore, calls Check from its own Check and Summary
// from its own Summary. A type that cannot honour one of the settings
// rejects it in its Check with a clear message.
type Store struct {
	// DialTimeout bounds connecting to the store (connect, TLS handshake,
	// greeting or first request).
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// CommandTimeout bounds each upstream call (one command, one request;
	// a message streamed in chunks is one call per chunk).
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// MarkSeen: messages the client retrieved in full (RETR, not TOP) are
	// marked seen upstream at the end of the session, whatever the end
	// (QUIT, a dropped connection, a timeout).
	MarkSeen bool `yaml:"mark_seen"`
	// SnapshotCache is how many maildrops' message lists are kept to skip
	// the listing at login while the maildrop is unchanged; 0 disables it.
	SnapshotCache int `yaml:"snapshot_cache"`
	// Delete is what QUIT does upstream with the deleted messages.
	Delete Delete `yaml:"delete"`
	// UIDLHeader (for example X-UIDL; "" = off) names a header field whose
	// value, when it is a valid UIDL unique in the maildrop, is presented as
	// the message's UIDL (UIDL migration by tools that write it, like
	// Dovecot's pop3_reuse_xuidl). Anyone can send a message with that
	// header: enable it only for mailboxes whose mail was migrated.
	UIDLHeader string `yaml:"uidl_header"`
}

// SharedStore returns the shared keys; every configuration that embeds
// Store has this method, so the gateway finds them without knowing the
// type.
func (s *Store) SharedStore() *Store { return s }

// SharedStoreOf returns the shared keys of a store type's configuration,
// or nil when it does not embed Store.
func SharedStoreOf(cfg any) *Store {
	if s, ok := cfg.(interface{ SharedStore() *Store }); ok {
		return s.SharedStore()
	}
	return nil
}

// Delete is what QUIT does upstream with the messages the client deleted.
type Delete struct {
	// Policy is expunge, move, flag or keep.
	Policy string `yaml:"policy"`
	// Folder is the target of policy move.
	Folder string `yaml:"folder"`
	// Keyword is the keyword of policy flag.
	Keyword string `yaml:"keyword"`
}

// DefaultStore returns the shared keys' defaults.
func DefaultStore() Store {
	return Store{
		DialTimeout:    DefaultDialTimeout,
		CommandTimeout: DefaultCommandTimeout,
		MarkSeen:       true,
		SnapshotCache:  DefaultSnapshotCache,
		Delete:         Delete{Policy: PolicyExpunge, Keyword: DefaultDeleteKeyword},
	}
}

// Check reports the problems of the shared keys. validKeyword decides
// whether delete.keyword is a keyword of the store (nil: any non-empty
// text of printable characters without spaces).
func (s *Store) Check(c *Checker, validKeyword func(string) error) {
	if s.DialTimeout <= 0 {
		c.Add("dial_timeout", "must be more than 0")
	}
	if s.CommandTimeout <= 0 {
		c.Add("command_timeout", "must be more than 0")
	}
	if s.SnapshotCache < 0 {
		c.Add("snapshot_cache", "must not be negative (0 disables the cache)")
	}
	d := s.Delete
	switch d.Policy {
	case PolicyExpunge, PolicyKeep:
	case PolicyMove:
		if d.Folder == "" {
			c.Add("delete.folder", "required with policy move")
		} else if strings.ContainsAny(d.Folder, "\r\n\x00") {
			c.Add("delete.folder", "%q holds control characters", d.Folder)
		}
	case PolicyFlag:
		if validKeyword == nil {
			validKeyword = printableWord
		}
		if err := validKeyword(d.Keyword); err != nil {
			c.Add("delete.keyword", "%q: %v", d.Keyword, err)
		}
	default:
		c.Add("delete.policy", "unknown policy %q (want expunge, move, flag or keep)", d.Policy)
	}
	if d.Folder != "" && d.Policy != PolicyMove {
		c.Add("delete.folder", "only used with policy move")
	}
	if d.Keyword != DefaultDeleteKeyword && d.Policy != PolicyFlag {
		c.Add("delete.keyword", "only used with policy flag")
	}
	if h := s.UIDLHeader; h != "" && !validFieldName(h) {
		c.Add("uidl_header", "%q is not a header field name (RFC 5322 §3.6.8: printable characters, no colon or space)", h)
	}
}

// validFieldName reports whether s is a header field name (RFC 5322
// §3.6.8: 1*ftext, printable US-ASCII except ':').
func validFieldName(s string) bool {
	if s == "" || len(s) > 76 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 33 || s[i] > 126 || s[i] == ':' {
			return false
		}
	}
	return true
}

func printableWord(s string) error {
	if s == "" {
		return fmt.Errorf("must not be empty")
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= 0x20 || s[i] >= 0x7f {
			return fmt.Errorf("want printable characters without spaces")
		}
	}
	return nil
}

// Summary describes the delete policy for check-config: "delete: expunge",
// "delete: move to Trash", "delete: flag with $POP3Deleted".
func (s *Store) Summary() string {
	p := s.Delete.Policy
	switch p {
	case PolicyMove:
		p += " to " + s.Delete.Folder
	case PolicyFlag:
		p += " with " + s.Delete.Keyword
	}
	return "delete: " + p
}
