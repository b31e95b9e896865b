package imap

import (
	"encoding/binary"
	"slices"
	"sort"
	"strconv"
	"sync/atomic"

	"github.com/emersion/go-imap/v2"
	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/popgate/popgate/backends"
)

// snapCache remembers the last full listing of each maildrop, so that a
// login finding the mailbox unchanged skips the UID FETCH 1:* (the costly
// part of a login on a large maildrop). It is bounded by a number of
// maildrops (least recently used evicted) and safe for concurrent use.
//
// An entry is only trusted when the server supports CONDSTORE (RFC 7162)
// and the SELECT answer repeats the entry's UIDVALIDITY, UIDNEXT, EXISTS
// and HIGHESTMODSEQ exactly:
//   - UIDVALIDITY equal: the UIDs still name the same messages (RFC 3501 §2.3.1.1);
//   - UIDNEXT equal: nothing was appended (RFC 3501 §2.3.1.1);
//   - EXISTS equal with no append: nothing was expunged;
//   - HIGHESTMODSEQ equal: no flag changed (RFC 7162 §3.1.2.1, every flag
//     change gives the message a higher mod-sequence; an expunge too);
//
// and sizes never change (RFC 3501 §2.3.4: RFC822.SIZE is immutable), so
// the listing (UIDs of the messages not hidden by \Deleted or the delete
// keyword, and their sizes) is the one a fresh UID FETCH would give.
type snapCache struct {
	c       *lru.Cache[string, *snapEntry]
	hits    atomic.Int64 // logins served from the cache
	updates atomic.Int64 // logins served from an entry brought up to date (listSince)
}

// snapEntry is one maildrop's listing, compact: per message the UID as the
// difference to the previous one and the size, both as uvarints (about 4
// octets a message), and one \Seen bit. Entries are never modified once
// stored (a refresh replaces them).
type snapEntry struct {
	uidValidity uint32
	uidNext     uint32
	exists      uint32
	modSeq      uint64
	n           int      // messages listed
	data        []byte   // uvarint(uid - previous uid), uvarint(RFC822.SIZE), … in UID order: the POP3 numbering
	seen        []uint64 // bit i: message i had \Seen (a RETR need not set it)
	// index finds a message by UID without decoding the list from its
	// start: for block b of indexBlock messages, index[2b] is the UID
	// before the block's first message (0 for the first block) and
	// index[2b+1] where the block starts in data. 8 octets per block.
	index []uint32
}

// indexBlock is the number of messages per index entry: a lookup decodes
// at most this many.
const indexBlock = 64

// pack stores the listing: uids ascending and unique, sizes and seen
// alongside.
func (e *snapEntry) pack(uids, sizes []uint32, seen []bool) {
	e.n = len(uids)
	e.data = make([]byte, 0, 2*len(uids)+binary.MaxVarintLen32)
	e.index = make([]uint32, 0, 2*((len(uids)+indexBlock-1)/indexBlock))
	prev := uint32(0)
	for i, uid := range uids {
		if i%indexBlock == 0 {
			e.index = append(e.index, prev, uint32(len(e.data)))
		}
		e.data = binary.AppendUvarint(e.data, uint64(uid-prev))
		e.data = binary.AppendUvarint(e.data, uint64(sizes[i]))
		prev = uid
	}
	e.data = slices.Clip(e.data)
	e.seen = make([]uint64, (len(seen)+63)/64)
	for i, s := range seen {
		if s {
			e.seen[i/64] |= 1 << (i % 64)
		}
	}
}

// each calls f with every message's UID and size, in order.
func (e *snapEntry) each(f func(i int, uid, size uint32) bool) {
	uid := uint32(0)
	for i, p := 0, 0; i < e.n; i++ {
		d, k := binary.Uvarint(e.data[p:])
		p += k
		size, k := binary.Uvarint(e.data[p:])
		p += k
		uid += uint32(d)
		if !f(i, uid, uint32(size)) {
			return
		}
	}
}

// isSeen reports whether uid had \Seen when e was listed. It is asked
// after every complete RETR: it decodes at most indexBlock entries.
func (e *snapEntry) isSeen(uid uint32) bool {
	if e == nil {
		return false
	}
	i, ok, _ := e.find(uid)
	return ok && e.seenAt(i)
}

