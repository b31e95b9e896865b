package proxy

import (
	"bufio"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"strings"
	"sync"

	"github.com/popgate/popgate/backends"
)

// snapshot is a session's compact copy of the message list taken at login
// (RFC 1939 §4: numbering and sizes are fixed for the whole session). It
// holds all UIDLs and Refs in one string, so a maildrop of n messages costs
// a few allocations instead of 2n+1, and 10 to 30 octets per message
// instead of 40 plus two strings; the backend's slice becomes garbage right
// after login. The prefix and suffix common to all UIDLs are kept once
// (Dovecot's "%08Xu%08Xv" UIDLs share their UIDVALIDITY half and leading
// zeros). msg rebuilds a backends.Message from substrings; it allocates only
// a UIDL that has such a prefix or suffix.
type snapshot struct {
	prefix    string   // common to all UIDLs
	suffix    string   // common to all UIDLs
	data      string   // middle of UIDL 1, its Ref, middle of UIDL 2, …
	n         int      // number of messages
	entry     int      // the common entry length (UIDL middle + Ref), or -1
	lens      []uint8  // entry lengths, when entry < 0 and all fit in 8 bits
	base      []uint32 // with lens: offset of entry 64k in data
	ends      []uint32 // otherwise: ends[i] is the end of entry i in data
	ulens     []uint8  // lengths of the UIDL middles, or nil when all are ulen
	ulen      int      // the common middle length when ulens is nil
	refIsUIDL bool     // every Ref equals its UIDL: data holds it once
	size32    []uint32 // sizes, when all fit in 32 bits
	size64    []int64  // sizes otherwise
	dele      []uint64 // deletion marks, one bit per message
}

// errSnapshotTooBig reports a snapshot whose strings do not fit in 4 GiB.
var errSnapshotTooBig = errors.New("snapshot: UIDLs and references exceed 4 GiB")

// newSnapshot checks msgs (RFC 1939 §7: UIDL 1–70 octets in 0x21–0x7E,
// unique in the maildrop; sizes not negative) and copies them.
func newSnapshot(msgs []backends.Message) (*snapshot, error) {
	s := &snapshot{refIsUIDL: true}
	total, fixedLen, fits32 := 0, -1, true
	for i, m := range msgs {
		if len(m.UIDL) < 1 || len(m.UIDL) > 70 {
			return nil, fmt.Errorf("snapshot: message %d: UIDL length %d", i+1, len(m.UIDL))
		}
		for j := 0; j < len(m.UIDL); j++ {
			if c := m.UIDL[j]; c < 0x21 || c > 0x7e {
				return nil, fmt.Errorf("snapshot: message %d: invalid octet %#x in UIDL", i+1, c)
			}
		}
		if m.Size < 0 {
			return nil, fmt.Errorf("snapshot: message %d: negative size", i+1)
		}
		if m.Size > math.MaxUint32 {
			fits32 = false
		}
		if m.Ref != m.UIDL {
			s.refIsUIDL = false
		}
		switch fixedLen {
		case -1:
			fixedLen = len(m.UIDL)
		case len(m.UIDL):
		default:
			fixedLen = -2
		}
		total += len(m.UIDL) + len(m.Ref)
	}
	if total > math.MaxUint32 {
		return nil, errSnapshotTooBig
	}
	if i, j := duplicateUIDL(msgs); i >= 0 {
		return nil, fmt.Errorf("snapshot: message %d: duplicate UIDL %q (as message %d)", j+1, msgs[j].UIDL, i+1)
	}

	pre, suf := commonAffixes(msgs)
	s.prefix, s.suffix = strings.Clone(pre), strings.Clone(suf)
	cut := len(pre) + len(suf)
	if fixedLen >= 0 {
		fixedLen -= cut
	}
	var b strings.Builder
	if s.refIsUIDL {
		total = 0
	}
	total -= cut * len(msgs)
	for _, m := range msgs {
		if s.refIsUIDL {
			total += len(m.UIDL)
		}
	}
	b.Grow(total)
	s.n = len(msgs)
	s.entry = -1
	entry, small := -1, true
	for i, m := range msgs {
		e := len(m.UIDL) - cut
		if !s.refIsUIDL {
			e += len(m.Ref)
		}
		if i == 0 {
			entry = e
		} else if e != entry {
			entry = -2
		}
		if e > math.MaxUint8 {
			small = false
		}
	}
	switch {
	case entry >= 0:
		s.entry = entry
	case small:
		s.lens = make([]uint8, len(msgs))
		s.base = make([]uint32, (len(msgs)+63)/64)
	default:
		s.ends = make([]uint32, len(msgs))
	}
	if fixedLen >= 0 {
		s.ulen = fixedLen
	} else {
		s.ulens = make([]uint8, len(msgs))
	}
	if fits32 {
		s.size32 = make([]uint32, len(msgs))
	} else {
		s.size64 = make([]int64, len(msgs))
	}
	for i, m := range msgs {
		mid := m.UIDL[len(pre) : len(m.UIDL)-len(suf)]
		b.WriteString(mid)
		if !s.refIsUIDL {
			b.WriteString(m.Ref)
		}
		switch {
		case s.lens != nil:
			if i%64 == 0 {
				s.base[i/64] = uint32(b.Len() - len(mid) - len(m.Ref)*b2i(!s.refIsUIDL))
			}
			s.lens[i] = uint8(len(mid) + len(m.Ref)*b2i(!s.refIsUIDL))
		case s.ends != nil:
			s.ends[i] = uint32(b.Len())
		}
		if s.ulens != nil {
			s.ulens[i] = uint8(len(mid))
		}
		if fits32 {
			s.size32[i] = uint32(m.Size)
		} else {
			s.size64[i] = m.Size
		}
	}
	s.data = b.String()
	s.dele = make([]uint64, (len(msgs)+63)/64)
	return s, nil
}

