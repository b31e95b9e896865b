package migration

import (
	"fmt"
	"strings"
	"testing"
)

func hdr(mid, date, from, subj string) []byte {
	var b strings.Builder
	if mid != "" {
		fmt.Fprintf(&b, "Message-ID: %s\r\n", mid)
	}
	if date != "" {
		fmt.Fprintf(&b, "Date: %s\r\n", date)
	}
	if from != "" {
		fmt.Fprintf(&b, "From: %s\r\n", from)
	}
	if subj != "" {
		fmt.Fprintf(&b, "Subject: %s\r\n", subj)
	}
	b.WriteString("\r\nbody\r\n")
	return []byte(b.String())
}

func TestMatchKeySurvivesCopies(t *testing.T) {
	base := MatchKey(hdr("<a@x>", "Mon, 1 Jan 2024 10:00:00 +0000", "Alice <a@x>", "Report"))
	same := map[string][]byte{
		"folded and respaced":    []byte("Received: from somewhere\r\nmessage-id:   <a@x>\r\nDATE: Mon, 1 Jan 2024\r\n 10:00:00 +0000\r\nFrom: Alice\t<a@x>\r\nSubject:  Report \r\n\r\n"),
		"bare LF":                []byte("Message-ID: <a@x>\nDate: Mon, 1 Jan 2024 10:00:00 +0000\nFrom: Alice <a@x>\nSubject: Report\n\nother body"),
		"extra fields":           []byte("Return-Path: <a@x>\r\nX-Spam: yes\r\nMessage-ID: <a@x>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: Alice <a@x>\r\nSubject: Report\r\n\r\n"),
		"second Subject ignored": []byte("Message-ID: <a@x>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: Alice <a@x>\r\nSubject: Report\r\nSubject: other\r\n\r\n"),
	}
	for name, h := range same {
		if got := MatchKey(h); got != base {
			t.Errorf("%s: key %s, want %s", name, got, base)
		}
	}
	differ := map[string][]byte{
		"other Message-ID": hdr("<b@x>", "Mon, 1 Jan 2024 10:00:00 +0000", "Alice <a@x>", "Report"),
		"other Subject":    hdr("<a@x>", "Mon, 1 Jan 2024 10:00:00 +0000", "Alice <a@x>", "Report 2"),
		"field in body":    []byte("Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: Alice <a@x>\r\nSubject: Report\r\n\r\nMessage-ID: <a@x>\r\n"),
	}
	for name, h := range differ {
		if MatchKey(h) == base {
			t.Errorf("%s: same key as the original", name)
		}
	}
	if k, ok := ParseKey(base.String()); !ok || k != base {
		t.Errorf("ParseKey(String()) = %v %v", k, ok)
	}
}

func keysOf(hs ...[]byte) []Key {
	ks := make([]Key, len(hs))
	for i, h := range hs {
		ks[i] = MatchKey(h)
	}
	return ks
}

func oldMap(pairs ...any) *Map {
	m := &Map{Version: 1}
	for i := 0; i < len(pairs); i += 2 {
		m.Entries = append(m.Entries, Entry{UIDL: pairs[i].(string), Key: MatchKey(pairs[i+1].([]byte)).String()})
	}
	return m
}

