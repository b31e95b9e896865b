package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/popgate/popgate/backends"
)

func TestSnapshotRoundTrip(t *testing.T) {
	cases := map[string][]backends.Message{
		"ref differs, fixed UIDL length": {
			{UIDL: "00000001000000AB", Size: 10, Ref: "1"},
			{UIDL: "00000002000000AB", Size: 0, Ref: "2"},
			{UIDL: "0000000A000000AB", Size: 77, Ref: "10"},
		},
		"ref equals UIDL, variable length": {
			{UIDL: "a", Size: 1, Ref: "a"},
			{UIDL: strings.Repeat("z", 70), Size: 2, Ref: strings.Repeat("z", 70)},
			{UIDL: "mem3", Size: 3, Ref: "mem3"},
		},
		"sizes over 4 GiB, empty ref": {
			{UIDL: "x", Size: math.MaxUint32 + 5, Ref: ""},
			{UIDL: "yy", Size: 7, Ref: "r"},
		},
		"one message": {{UIDL: "only", Size: 4, Ref: "9"}},
		"one UIDL a prefix of another": {
			{UIDL: "a", Size: 1, Ref: "a"},
			{UIDL: "ab", Size: 2, Ref: "ab"},
			{UIDL: "cab", Size: 3, Ref: "cab"},
		},
		"fixed entries (memory backend)": {
			{UIDL: "mem00000001", Size: 5, Ref: "mem00000001"},
			{UIDL: "mem00000002", Size: 6, Ref: "mem00000002"},
		},
		"ref over 255 octets": {
			{UIDL: "u1", Size: 5, Ref: strings.Repeat("r", 300)},
			{UIDL: "u2", Size: 6, Ref: "short"},
			{UIDL: "u3", Size: 7, Ref: ""},
		},
		"empty": nil,
	}
	for name, msgs := range cases {
		t.Run(name, func(t *testing.T) {
			s, err := newSnapshot(msgs)
			if err != nil {
				t.Fatal(err)
			}
			if s.len() != len(msgs) {
				t.Fatalf("len %d, want %d", s.len(), len(msgs))
			}
			var total int64
			var list bytes.Buffer
			w := bufio.NewWriter(&list)
			for i := range msgs {
				s.writeUIDL(w, i)
				w.WriteByte(' ')
			}
			w.Flush()
			var want strings.Builder
			for _, m := range msgs {
				want.WriteString(m.UIDL + " ")
			}
			if list.String() != want.String() {
				t.Errorf("writeUIDL wrote %q, want %q", list.String(), want.String())
			}
			for i, m := range msgs {
				if got := s.msg(i); got != m {
					t.Errorf("msg(%d) = %+v, want %+v", i, got, m)
				}
				if s.uidl(i) != m.UIDL || s.size(i) != m.Size {
					t.Errorf("uidl/size(%d) = %q/%d", i, s.uidl(i), s.size(i))
				}
				total += m.Size
			}
			if n, size := s.stat(); n != len(msgs) || size != total {
				t.Errorf("stat = %d %d, want %d %d", n, size, len(msgs), total)
			}
			if len(msgs) > 1 {
				s.markDeleted(1)
				if !s.deleted(1) || s.deleted(0) {
					t.Error("marks wrong after markDeleted(1)")
				}
				if n, size := s.stat(); n != len(msgs)-1 || size != total-msgs[1].Size {
					t.Errorf("stat after DELE = %d %d", n, size)
				}
				s.resetDeleted()
				if s.deleted(1) {
					t.Error("mark kept after resetDeleted")
				}
			}
		})
	}
}

func TestSnapshotMarksBeyond64(t *testing.T) {
	var msgs []backends.Message
	for i := 0; i < 200; i++ {
		msgs = append(msgs, backends.Message{UIDL: fmt.Sprintf("u%d", i), Size: int64(i), Ref: fmt.Sprint(i)})
	}
	s, err := newSnapshot(msgs)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs { // 200 entries of varying length: 4 index blocks
		if got := s.msg(i); got != m {
			t.Fatalf("msg(%d) = %+v, want %+v", i, got, m)
		}
	}
	for _, i := range []int{0, 63, 64, 127, 199} {
		s.markDeleted(i)
	}
	for i := range msgs {
		want := i == 0 || i == 63 || i == 64 || i == 127 || i == 199
		if s.deleted(i) != want {
			t.Errorf("deleted(%d) = %v", i, !want)
		}
	}
}

// TestSnapshotRejects keeps the guarantees clients rely on (RFC 1939 §7).
func TestSnapshotRejects(t *testing.T) {
	many := func(dupAt int) []backends.Message {
		var m []backends.Message
		for i := 0; i < 5000; i++ {
			m = append(m, backends.Message{UIDL: fmt.Sprintf("%08X", i), Size: 1, Ref: fmt.Sprint(i)})
		}
		m[dupAt].UIDL = m[17].UIDL
		return m
	}
	cases := map[string][]backends.Message{
		"empty UIDL":     {{UIDL: "", Size: 1}},
		"long UIDL":      {{UIDL: strings.Repeat("a", 71), Size: 1}},
		"space in UIDL":  {{UIDL: "a b", Size: 1}},
		"DEL in UIDL":    {{UIDL: "a\x7f", Size: 1}},
		"8-bit UIDL":     {{UIDL: "caf\xc3\xa9", Size: 1}},
		"negative size":  {{UIDL: "a", Size: -1}},
		"duplicate":      {{UIDL: "a", Size: 1}, {UIDL: "b", Size: 1}, {UIDL: "a", Size: 2}},
		"duplicate late": many(4999),
	}
	for name, msgs := range cases {
		if _, err := newSnapshot(msgs); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := newSnapshot(many(17)); err != nil { // no duplicate: 17 replaced by itself
		t.Errorf("unique UIDLs rejected: %v", err)
	}
}

func TestCommonAffixes(t *testing.T) {
	msgs := []backends.Message{{UIDL: "00000001000000AB"}, {UIDL: "000003E8000000AB"}, {UIDL: "00000010000000AB"}}
	pre, suf := commonAffixes(msgs)
	if pre != "00000" || suf != "000000AB" {
		t.Errorf("got %q %q", pre, suf)
	}
	s, err := newSnapshot(msgs)
	if err != nil {
		t.Fatal(err)
	}
	if s.data != "0013E8010" {
		t.Errorf("data %q holds more than the middles", s.data)
	}
}