// len returns the number of messages, deleted ones included.
func (s *snapshot) len() int { return s.n }

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// span returns where entry i starts and ends in data.
func (s *snapshot) span(i int) (int, int) {
	switch {
	case s.entry >= 0:
		return i * s.entry, (i + 1) * s.entry
	case s.lens != nil:
		start := int(s.base[i/64])
		for j := i &^ 63; j < i; j++ {
			start += int(s.lens[j])
		}
		return start, start + int(s.lens[i])
	}
	start := 0
	if i > 0 {
		start = int(s.ends[i-1])
	}
	return start, int(s.ends[i])
}

// mid returns the UIDL of message index i (0-based) without the common
// prefix and suffix.
func (s *snapshot) mid(i int) string {
	start, _ := s.span(i)
	n := s.ulen
	if s.ulens != nil {
		n = int(s.ulens[i])
	}
	return s.data[start : start+n]
}

// uidl returns the UIDL of message index i.
func (s *snapshot) uidl(i int) string {
	if s.prefix == "" && s.suffix == "" {
		return s.mid(i)
	}
	return s.prefix + s.mid(i) + s.suffix
}

// writeUIDL writes the UIDL of message index i without building it.
func (s *snapshot) writeUIDL(w *bufio.Writer, i int) {
	w.WriteString(s.prefix)
	w.WriteString(s.mid(i))
	w.WriteString(s.suffix)
}

// commonAffixes returns the longest prefix and suffix shared by all UIDLs,
// not overlapping in the shortest one.
func commonAffixes(msgs []backends.Message) (string, string) {
	if len(msgs) == 0 {
		return "", ""
	}
	pre, suf := msgs[0].UIDL, msgs[0].UIDL
	short := len(pre)
	for _, m := range msgs[1:] {
		u := m.UIDL
		short = min(short, len(u))
		n := 0
		for n < len(pre) && n < len(u) && pre[n] == u[n] {
			n++
		}
		pre = pre[:n]
		n = 0
		for n < len(suf) && n < len(u) && suf[len(suf)-1-n] == u[len(u)-1-n] {
			n++
		}
		suf = suf[len(suf)-n:]
	}
	if len(pre)+len(suf) > short {
		suf = suf[len(suf)-(short-len(pre)):]
	}
	return pre, suf
}

// size returns the size of message index i.
func (s *snapshot) size(i int) int64 {
	if s.size32 != nil {
		return int64(s.size32[i])
	}
	return s.size64[i]
}

// msg rebuilds message index i as the backend listed it.
func (s *snapshot) msg(i int) backends.Message {
	u := s.uidl(i)
	ref := u
	if !s.refIsUIDL {
		start, end := s.span(i)
		ref = s.data[start+len(s.mid(i)) : end]
	}
	return backends.Message{UIDL: u, Size: s.size(i), Ref: ref}
}

func (s *snapshot) deleted(i int) bool { return s.dele[i>>6]&(1<<(i&63)) != 0 }
func (s *snapshot) markDeleted(i int)  { s.dele[i>>6] |= 1 << (i & 63) }
func (s *snapshot) resetDeleted()      { clear(s.dele) }

// stat counts and sizes the messages not marked as deleted.
func (s *snapshot) stat() (int, int64) {
	n, size := 0, int64(0)
	for i := 0; i < s.len(); i++ {
		if !s.deleted(i) {
			n++
			size += s.size(i)
		}
	}
	return n, size
}

// dupTables recycles the hash tables of duplicateUIDL.
var dupTables sync.Pool

var dupSeed = maphash.MakeSeed()

// duplicateUIDL returns the indexes of two messages with the same UIDL, or
// -1, -1. It uses an open-addressing table of message indexes (4 octets per
// slot, recycled), not a map of strings.
func duplicateUIDL(msgs []backends.Message) (int, int) {
	if len(msgs) < 2 {
		return -1, -1
	}
	n := 1
	for n < 2*len(msgs) {
		n <<= 1
	}
	var tab []uint32
	if p, ok := dupTables.Get().(*[]uint32); ok && cap(*p) >= n {
		tab = (*p)[:n]
		clear(tab)
	} else {
		tab = make([]uint32, n)
	}
	defer func() {
		if n <= 1<<20 { // do not keep a huge table alive
			dupTables.Put(&tab)
		}
	}()
	mask := uint64(n - 1)
	for i, m := range msgs {
		h := maphash.String(dupSeed, m.UIDL) & mask
		for {
			v := tab[h]
			if v == 0 {
				tab[h] = uint32(i + 1)
				break
			}
			if msgs[v-1].UIDL == m.UIDL {
				return int(v - 1), i
			}
			h = (h + 1) & mask
		}
	}
	return -1, -1
}
