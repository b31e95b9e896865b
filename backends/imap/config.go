package imap

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/popgate/popgate/tlsconf"
)

// Defaults applied by New for zero values.
const (
	DefaultDialTimeout    = 10 * time.Second
	DefaultCommandTimeout = 30 * time.Second
	DefaultMailbox        = "INBOX"
	// DefaultUIDLTemplate is Dovecot's default pop3_uidl_format: the UID
	// then the UIDVALIDITY, each as 8 hex digits (lowercase, as Dovecot
	// writes them), so clients moving from Dovecot's POP3 keep their UIDLs.
	DefaultUIDLTemplate = "%08Xu%08Xv"
	DefaultKeyword      = "$POP3Deleted"
	// DefaultChunkSize is how many octets of a message one UID FETCH
	// BODY.PEEK[]<offset.size> reads.
	DefaultChunkSize = 1 << 20
	// DefaultSnapshotCache is how many maildrops' listings the snapshot
	// cache keeps (about 4 octets per message each).
	DefaultSnapshotCache = 10000
)

// Delete policies.
const (
	PolicyExpunge = "expunge"
	PolicyMove    = "move"
	PolicyFlag    = "flag"
	PolicyKeep    = "keep"
)

// Config is one IMAP backend.
type Config struct {
	Name           string           // backend name from the config (logs, lock key prefix)
	Address        string           // host:port
	TLS            string           // "implicit" | "starttls" | "none"
	Upstream       tlsconf.Upstream // server_name, ca_file, min_version, insecure_skip_verify
	DialTimeout    time.Duration    // default 10s (connect, TLS handshake, greeting)
	CommandTimeout time.Duration    // default 30s per upstream command (each chunk of a RETR is one)
	Mailbox        string           // default "INBOX"
	// UIDLTemplate builds the POP3 UIDL of a message, in Dovecot's
	// pop3_uidl_format syntax. Supported: %u (IMAP UID), %v (UIDVALIDITY),
	// %% (a percent sign), each variable optionally preceded by a
	// zero-padded width such as 08 and the modifiers X (hex,
	// lowercase like Dovecot), U (uppercase the result), L (lowercase it).
	// Without X the number is decimal. Default "%08Xu%08Xv". The template
	// must contain %u; the result must fit in 70 printable characters
	// (RFC 1939 §7).
	UIDLTemplate string
	// MarkSeen nil = true: a complete RETR sets \Seen (TOP never does),
	// for all the session's messages in one STORE at its end (QUIT, or
	// Close after a dropped connection), and only for messages the
	// snapshot did not see \Seen already.
	MarkSeen *bool
	Delete   DeleteConfig
	// ChunkSize is the octets fetched per UID FETCH when streaming a
	// message (default 256 KiB). Each chunk is read off the upstream socket
	// at once into a buffer, so a slow POP3 client never holds an upstream
	// literal open; memory per RETR is one chunk.
	ChunkSize int
	// SnapshotCache is how many maildrops' listings (UID and size of each
	// message, about 4 octets per message) the backend keeps, least recently
	// used evicted, to skip the UID FETCH at login when the mailbox has not
	// changed. It needs CONDSTORE (RFC 7162) upstream: an entry is used only
	// when UIDVALIDITY, UIDNEXT, EXISTS and HIGHESTMODSEQ are all the same as
	// when it was stored. 0 means DefaultSnapshotCache; negative disables.
	SnapshotCache int
	// OnSnapshotCache, when set and the cache is on, is told at every
	// login whether the listing came from the cache (metrics).
	OnSnapshotCache func(hit bool)
}

// DeleteConfig is what QUIT does to the messages the client deleted.
type DeleteConfig struct {
	Policy            string // "expunge" (default) | "move" | "flag" | "keep"
	Folder            string // for move
	Keyword           string // for flag; default "$POP3Deleted"
	AllowPlainExpunge bool   // without UIDPLUS: allow a plain EXPUNGE (unsafe); default false = \Deleted only + one warning per backend
}

// Validate reports every problem of c, each naming its configuration key.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Address == "" {
		add("address is required")
	} else if _, port, err := net.SplitHostPort(c.Address); err != nil || port == "" {
		add("address %q: want host:port", c.Address)
	}
	switch c.TLS {
	case "implicit", "starttls", "none":
	case "":
		add("tls is required: implicit, starttls or none")
	default:
		add("tls %q: want implicit, starttls or none", c.TLS)
	}
	if _, err := tlsconf.ParseVersion(c.Upstream.MinVersion); err != nil {
		add("min_version: %v", err)
	}
	if c.DialTimeout < 0 {
		add("dial_timeout must not be negative")
	}
	if c.CommandTimeout < 0 {
		add("command_timeout must not be negative")
	}
	if c.ChunkSize < 0 || (c.ChunkSize > 0 && c.ChunkSize < 4096) {
		add("chunk_size must be at least 4096")
	}
	if strings.ContainsAny(c.Mailbox, "\r\n\x00") {
		add("mailbox %q: control characters", c.Mailbox)
	}
	if c.UIDLTemplate != "" {
		if _, err := parseUIDLTemplate(c.UIDLTemplate); err != nil {
			add("uidl_template: %v", err)
		}
	}
	switch c.Delete.Policy {
	case "", PolicyExpunge, PolicyKeep:
	case PolicyMove:
		if c.Delete.Folder == "" {
			add("delete.folder is required for policy move")
		} else if strings.ContainsAny(c.Delete.Folder, "\r\n\x00") {
			add("delete.folder %q: control characters", c.Delete.Folder)
		} else if c.Delete.Folder == c.mailbox() {
			add("delete.folder %q is the mailbox itself", c.Delete.Folder)
		}
	case PolicyFlag:
		if k := c.Delete.Keyword; k != "" && !validKeyword(k) {
			add("delete.keyword %q: not an IMAP keyword (atom characters, no backslash)", k)
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

func (c Config) mailbox() string {
	if c.Mailbox == "" {
		return DefaultMailbox
	}
	return c.Mailbox
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
