package migration

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// ValidUIDL reports whether s can be a UIDL: 1 to 70 octets in 0x21–0x7E
// (RFC 1939 §7).
func ValidUIDL(s string) bool {
	if len(s) < 1 || len(s) > 70 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7E {
			return false
		}
	}
	return true
}

// Stats counts what Match did.
type Stats struct {
	Messages  int // messages in the new snapshot
	Matched   int // presented under an old UIDL from the map
	XUIDL     int // presented under their uidl_header value
	Ambiguous int // whose key matches several old UIDLs or is shared by several new messages: neither gets an old UIDL
	Altered   int // own UIDL changed because it equals an old UIDL (or one presented for another message)
	OldLeft   int // map entries no message matched (deleted since the capture, or ambiguous)
}

// emptyKey is the key of a message with none of KeyFields: never matched.
var emptyKey = MatchKey(nil)

// Match decides the UIDL each message is presented under.
//
//   - xuidl (nil, or one value per message: "" for none) is the uidl_header
//     value; a valid one that no other message of the snapshot carries is
//     the message's UIDL.
//   - Otherwise, when the message's key (keys, one per message) matches
//     exactly one entry of old and no other message of the snapshot has the
//     same key, the message gets that entry's old UIDL. A key matching
//     several old UIDLs, or shared by several new messages, matches none:
//     UIDLs stay unique, and no new message can hide behind an old UIDL the
//     client saw for another message (counted in Stats.Ambiguous).
//   - Every other message keeps own (its backend UIDL), altered
//     deterministically (AlteredUIDL) when it equals an old UIDL or one
//     presented for another message, so that a client never skips new mail
//     because both servers used the same UIDL format.
//
// The result has one UIDL per message, all distinct and valid.
func Match(own []string, keys []Key, xuidl []string, old *Map) ([]string, Stats) {
	n := len(own)
	out := make([]string, n)
	st := Stats{Messages: n}
	taken := make(map[string]bool, n)

	if xuidl != nil {
		count := make(map[string]int)
		for _, v := range xuidl {
			if ValidUIDL(v) {
				count[v]++
			}
		}
		for i, v := range xuidl {
			if ValidUIDL(v) && count[v] == 1 {
				out[i] = v
				taken[v] = true
				st.XUIDL++
			}
		}
	}

	oldSet := map[string]bool{}
	if old != nil && keys != nil {
		byKey := make(map[Key][]string, len(old.Entries))
		for _, e := range old.Entries {
			oldSet[e.UIDL] = true
			if k, ok := ParseKey(e.Key); ok && k != emptyKey {
				byKey[k] = append(byKey[k], e.UIDL)
			}
		}
		newCount := make(map[Key]int, n)
		for i, k := range keys {
			if out[i] == "" {
				newCount[k]++
			}
		}
		used := 0
		for i, k := range keys {
			if out[i] != "" || k == emptyKey {
				continue
			}
			olds := byKey[k]
			switch {
			case len(olds) == 0:
			case len(olds) == 1 && newCount[k] == 1 && !taken[olds[0]]:
				out[i] = olds[0]
				taken[olds[0]] = true
				st.Matched++
				used++
			default:
				st.Ambiguous++
			}
		}
		st.OldLeft = len(old.Entries) - used
	}

	for i, u := range own {
		if out[i] != "" {
			continue
		}
		if !taken[u] && !oldSet[u] {
			out[i] = u
			taken[u] = true
			continue
		}
		alt := AlteredUIDL(u)
		for j := 2; taken[alt] || oldSet[alt]; j++ { // never seen in practice: a 124-bit collision
			alt = AlteredUIDL(u + "#" + strconv.Itoa(j))
		}
		out[i] = alt
		taken[alt] = true
		st.Altered++
	}
	return out, st
}

// AlteredUIDL is the UIDL presented for a message whose own UIDL u is
// already an old one: "N" and 31 hex digits of a digest of u, stable across
// sessions.
func AlteredUIDL(u string) string {
	sum := sha256.Sum256([]byte("popgate-uidl-altered\x00" + u))
	return "N" + hex.EncodeToString(sum[:])[:31]
}
