package imap

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
)

// listSince brings old, the cached listing of this maildrop, up to the
// mailbox as sel shows it, asking only for what changed: a poll that
// finds new mail, or finds the messages it deleted last time gone, costs a
// few lines instead of the whole UID FETCH 1:*. It returns nil (the
// caller then lists everything) when it cannot prove the result equal to
// a full listing:
//
//   - UIDVALIDITY must be the same (RFC 3501 §2.3.1.1) and UIDNEXT and
//     HIGHESTMODSEQ not lower;
//   - flag changes of the messages old knew: UID FETCH 1:<old UIDNEXT-1>
//     (UID RFC822.SIZE FLAGS) (CHANGEDSINCE <old HIGHESTMODSEQ>), RFC 7162
//     §3.1.4.1 (every flag change raises a message's mod-sequence), which
//     hides or shows a message (\Deleted, the delete keyword) and updates
//     its \Seen bit;
//   - new messages: UID FETCH <old UIDNEXT>:<UIDNEXT-1> (UID RFC822.SIZE
//     FLAGS), a bounded range (never "n:*", which always names the last
//     message, RFC 3501 §6.4.8);
//   - expunges (CONDSTORE has no word for them): when EXISTS is not the
//     old count plus the new messages, UID SEARCH UID 1:<old UIDNEXT-1>
//     (RETURN (ALL) with ESEARCH, RFC 4731) says which of old's messages
//     are left;
//
// and then the messages present (old ones left plus new ones, hidden or
// not) must number exactly EXISTS. Sizes never change (RFC 3501 §2.3.4).
// A NO or BAD to any of these commands is returned as it is (the caller
// then lists everything); a broken connection is an error.
func (m *Mailbox) listSince(old *snapEntry, sel *imap.SelectData) (*snapEntry, error) {
	uidNext := uint32(sel.UIDNext)
	if old.uidValidity != sel.UIDValidity || uidNext < old.uidNext || sel.HighestModSeq < old.modSeq {
		return nil, nil
	}
	e := &snapEntry{uidValidity: sel.UIDValidity, uidNext: uidNext, exists: sel.NumMessages, modSeq: sel.HighestModSeq}
	uids, sizes, seen := old.unpack()
	hidden := make([]bool, len(uids))

	// Flag changes of old's messages: this also finds one that was
	// hidden when old was listed and is shown now (\Deleted removed).
	var shown []listed
	if old.uidNext > 1 && sel.HighestModSeq > old.modSeq {
		changed, err := m.fetchListed(imap.UIDRange{Start: 1, Stop: imap.UID(old.uidNext - 1)}, old.modSeq)
		if err != nil {
			return nil, err
		}
		for _, c := range changed {
			i, ok := slices.BinarySearch(uids, c.uid)
			switch {
			case ok:
				hidden[i] = c.hidden
				seen[i] = c.seen
			case !c.hidden:
				shown = append(shown, c)
			}
		}
	}
	// New messages.
	var added []listed
	if uidNext > old.uidNext {
		var err error
		added, err = m.fetchListed(imap.UIDRange{Start: imap.UID(old.uidNext), Stop: imap.UID(uidNext - 1)}, 0)
		if err != nil {
			return nil, err
		}
		added = slices.DeleteFunc(added, func(c listed) bool { return c.uid < old.uidNext || c.uid >= uidNext })
	}
	// Messages present: the old ones (listed, or hidden then: old.exists
	// counts both) and the new ones. More than EXISTS is impossible; fewer
	// means expunges, asked about when there are any to find.
	present := int64(old.exists) + int64(len(added))
	if present != int64(sel.NumMessages) {
		if present < int64(sel.NumMessages) || old.uidNext <= 1 {
			return nil, nil
		}
		left, err := m.searchUIDs(imap.UIDRange{Start: 1, Stop: imap.UID(old.uidNext - 1)})
		if err != nil {
			return nil, err
		}
		if left.count()+int64(len(added)) != int64(sel.NumMessages) {
			return nil, nil
		}
		// Drop old's listed messages that are gone; the messages hidden
		// when old was listed are not in uids, and shown ones must be left.
		shown = slices.DeleteFunc(shown, func(c listed) bool { return !left.contains(c.uid) })
		k := 0
		for i := range uids {
			if left.contains(uids[i]) {
				uids[k], sizes[k], seen[k], hidden[k] = uids[i], sizes[i], seen[i], hidden[i]
				k++
			}
		}
		uids, sizes, seen, hidden = uids[:k], sizes[:k], seen[:k], hidden[:k]
	}

	// The new listing, in UID order: old's messages still shown, the
	// shown-again ones and the new ones that are not hidden.
	extra := append(shown, added...)
	extra = slices.DeleteFunc(extra, func(c listed) bool { return c.hidden })
	slices.SortFunc(extra, func(a, b listed) int { return cmp.Compare(a.uid, b.uid) })
	nu := make([]uint32, 0, len(uids)+len(extra))
	ns := make([]uint32, 0, len(uids)+len(extra))
	nseen := make([]bool, 0, len(uids)+len(extra))
	j := 0
	for i := range uids {
		for ; j < len(extra) && extra[j].uid < uids[i]; j++ {
			nu, ns, nseen = append(nu, extra[j].uid), append(ns, extra[j].size), append(nseen, extra[j].seen)
		}
		if j < len(extra) && extra[j].uid == uids[i] {
			j++ // listed already (a server repeating itself)
		}
		if !hidden[i] {
			nu, ns, nseen = append(nu, uids[i]), append(ns, sizes[i]), append(nseen, seen[i])
		}
	}
	for ; j < len(extra); j++ {
		nu, ns, nseen = append(nu, extra[j].uid), append(ns, extra[j].size), append(nseen, extra[j].seen)
	}
	e.pack(nu, ns, nseen)
	return e, nil
}