// seenAt reports whether message i had \Seen when e was listed.
func (e *snapEntry) seenAt(i int) bool { return e.seen[i/64]&(1<<(i%64)) != 0 }

// find returns the index of the message with UID uid, whether it is
// listed, and how many entries it decoded to know.
func (e *snapEntry) find(uid uint32) (int, bool, int) {
	blocks := len(e.index) / 2
	// The first block whose successor starts after uid holds it, if any.
	b := sort.Search(blocks, func(b int) bool { return b+1 == blocks || e.index[2*(b+1)] >= uid })
	if b == blocks {
		return 0, false, 0
	}
	u, p := e.index[2*b], int(e.index[2*b+1])
	decoded := 0
	for i := b * indexBlock; i < e.n && i < (b+1)*indexBlock; i++ {
		d, k := binary.Uvarint(e.data[p:])
		p += k
		_, k = binary.Uvarint(e.data[p:])
		p += k
		u += uint32(d)
		decoded++
		if u >= uid {
			return i, u == uid, decoded
		}
	}
	return 0, false, decoded
}

func newSnapCache(n int) *snapCache {
	if n <= 0 {
		return nil
	}
	c, err := lru.New[string, *snapEntry](n)
	if err != nil { // only for n <= 0
		return nil
	}
	return &snapCache{c: c}
}

// get returns the entry for key when sel proves it current.
func (sc *snapCache) get(key string, sel *imap.SelectData) *snapEntry {
	if sc == nil || !cacheable(sel) {
		return nil
	}
	e, ok := sc.c.Get(key)
	if !ok || e.uidValidity != sel.UIDValidity || e.uidNext != uint32(sel.UIDNext) ||
		e.exists != sel.NumMessages || e.modSeq != sel.HighestModSeq {
		return nil
	}
	sc.hits.Add(1)
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

// cacheable: the SELECT answer carries everything an entry is checked
// against. A HIGHESTMODSEQ of 0 means the server sent none, or NOMODSEQ
// (RFC 7162 §3.1.2.2: the mailbox keeps no mod-sequences).
func cacheable(sel *imap.SelectData) bool {
	return sel.UIDValidity != 0 && sel.UIDNext != 0 && sel.HighestModSeq != 0
}

// messages builds the snapshot of e: UIDLs from the template and the
// UIDVALIDITY, Refs the decimal UIDs. All the strings share one backing
// allocation.
func (e *snapEntry) messages(t uidlTemplate) []backends.Message {
	n := e.n
	if n == 0 {
		return nil
	}
	out := make([]backends.Message, n)
	buf := make([]byte, 0, n*(t.maxLen()+10))
	ends := make([]int32, 0, 2*n)
	e.each(func(i int, uid, size uint32) bool {
		buf = t.appendFormat(buf, uid, e.uidValidity)
		ends = append(ends, int32(len(buf)))
		buf = strconv.AppendUint(buf, uint64(uid), 10)
		ends = append(ends, int32(len(buf)))
		out[i].Size = int64(size)
		return true
	})
	s := string(buf)
	start := int32(0)
	for i := range out {
		u, r := ends[2*i], ends[2*i+1]
		out[i].UIDL, out[i].Ref = s[start:u], s[u:r]
		start = r
	}
	return out
}

// cacheEvent reports a snapshot-cache hit or miss to Config.OnSnapshotCache
// (only when the cache is on).
func (b *Backend) cacheEvent(hit bool) {
	if b.cache != nil && b.cfg.OnSnapshotCache != nil {
		b.cfg.OnSnapshotCache(hit)
	}
}

// peek returns key's entry without proving it current (the start of an
// incremental listing, see Mailbox.listSince).
func (sc *snapCache) peek(key string) *snapEntry {
	if sc == nil {
		return nil
	}
	e, _ := sc.c.Peek(key)
	return e
}

// unpack returns e's listing as slices (new ones: e stays unmodified).
func (e *snapEntry) unpack() (uids, sizes []uint32, seen []bool) {
	uids = make([]uint32, 0, e.n)
	sizes = make([]uint32, 0, e.n)
	seen = make([]bool, 0, e.n)
	e.each(func(i int, uid, size uint32) bool {
		uids = append(uids, uid)
		sizes = append(sizes, size)
		seen = append(seen, e.seenAt(i))
		return true
	})
	return uids, sizes, seen
}
