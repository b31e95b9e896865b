package jmap

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/popgate/popgate/backends"
)

// snapEntry is one maildrop's listing: the mailbox, the Email state it was
// listed at (RFC 8620 §5.1 state),
// and per message, in POP3 order, its id, blobId, size and whether it had
// $seen. Ids and blobIds are packed into one string ("id blobId" back to
// back, the separator '+' instead of ' ' when the message had $seen; JMAP
// ids never hold either, RFC 8620 §1.2), so a listing costs its text plus
// 12 octets a message. Entries are never modified once built
// (a change builds a new one), so sessions and the cache share them.
type snapEntry struct {
	mailboxID string
	state     string
	data      string
	ends      []uint32 // per message: end of its id, end of its blobId in data
	sizes     []uint32
}

func (e *snapEntry) len() int { return len(e.sizes) }

// at returns message i's id, blobId, the "id blobId" ref and size.
func (e *snapEntry) at(i int) (id, blobID, ref string, size int64) {
	start := uint32(0)
	if i > 0 {
		start = e.ends[2*i-1]
	}
	idEnd, blobEnd := e.ends[2*i], e.ends[2*i+1]
	return e.data[start:idEnd], e.data[idEnd+1 : blobEnd], e.data[start:blobEnd], int64(e.sizes[i])
}

// entryBuilder appends messages to a new entry.
type entryBuilder struct {
	buf   []byte
	ends  []uint32
	sizes []uint32
}

func (b *entryBuilder) add(id, blobID string, size uint32, seen bool) {
	b.buf = append(b.buf, id...)
	b.ends = append(b.ends, uint32(len(b.buf)))
	if seen {
		b.buf = append(b.buf, '+')
	} else {
		b.buf = append(b.buf, ' ')
	}
	b.buf = append(b.buf, blobID...)
	b.ends = append(b.ends, uint32(len(b.buf)))
	b.sizes = append(b.sizes, size)
}

func (b *entryBuilder) entry(mailboxID, state string) *snapEntry {
	return &snapEntry{mailboxID: mailboxID, state: state, data: string(b.buf), ends: b.ends, sizes: b.sizes}
}

// refSeen reports whether the message of ref had $seen when listed.
func refSeen(ref string) bool {
	i := strings.IndexAny(ref, " +")
	return i >= 0 && ref[i] == '+'
}

// without returns a copy of e without the messages whose ids are in drop,
// those in seen marked $seen, at the Email state state.
func (e *snapEntry) without(drop, seen map[string]bool, state string) *snapEntry {
	var b entryBuilder
	for i := 0; i < e.len(); i++ {
		id, blob, ref, size := e.at(i)
		if !drop[id] {
			b.add(id, blob, uint32(size), seen[id] || refSeen(ref))
		}
	}
	return b.entry(e.mailboxID, state)
}

// UIDL returns the POP3 UIDL for an Email id: the id itself when it is a
// valid UIDL (1-70 octets of 0x21-0x7E, RFC 1939 §7; JMAP ids are 1-255
// octets of A-Za-z0-9-_, RFC 8620 §1.2), else "J" and the first 40 hex
// digits of its SHA-256: stable across sessions and restarts, as the id is.
func UIDL(id string) string {
	if validUIDL(id) {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return "J" + hex.EncodeToString(sum[:20])
}

func validUIDL(s string) bool {
	if len(s) < 1 || len(s) > 70 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// messages builds the snapshot of e. A blob known to be stored with bare
// LF line endings is listed with the size it is delivered with (CRLF).
func (e *snapEntry) messages(b *Backend) []backends.Message {
	n := e.len()
	if n == 0 {
		return nil
	}
	fix := b.crlfExtra.Len() > 0
	out := make([]backends.Message, n)
	for i := range out {
		id, blob, ref, size := e.at(i)
		if fix {
			if extra, ok := b.crlfExtra.Get(blob); ok {
				size += extra
				ref += correctedMark
			}
		}
		out[i] = backends.Message{UIDL: UIDL(id), Size: size, Ref: ref}
	}
	return out
}

// correctedMark ends the Ref of a message listed with its CRLF size.
const correctedMark = " c"

func refCorrected(ref string) bool { return strings.HasSuffix(ref, correctedMark) }

// snapCache keeps the last listing of each maildrop (least recently used
// evicted). A login reuses an entry only when the account's Email state is
// still the entry's (RFC 8620 §5.1: the state changes with any change to
// any Email, so an equal state is what an Email/changes without changes
// would prove); the session's own Email/set moves the entry forward when
// nothing else changed in between.
type snapCache struct {
	c    *lru.Cache[string, *snapEntry]
	hits atomic.Int64
}

func newSnapCache(n int) *snapCache {
	if n <= 0 {
		return nil
	}
	c, err := lru.New[string, *snapEntry](n)
	if err != nil {
		return nil
	}
	return &snapCache{c: c}
}

func (sc *snapCache) get(key string) *snapEntry {
	if sc == nil {
		return nil
	}
	e, _ := sc.c.Get(key)
	return e
}

func (sc *snapCache) put(key string, e *snapEntry) {
	if sc != nil {
		sc.c.Add(key, e)
	}
}

func (sc *snapCache) remove(key string) {
	if sc != nil {
		sc.c.Remove(key)
	}
}
