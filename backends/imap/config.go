package imap

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/netconf"
	"github.com/popgate/popgate/tlsconf"
)

// Type is the imap store type: `type: imap` in a backend section.
var Type = backends.Type{Name: "imap", New: func() backends.Config { c := DefaultConfig(); return &c }}

// Defaults of the IMAP-only keys (the shared ones are backends.DefaultStore).
const (
	DefaultMailbox = "INBOX"
	// DefaultUIDLTemplate is Dovecot's default pop3_uidl_format: the UID
	// then the UIDVALIDITY, each as 8 hex digits (lowercase, as Dovecot
	// writes them), so clients moving from Dovecot's POP3 keep their UIDLs.
	DefaultUIDLTemplate = "%08Xu%08Xv"
	// DefaultChunkSize is how many octets of a message one UID FETCH
	// BODY.PEEK[]<offset.size> reads.
	DefaultChunkSize = 1 << 20
)

// Config is one IMAP backend: the keys of a `type: imap` section.
type Config struct {
	Address string `yaml:"address"` // host:port
	// TLS toward the server: implicit (RFC 8314), starttls (RFC 3501
	// §6.2.1) or none.
	TLS string `yaml:"tls"`
	// Mailbox is the folder POP3 shows.
	Mailbox string `yaml:"mailbox"`
	// UIDLTemplate builds the POP3 UIDL of a message, in Dovecot's
	// pop3_uidl_format syntax. Supported: %u (IMAP UID), %v (UIDVALIDITY),
	// %% (a percent sign), each variable optionally preceded by a
	// zero-padded width such as 08 and the modifiers X (hex,
	// lowercase like Dovecot), U (uppercase the result), L (lowercase it).
	// Without X the number is decimal. The template must contain %u; the
	// result must fit in 70 printable characters (RFC 1939 §7).
	UIDLTemplate string `yaml:"uidl_template"`
	// Upstream holds the shared TLS keys of network stores: server_name,
	// ca_file, min_version, insecure_skip_verify.
	tlsconf.Upstream `yaml:",inline"`
	// Store holds the keys every store type shares: dial_timeout (connect,
	// TLS handshake, greeting), command_timeout (each IMAP command; each
	// chunk of a RETR is one), mark_seen, snapshot_cache, delete.
	backends.Store `yaml:",inline"`
	// AllowPlainExpunge allows a plain EXPUNGE on servers without UIDPLUS
	// (it also removes messages other clients flagged \Deleted); without
	// it such servers get \Deleted only, and one warning per backend
	// (DESIGN invariant 2).
	AllowPlainExpunge bool `yaml:"allow_plain_expunge"`
	// Reuse keeps upstream sessions warm after QUIT (off by default).
	Reuse Reuse `yaml:"reuse"`

	// Name is the backend's name in the file (logs, lock key prefix); set
	// by Build.
	Name string `yaml:"-"`
	// ChunkSize is the octets fetched per UID FETCH when streaming a
	// message (not a file key). Each chunk is read off the upstream socket
	// at once into a buffer, so a slow POP3 client never holds an upstream
	// literal open; memory per RETR is one chunk.
	ChunkSize int `yaml:"-"`
	// OnSnapshotCache, when set and the cache is on, is told at every
	// login whether the listing came from the cache (metrics; not a file
	// key).
	OnSnapshotCache func(hit bool) `yaml:"-"`
}

// Reuse configures warm upstream sessions: after a POP3 session ends
// cleanly, its authenticated IMAP connection is kept for the next login of
// the same upstream user with the same credential, which then skips
// connect, TLS, LOGIN and the auth process upstream. Off while Max is 0
// (the default). The trade-off: a password changed or revoked upstream is
// noticed only when the warm connection ends (at most MaxAge after the
// login that opened it).
type Reuse struct {
	// Idle is how long a warm connection waits for its next login.
	Idle time.Duration `yaml:"idle"`
	// MaxAge is how long after its LOGIN a connection may be reused.
	MaxAge time.Duration `yaml:"max_age"`
	// Max is how many warm connections the backend keeps (the least
	// recently used is logged out first); 0 turns reuse off.
	Max int `yaml:"max"`
}

