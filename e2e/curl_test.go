package e2e

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// curl runs curl against a POP3 URL path on addr as user and returns its
// output. Every curl invocation is one POP3 session ending with QUIT.
func curl(t *testing.T, addr, user, pass, path string, args ...string) []byte {
	t.Helper()
	dir := t.TempDir()
	// The credentials go through a netrc file, not the command line.
	host, port := splitHostPort(addr)
	netrc := fmt.Sprintf("machine %s login %s password %s\n", host, user, pass)
	writeFile(t, dir+"/netrc", netrc, 0o600)
	all := append([]string{"-sS", "--max-time", "60", "--netrc-file", dir + "/netrc"}, args...)
	all = append(all, fmt.Sprintf("pop3://%s:%s/%s", host, port, path))
	out, stderr, err := runClient(t, dir, nil, "curl", all...)
	if err != nil {
		t.Fatalf("curl %s: %v: %s", strings.Join(args, " "), err, stderr)
	}
	return out
}

// uidlLines parses "n uidl" lines (curl prints UIDL's multi-line body).
func uidlLines(t *testing.T, out []byte) []string {
	t.Helper()
	var u []string
	for _, l := range strings.Split(strings.TrimRight(string(out), "\r\n"), "\r\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 2 || f[0] != fmt.Sprint(len(u)+1) {
			t.Fatalf("malformed UIDL line %q in %q", l, out)
		}
		u = append(u, f[1])
	}
	return u
}

// curl: LIST sizes, RETR n byte for byte, -X UIDL equal to Dovecot's own
// POP3 UIDLs and stable across sessions, -X DELE removing exactly that
// message upstream, and a message another client flagged \Deleted surviving.
func TestCurl(t *testing.T) {
	require(t, "curl")
	const user = "e2e-curl"
	pass := newUser(t, user)
	msgs := corpus()
	uids := appendAll(t, user, msgs)
	validity, _ := upstream(t, user)
	g := startGateway(t, pass)

	// LIST (RFC 1939 §5): one line per message with its exact size.
	var want strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&want, "%d %d\r\n", i+1, len(m))
	}
	if got := curl(t, g.addr, user, pass, ""); string(got) != want.String() {
		t.Errorf("LIST:\n got %q\nwant %q", got, want.String())
	}

	// RETR n: byte for byte what was APPENDed (curl undoes dot-stuffing).
	for i, m := range msgs {
		if got := curl(t, g.addr, user, pass, fmt.Sprint(i+1)); !bytes.Equal(got, m) {
			t.Errorf("RETR %d differs:\n got %q\nwant %q", i+1, clip(got), clip(m))
		}
	}

	// UIDL: Dovecot's format, the same as Dovecot's own POP3 gives for the
	// same mailbox, and the same in the next session.
	u1 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL"))
	var wantU []string
	for _, uid := range uids {
		wantU = append(wantU, uidl(uid, validity))
	}
	if strings.Join(u1, " ") != strings.Join(wantU, " ") {
		t.Errorf("UIDL = %v, want %v", u1, wantU)
	}
	if native := uidlLines(t, curl(t, dc.POP3Addr(), user, pass, "", "-X", "UIDL")); strings.Join(u1, " ") != strings.Join(native, " ") {
		t.Errorf("UIDL = %v; Dovecot's own POP3 says %v", u1, native)
	}
	if u2 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL")); strings.Join(u1, " ") != strings.Join(u2, " ") {
		t.Errorf("UIDLs changed between sessions: %v then %v", u1, u2)
	}

	// Another IMAP client flags message 1 \Deleted; then DELE 2 (now listed
	// as 1) through the gateway, which curl follows with QUIT.
	flagDeleted(t, user, uids[0])
	num := "1"
	if *reference { // Dovecot's own POP3 still lists \Deleted messages
		num = "2"
	}
	curl(t, g.addr, user, pass, num, "-X", "DELE", "-I")
	_, up := upstream(t, user)
	var left []imap.UID
	for _, m := range up {
		left = append(left, m.UID)
		if m.UID == uids[0] && !m.has(imap.FlagDeleted) {
			t.Errorf("message 1 lost its \\Deleted flag")
		}
	}
	wantLeft := append([]imap.UID{uids[0]}, uids[2:]...)
	if fmt.Sprint(left) != fmt.Sprint(wantLeft) {
		t.Errorf("upstream UIDs after DELE of UID %d: %v, want %v (the \\Deleted-flagged UID %d must survive)", uids[1], left, wantLeft, uids[0])
	}

	// The remaining messages keep their UIDLs, renumbered.
	if !*reference {
		u3 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL"))
		if strings.Join(u3, " ") != strings.Join(wantU[2:], " ") {
			t.Errorf("UIDL after the deletion = %v, want %v", u3, wantU[2:])
		}
	}
}

// chunkEdges builds a message of about 2.5 MB whose octet 1 MiB begins a
// line that starts with a dot, and whose CRLF at 2 MiB is split across
// that boundary (CR the last octet before it): where a backend that
// streams in 1 MiB parts hands the proxy a new piece.
func chunkEdges() []byte {
	var b bytes.Buffer
	b.WriteString("From: edges@example.com\r\nTo: e2e@example.org\r\nSubject: chunk edges\r\n\r\n")
	fill := func(upto int) { // lines of x up to exactly offset upto
		for b.Len() < upto {
			n := min(upto-b.Len(), 100)
			if n < 3 {
				n = upto - b.Len()
				b.WriteString(strings.Repeat("y", n)) // joins the next line
				return
			}
			b.WriteString(strings.Repeat("x", n-2))
			b.WriteString("\r\n")
		}
	}
	fill(1<<20 - 50)
	fill(1 << 20)
	b.WriteString(".dot line at 1 MiB\r\n..two dots\r\n")
	fill(2<<20 - 200)
	b.WriteString(strings.Repeat("z", 2<<20-1-b.Len()))
	b.WriteString("\r\n.after the split CRLF\r\n")
	fill(2<<20 + 500<<10)
	return b.Bytes()
}

// curl retrieves a message larger than a streaming chunk byte for byte.
func TestCurlLargeMessage(t *testing.T) {
	require(t, "curl")
	const user = "e2e-curl-large"
	pass := newUser(t, user)
	msg := chunkEdges()
	if msg[1<<20-1] != '\n' || msg[1<<20] != '.' || msg[2<<20-1] != '\r' || msg[2<<20] != '\n' {
		t.Fatal("chunkEdges: boundaries not where intended")
	}
	appendAll(t, user, [][]byte{msg})
	g := startGateway(t, pass)
	if got, want := string(curl(t, g.addr, user, pass, "")), fmt.Sprintf("1 %d\r\n", len(msg)); got != want {
		t.Errorf("LIST = %q, want %q", got, want)
	}
	if got := curl(t, g.addr, user, pass, "1"); !bytes.Equal(got, msg) {
		i := 0
		for i < len(got) && i < len(msg) && got[i] == msg[i] {
			i++
		}
		t.Errorf("RETR of a %d-octet message: got %d octets, first difference at %d", len(msg), len(got), i)
	}
}
