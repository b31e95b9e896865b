package imap

import "testing"

// Issue 13 defect 6: isSeen runs after every complete RETR; it used to
// decode the listing from its start each time, so retrieving a whole
// maildrop was O(n²). Now a lookup decodes at most indexBlock entries,
// and still answers exactly.
func TestIsSeenDecodesOneBlock(t *testing.T) {
	const n = 100_000
	uids := make([]uint32, n)
	sizes := make([]uint32, n)
	seen := make([]bool, n)
	uid := uint32(0)
	for i := range uids {
		uid += 1 + uint32(i%7)*uint32(i%3) // gaps of several sizes
		uids[i], sizes[i], seen[i] = uid, uint32(i*31%5000), i%5 == 2
	}
	e := &snapEntry{}
	e.pack(uids, sizes, seen)
	for i, u := range uids {
		j, ok, decoded := e.find(u)
		if !ok || j != i {
			t.Fatalf("find(%d) = %d, %v; want %d", u, j, ok, i)
		}
		if decoded > indexBlock {
			t.Fatalf("find(%d) decoded %d entries, want at most %d", u, decoded, indexBlock)
		}
		if e.isSeen(u) != seen[i] {
			t.Fatalf("isSeen(%d) = %v, want %v", u, !seen[i], seen[i])
		}
		if i > 0 && uids[i-1] != u-1 {
			if _, ok, _ := e.find(u - 1); ok {
				t.Fatalf("find(%d) found a UID not listed", u-1)
			}
		}
	}
	if _, ok, _ := e.find(uid + 1); ok {
		t.Fatal("found a UID after the last")
	}
	if _, ok, _ := (&snapEntry{}).find(1); ok {
		t.Fatal("found a UID in an empty entry")
	}
}