// Defaults of Reuse.
const (
	DefaultReuseIdle   = 60 * time.Second
	DefaultReuseMaxAge = 10 * time.Minute
)

// DefaultConfig returns an IMAP configuration holding every default; the
// file's section is decoded over it. Address and TLS have none.
//
// Shared keys, as this type reads them: mark_seen sets \Seen on the
// messages fully RETRieved, in one STORE at the session's end, only for
// messages the snapshot did not see \Seen already; snapshot_cache keeps
// the UID and size of every message (about 4 octets a message) and is
// used only when the server offers CONDSTORE (RFC 7162) and UIDVALIDITY,
// UIDNEXT, EXISTS and HIGHESTMODSEQ are all as they were.
func DefaultConfig() Config {
	return Config{
		Store:        backends.DefaultStore(),
		Mailbox:      DefaultMailbox,
		UIDLTemplate: DefaultUIDLTemplate,
		ChunkSize:    DefaultChunkSize,
		Reuse:        Reuse{Idle: DefaultReuseIdle, MaxAge: DefaultReuseMaxAge},
	}
}

// Check implements backends.Config.
func (c *Config) Check(k *backends.Checker) {
	if err := netconf.CheckAddress(c.Address); err != nil {
		k.Add("address", "%v", err)
	}
	switch c.TLS {
	case "implicit", "starttls", "none":
	case "":
		k.Add("tls", "required (implicit, starttls or none)")
	default:
		k.Add("tls", "unknown mode %q (want implicit, starttls or none)", c.TLS)
	}
	c.Upstream.Check(c.TLS != "none", k.Add)
	c.Store.Check(k, checkKeyword)
	if c.Mailbox == "" {
		k.Add("mailbox", "must not be empty")
	} else if strings.ContainsAny(c.Mailbox, "\r\n\x00") {
		k.Add("mailbox", "%q holds control characters", c.Mailbox)
	}
	if c.Delete.Policy == backends.PolicyMove && c.Delete.Folder == c.Mailbox {
		k.Add("delete.folder", "%q is the mailbox itself", c.Delete.Folder)
	}
	if _, err := parseUIDLTemplate(c.UIDLTemplate); err != nil {
		k.Add("uidl_template", "%v", err)
	}
	if c.Reuse.Max < 0 {
		k.Add("reuse.max", "must not be negative (0 turns reuse off)")
	}
	if c.Reuse.Max > 0 && c.Reuse.Idle <= 0 {
		k.Add("reuse.idle", "must be more than 0")
	}
	if c.Reuse.Max > 0 && c.Reuse.MaxAge <= 0 {
		k.Add("reuse.max_age", "must be more than 0")
	}
	if c.ChunkSize < 4096 {
		k.Add("", "chunk size %d: must be at least 4096", c.ChunkSize)
	}
}

// Summary implements backends.Config.
func (c *Config) Summary() string {
	s := fmt.Sprintf("%s (tls %s%s), mailbox %s, %s", c.Address, c.TLS, c.Upstream.Summary(), c.Mailbox, c.Store.Summary())
	if c.Reuse.Max > 0 {
		s += fmt.Sprintf(", reuse: up to %d warm sessions (idle %s, max age %s)", c.Reuse.Max, c.Reuse.Idle, c.Reuse.MaxAge)
	}
	return s
}

// Build implements backends.Config.
func (c *Config) Build(env backends.Env) (backends.Backend, error) {
	cfg := *c
	cfg.Name = env.Name
	if cfg.OnSnapshotCache == nil {
		cfg.OnSnapshotCache = env.OnSnapshotCache
	}
	b, err := New(cfg, env.Log)
	if err != nil {
		return nil, err
	}
	if env.Tokens != nil {
		b.SetTokens(env.Tokens)
	}
	return b, nil
}

// checkKeyword: RFC 3501 §9 flag-keyword = atom (no atom-specials, no "\").
func checkKeyword(k string) error {
	if !validKeyword(k) {
		return errors.New("not an IMAP keyword (atom characters, no backslash)")
	}
	return nil
}

// validKeyword: RFC 3501 §9 flag-keyword = atom (no atom-specials, no "\").
func validKeyword(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		ch := k[i]
		if ch <= 0x20 || ch >= 0x7f || strings.IndexByte(`(){%*"\]`, ch) >= 0 {
			return false
		}
	}
	return true
}

