// Package migration keeps POP3 clients' "leave mail on the server" state
// when an old POP3 server is retired: it captures the old server's UIDLs
// with a key built from each message's header, stores them per maildrop,
// and at login presents every message of the new store that matches a
// captured key under its old UIDL (in the spirit of Dovecot's
// pop3-migration plugin, but at the gateway, for any store).
//
// The match key is a digest of four header fields that survive a copy
// between stores: Message-ID, Date, From and Subject, each unfolded and
// whitespace-normalised (RFC 5322 §2.2.3). Maps hold keys and UIDLs only:
// no message content, no password.
package migration

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// KeyFields are the header fields the match key is built from, in order.
var KeyFields = []string{"Message-ID", "Date", "From", "Subject"}

// Key is a message's match key: the first 16 octets of a SHA-256 over the
// normalised KeyFields.
type Key [16]byte

// String is the key in lowercase hex, as maps store it.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// ParseKey reads a key written by String.
func ParseKey(s string) (Key, bool) {
	var k Key
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(k) {
		return k, false
	}
	copy(k[:], b)
	return k, true
}

// keyVersion is hashed in first, so that a change of the recipe can never
// match keys made by an older one.
const keyVersion = "popgate-uidl-key-v1"

// MatchKey returns the key of a message from its header (the octets up to
// the blank line; anything after it is ignored). A message without a
// Message-ID still gets a key from the other three fields; one without any
// of them gets the key of four empty fields, which every such message
// shares (and which therefore never matches: see Match).
func MatchKey(header []byte) Key {
	vals := HeaderValues(header, KeyFields)
	h := sha256.New()
	h.Write([]byte(keyVersion))
	for _, v := range vals {
		h.Write([]byte{0})
		h.Write([]byte(v))
	}
	var k Key
	copy(k[:], h.Sum(nil))
	return k
}

// HeaderValues returns, for each of names, the value of the first field of
// header with that name (case-insensitive, RFC 5322 §1.2.2), unfolded
// (RFC 5322 §2.2.3), with every run of white space made one space and the
// ends trimmed; "" for a field that is absent. Bare LF line ends are
// accepted as well as CRLF. Parsing stops at the first empty line.
func HeaderValues(header []byte, names []string) []string {
	vals := make([]string, len(names))
	found := make([]bool, len(names))
	cur := -1 // index in names of the field being read, -1 for none
	var val []byte
	flush := func() {
		if cur >= 0 {
			vals[cur] = normalise(val)
			found[cur] = true
		}
		cur, val = -1, val[:0]
	}
	for len(header) > 0 {
		var line []byte
		if i := bytes.IndexByte(header, '\n'); i >= 0 {
			line, header = header[:i], header[i+1:]
		} else {
			line, header = header, nil
		}
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break // end of the header
		}
		if line[0] == ' ' || line[0] == '\t' { // a folded continuation
			if cur >= 0 {
				val = append(val, ' ')
				val = append(val, line...)
			}
			continue
		}
		flush()
		name, rest, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue // not a field (e.g. a mbox "From " line)
		}
		name = bytes.TrimRight(name, " \t")
		for i, n := range names {
			if !found[i] && strings.EqualFold(string(name), n) {
				cur = i
				val = append(val[:0], rest...)
				break
			}
		}
	}
	flush()
	return vals
}

// normalise makes every run of white space (SP, HTAB, CR, LF) one space and
// trims the ends.
func normalise(b []byte) string {
	return strings.Join(strings.FieldsFunc(string(b), func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\r' || r == '\n'
	}), " ")
}