func errBadSize(uid imap.UID) error {
	return fmt.Errorf("UID %d: no or bad RFC822.SIZE", uid)
}

// listed is one message of a FETCH answer.
type listed struct {
	uid, size    uint32
	hidden, seen bool
}

// fetchListed runs UID FETCH r (UID RFC822.SIZE FLAGS), with CHANGEDSINCE
// (RFC 7162 §3.1.4.1) when changedSince is not 0, and returns the messages
// in UID order, each once (the first answer for a UID counts).
func (m *Mailbox) fetchListed(r imap.UIDRange, changedSince uint64) ([]listed, error) {
	cmd := m.c.Fetch(imap.UIDSet{r}, &imap.FetchOptions{UID: true, RFC822Size: true, Flags: true, ChangedSince: changedSince})
	defer cmd.Close()
	var out []listed
	for {
		msg := cmd.Next()
		if msg == nil {
			break
		}
		c := listed{}
		size := int64(-1)
		for {
			item := msg.Next()
			if item == nil {
				break
			}
			switch it := item.(type) {
			case imapclient.FetchItemDataUID:
				c.uid = uint32(it.UID)
			case imapclient.FetchItemDataRFC822Size:
				size = it.Size
			case imapclient.FetchItemDataFlags:
				c.hidden = m.skip(it.Flags)
				c.seen = slices.Contains(it.Flags, imap.FlagSeen)
			}
		}
		if c.uid == 0 {
			continue
		}
		switch {
		case size >= 0 && size <= math.MaxUint32:
			c.size = uint32(size)
		case !c.hidden: // a hidden message is never listed: its size is not needed
			return nil, errBadSize(imap.UID(c.uid))
		}
		out = append(out, c)
	}
	if err := cmd.Close(); err != nil {
		return nil, err
	}
	slices.SortStableFunc(out, func(a, b listed) int { return cmp.Compare(a.uid, b.uid) })
	return slices.CompactFunc(out, func(a, b listed) bool { return a.uid == b.uid }), nil
}

// searchUIDs returns the messages present in r (UID SEARCH, RFC 3501
// §6.4.4; RETURN (ALL), RFC 4731, when the server offers ESEARCH).
func (m *Mailbox) searchUIDs(r imap.UIDRange) (uidRanges, error) {
	var opts *imap.SearchOptions
	if m.caps.Has(imap.CapESearch) {
		opts = &imap.SearchOptions{ReturnAll: true}
	}
	data, err := m.c.UIDSearch(&imap.SearchCriteria{UID: []imap.UIDSet{{r}}}, opts).Wait()
	if err != nil {
		return nil, err
	}
	set, _ := data.All.(imap.UIDSet)
	return newUIDRanges(set, r), nil
}

// uidRanges is a set of UIDs as ascending, disjoint, non-adjacent ranges,
// never expanded (a server may answer 1:4294967295).
type uidRanges []imap.UIDRange

// newUIDRanges normalises set, clipped to within.
func newUIDRanges(set imap.UIDSet, within imap.UIDRange) uidRanges {
	var rs uidRanges
	for _, x := range set {
		lo, hi := x.Start, x.Stop
		if lo == 0 { // "*" (RFC 3501 §9 seq-number): the largest asked for
			lo = within.Stop
		}
		if hi == 0 {
			hi = within.Stop
		}
		if lo > hi {
			lo, hi = hi, lo
		}
		lo, hi = max(lo, within.Start), min(hi, within.Stop)
		if lo <= hi {
			rs = append(rs, imap.UIDRange{Start: lo, Stop: hi})
		}
	}
	slices.SortFunc(rs, func(a, b imap.UIDRange) int { return cmp.Compare(a.Start, b.Start) })
	out := rs[:0]
	for _, x := range rs {
		if n := len(out); n > 0 && uint64(x.Start) <= uint64(out[n-1].Stop)+1 {
			out[n-1].Stop = max(out[n-1].Stop, x.Stop)
			continue
		}
		out = append(out, x)
	}
	return out
}

// count is the number of UIDs in rs.
func (rs uidRanges) count() int64 {
	var n int64
	for _, x := range rs {
		n += int64(x.Stop) - int64(x.Start) + 1
	}
	return n
}

// contains reports whether uid is in rs.
func (rs uidRanges) contains(uid uint32) bool {
	i, _ := slices.BinarySearchFunc(rs, imap.UID(uid), func(x imap.UIDRange, u imap.UID) int {
		switch {
		case x.Stop < u:
			return -1
		case x.Start > u:
			return 1
		}
		return 0
	})
	return i < len(rs) && rs[i].Start <= imap.UID(uid) && imap.UID(uid) <= rs[i].Stop
}