func TestMatch(t *testing.T) {
	m1 := hdr("<1@x>", "d1", "f", "s1")
	m2 := hdr("<2@x>", "d2", "f", "s2")
	m3 := hdr("<3@x>", "d3", "f", "s3")
	dup := hdr("<dup@x>", "d", "f", "dup")
	noID := hdr("", "d4", "f", "scan")
	none := []byte("X-Foo: bar\r\n\r\n")

	t.Run("matched, new and deleted", func(t *testing.T) {
		old := oldMap("1.1", m1, "1.2", m2, "1.9", m3) // m3 deleted since the capture
		own := []string{"A", "B", "C"}
		out, st := Match(own, keysOf(m2, m1, hdr("<new@x>", "d", "f", "new")), nil, old)
		want := []string{"1.2", "1.1", "C"}
		if strings.Join(out, ",") != strings.Join(want, ",") {
			t.Fatalf("got %v, want %v", out, want)
		}
		if st.Matched != 2 || st.OldLeft != 1 || st.Altered != 0 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("own UIDL equal to an old one is altered", func(t *testing.T) {
		old := oldMap("00000001", m1)
		out, st := Match([]string{"00000009", "00000001"}, keysOf(m1, m2), nil, old)
		if out[0] != "00000001" || out[1] == "00000001" || out[1] != AlteredUIDL("00000001") || !ValidUIDL(out[1]) {
			t.Fatalf("got %v", out)
		}
		if st.Altered != 1 {
			t.Errorf("stats %+v", st)
		}
		again, _ := Match([]string{"00000009", "00000001"}, keysOf(m1, m2), nil, old)
		if again[1] != out[1] {
			t.Errorf("altered UIDL not stable: %s then %s", out[1], again[1])
		}
	})
	t.Run("duplicates match nothing", func(t *testing.T) {
		old := oldMap("o1", dup, "o2", dup, "o3", m1)
		out, st := Match([]string{"n1", "n2", "n3"}, keysOf(dup, dup, m1), nil, old)
		if out[0] != "n1" || out[1] != "n2" || out[2] != "o3" {
			t.Fatalf("got %v", out)
		}
		if st.Ambiguous != 2 {
			t.Errorf("stats %+v", st)
		}
		// one old copy, two new copies: neither new one takes it
		out, _ = Match([]string{"n1", "n2"}, keysOf(m2, m2), nil, oldMap("o", m2))
		if out[0] != "n1" || out[1] != "n2" {
			t.Fatalf("got %v", out)
		}
	})
	t.Run("no Message-ID still matches; no key fields never", func(t *testing.T) {
		old := oldMap("o1", noID, "o2", none)
		out, _ := Match([]string{"n1", "n2"}, keysOf(noID, none), nil, old)
		if out[0] != "o1" || out[1] != "n2" {
			t.Fatalf("got %v", out)
		}
	})
	t.Run("uidl_header", func(t *testing.T) {
		old := oldMap("o1", m1)
		x := []string{"legacy-7", "", "twice", "twice", "bad uidl", "o1"}
		own := []string{"n1", "n2", "n3", "n4", "n5", "n6"}
		out, st := Match(own, keysOf(m2, m1, m3, dup, noID, none), x, old)
		want := []string{"legacy-7", "n2", "n3", "n4", "n5", "o1"}
		// message 2 matches o1 by key, but o1 is already message 6's X-UIDL
		if strings.Join(out, ",") != strings.Join(want, ",") {
			t.Fatalf("got %v, want %v", out, want)
		}
		if st.XUIDL != 2 || st.Matched != 0 {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("always unique and valid", func(t *testing.T) {
		old := oldMap("a", m1, "b", m2)
		own := []string{"b", "a", "c"}
		out, _ := Match(own, keysOf(m3, dup, m1), []string{"c", "", ""}, old)
		seen := map[string]bool{}
		for _, u := range out {
			if seen[u] || !ValidUIDL(u) {
				t.Fatalf("not unique or invalid: %v", out)
			}
			seen[u] = true
		}
	})
}

func TestStore(t *testing.T) {
	s := Store{Dir: t.TempDir() + "/uidl"}
	if _, err := s.Load("corp/alice"); err != ErrNoMap {
		t.Fatalf("Load of nothing: %v", err)
	}
	m := &Map{Maildrop: "corp/alice", User: "alice", Server: "pop3://old:110", Entries: []Entry{{UIDL: "1.1", Key: MatchKey(nil).String()}}}
	if err := s.Save(m); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load("corp/alice")
	if err != nil || got.Messages != 1 || got.Entries[0].UIDL != "1.1" || got.User != "alice" {
		t.Fatalf("Load: %+v %v", got, err)
	}
	if _, err := s.Load("corp/bob"); err != ErrNoMap {
		t.Fatalf("another maildrop: %v", err)
	}
	if err := s.Forget("corp/alice"); err != nil {
		t.Fatal(err)
	}
	if err := s.Forget("corp/alice"); err != ErrNoMap {
		t.Fatalf("second Forget: %v", err)
	}
}