// uidlPart is one piece of a parsed UIDL template: literal text, or a
// variable ('u' or 'v') with its formatting.
type uidlPart struct {
	lit   string
	v     byte // 'u', 'v' or 0 for literal
	width int
	zero  bool
	hex   bool
	upper bool
	lower bool
}

type uidlTemplate []uidlPart

func parseUIDLTemplate(s string) (uidlTemplate, error) {
	var t uidlTemplate
	hasUID := false
	for i := 0; i < len(s); {
		ch := s[i]
		if ch != '%' {
			if ch <= 0x20 || ch >= 0x7f {
				return nil, fmt.Errorf("character %q not allowed in a UIDL (RFC 1939 §7: 0x21-0x7E)", ch)
			}
			t = append(t, uidlPart{lit: string(ch)})
			i++
			continue
		}
		i++
		if i < len(s) && s[i] == '%' {
			t = append(t, uidlPart{lit: "%"})
			i++
			continue
		}
		p := uidlPart{}
		if i < len(s) && s[i] == '0' {
			p.zero = true
			i++
		}
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		if i > start {
			w, _ := strconv.Atoi(s[start:i])
			if w > 20 {
				return nil, fmt.Errorf("width %d too large", w)
			}
			if !p.zero {
				return nil, errors.New("a width needs a leading 0 (a UIDL cannot hold the spaces Dovecot would pad with)")
			}
			p.width = w
		} else if p.zero {
			return nil, errors.New("a 0 must be followed by a width")
		}
	mods:
		for i < len(s) {
			switch s[i] {
			case 'X':
				p.hex = true
			case 'U':
				p.upper = true
			case 'L':
				p.lower = true
			default:
				break mods
			}
			i++
		}
		if i >= len(s) {
			return nil, fmt.Errorf("%q ends inside a variable", s)
		}
		switch s[i] {
		case 'u':
			hasUID = true
		case 'v':
		default:
			return nil, fmt.Errorf("unknown variable %%%c (supported: %%u uid, %%v uidvalidity, %%%%)", s[i])
		}
		p.v = s[i]
		i++
		t = append(t, p)
	}
	if !hasUID {
		return nil, errors.New("must contain %u (the IMAP UID) to be unique")
	}
	if n := len(t.format(0xffffffff, 0xffffffff)); n > 70 {
		return nil, fmt.Errorf("UIDLs up to %d characters, more than 70 (RFC 1939 §7)", n)
	}
	if n := len(t.format(0, 0)); n > 70 {
		return nil, fmt.Errorf("UIDLs up to %d characters, more than 70 (RFC 1939 §7)", n)
	}
	return t, nil
}

// format builds a UIDL. With the default template it gives Dovecot's
// pop3_uidl_format result byte for byte.
func (t uidlTemplate) format(uid, uidValidity uint32) string {
	return string(t.appendFormat(make([]byte, 0, t.maxLen()), uid, uidValidity))
}

// maxLen is the longest UIDL t can give.
func (t uidlTemplate) maxLen() int {
	n := 0
	for _, p := range t {
		if p.v == 0 {
			n += len(p.lit)
		} else {
			n += max(p.width, 10) // 10 decimal digits hold any uint32
		}
	}
	return n
}

// appendFormat appends the UIDL of uid to dst.
func (t uidlTemplate) appendFormat(dst []byte, uid, uidValidity uint32) []byte {
	var digits [20]byte
	for _, p := range t {
		if p.v == 0 {
			dst = append(dst, p.lit...)
			continue
		}
		n := uid
		if p.v == 'v' {
			n = uidValidity
		}
		base := 10
		if p.hex {
			base = 16
		}
		d := strconv.AppendUint(digits[:0], uint64(n), base)
		if p.upper {
			for i, c := range d {
				if 'a' <= c && c <= 'z' {
					d[i] = c - ('a' - 'A')
				}
			}
		}
		// p.lower: strconv writes lowercase hex digits already.
		for pad := p.width - len(d); pad > 0; pad-- {
			dst = append(dst, '0')
		}
		dst = append(dst, d...)
	}
	return dst
}
