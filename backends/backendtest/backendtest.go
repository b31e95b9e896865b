// Package backendtest is the conformance suite every backend runs: the
// behaviour the POP3 engine relies on (DESIGN invariants 1, 2, 4, 5, 7),
// checked against a real store through a Harness.
//
// A backend's tests call Run with a Harness that creates fresh maildrops
// seeded with the suite's messages, builds backends with a given delete
// policy, shows what the store holds, and acts as another client of it.
package backendtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
)

// Policy is a delete policy a backend is built with.
type Policy struct {
	Name    string // "expunge" (also ""), "move", "flag", "keep"
	Folder  string // for move
	Keyword string // for flag
}

// Harness connects the suite to one kind of store.
type Harness struct {
	// NewMaildrop creates a fresh, empty-but-for-msgs maildrop holding msgs
	// in this order (raw messages with CRLF line endings).
	NewMaildrop func(t *testing.T, msgs [][]byte) Maildrop
	// Policies are the delete policies the backend supports besides the
	// default; the suite checks each one it knows ("move", "flag", "keep").
	Policies []string
	// MarksSeen: a complete RETR sets the \Seen flag upstream, TOP never.
	MarksSeen bool
	// NoDeletedFlag: the store has no IMAP \Deleted flag that another
	// client could set without removing the message (JMAP: RFC 8621 keeps
	// no such flag; Cyrus hides or expunges such messages from JMAP
	// views). The cases that use Maildrop.FlagDeleted then leave those
	// steps out; everything else is checked the same way.
	NoDeletedFlag bool
}

// Maildrop is one seeded maildrop.
type Maildrop interface {
	// Backend returns a backend for this maildrop with the given policy.
	Backend(t *testing.T, p Policy) backends.Backend
	// Credentials are the maildrop user's valid credentials.
	Credentials() backends.Credentials
	// State lists every message in the store: the main mailbox (Folder "")
	// and any other folder (e.g. a move target), with raw content and flags.
	State(t *testing.T) []Stored
	// FlagDeleted makes another client flag the seeded message i
	// (0-based) \Deleted without expunging it. Not called when
	// Harness.NoDeletedFlag is set.
	FlagDeleted(t *testing.T, i int)
	// Expunge makes another client remove the seeded message i.
	Expunge(t *testing.T, i int)
	// Unreachable returns a backend whose store cannot be reached.
	Unreachable(t *testing.T) backends.Backend
}

// Stored is one message as the store holds it.
type Stored struct {
	Folder string   // "" for the maildrop's own mailbox
	Raw    []byte   // content with CRLF line endings
	Flags  []string // e.g. `\Seen`, `\Deleted`, `$POP3Deleted`
}

// HasFlag reports whether s carries flag (case-insensitive).
func (s Stored) HasFlag(flag string) bool {
	for _, f := range s.Flags {
		if strings.EqualFold(f, flag) {
			return true
		}
	}
	return false
}

var seqRe = regexp.MustCompile(`(?m)^X-Backendtest-Seq: (\d+)\r?$`)

// seq returns the suite's number of a stored message, -1 if none.
func seq(raw []byte) int {
	m := seqRe.FindSubmatch(raw)
	if m == nil {
		return -1
	}
	n := 0
	fmt.Sscan(string(m[1]), &n)
	return n
}

// Messages returns the suite's sample messages (CRLF line endings): plain,
// a dot-leading line, 8-bit UTF-8, multipart with an attachment, a long
// body, and one without a body.
func Messages() [][]byte {
	bodies := []string{
		"Subject: plain\r\nFrom: a@example.org\r\nTo: b@example.org\r\n\r\nHello.\r\nSecond line.\r\n",
		"Subject: dots\r\nFrom: a@example.org\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n",
		"Subject: =?UTF-8?Q?8bit_=C3=A9t=C3=A9?=\r\nFrom: a@example.org\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nÉté à Zürich — ünïcödé.\r\n",
		"Subject: multipart\r\nFrom: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\npreamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attachment.\r\n--b1\r\nContent-Type: application/octet-stream; name=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\n\r\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\r\n--b1--\r\n",
		"Subject: long\r\nFrom: a@example.org\r\n\r\n" + longBody(3000) + "last line without newline",
		"Subject: no body\r\nFrom: a@example.org\r\n\r\n",
	}
	out := make([][]byte, len(bodies))
	for i, b := range bodies {
		out[i] = []byte(fmt.Sprintf("X-Backendtest-Seq: %d\r\nMessage-ID: <bt%d@example.org>\r\n%s", i, i, b))
	}
	return out
}

func longBody(lines int) string {
	var b strings.Builder
	for i := 0; i < lines; i++ {
		fmt.Fprintf(&b, "line %04d of a long body, padded to be some way wide .........................\r\n", i)
	}
	return b.String()
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

// session logs in and takes the snapshot.
func session(t *testing.T, b backends.Backend, c backends.Credentials) (backends.Mailbox, []backends.Message) {
	t.Helper()
	mb, err := b.Login(ctx(t), c)
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	t.Cleanup(func() { mb.Close() })
	msgs, err := mb.Snapshot(ctx(t))
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	return mb, msgs
}

func read(t *testing.T, mb backends.Mailbox, m backends.Message, lines int) []byte {
	t.Helper()
	r, err := mb.Open(ctx(t), m, lines)
	if err != nil {
		t.Fatalf("Open(%s, %d): %v", m.UIDL, lines, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("reading %s: %v", m.UIDL, err)
	}
	return b
}

// bySeq maps the snapshot to the suite's message numbers by content.
func bySeq(t *testing.T, mb backends.Mailbox, msgs []backends.Message) map[int]backends.Message {
	t.Helper()
	out := map[int]backends.Message{}
	for _, m := range msgs {
		n := seq(read(t, mb, m, 0))
		if n < 0 {
			t.Fatalf("message %s has no X-Backendtest-Seq header", m.UIDL)
		}
		out[n] = m
	}
	return out
}

// inMain returns the seq numbers present in the main mailbox, and their
// stored form.
func inMain(st []Stored) map[int]Stored {
	out := map[int]Stored{}
	for _, s := range st {
		if s.Folder == "" {
			out[seq(s.Raw)] = s
		}
	}
	return out
}

func code(err error) backends.Code {
	c, _ := backends.ClientError(err)
	return c
}

// Run runs the whole suite.
func Run(t *testing.T, h Harness) {
	msgs := Messages()
	newDrop := func(t *testing.T) Maildrop { return h.NewMaildrop(t, msgs) }
	def := Policy{Name: "expunge"}

	t.Run("Login", func(t *testing.T) {
		t.Parallel()
		md := newDrop(t)
		b := md.Backend(t, def)
		mb, err := b.Login(ctx(t), md.Credentials())
		if err != nil {
			t.Fatalf("valid credentials: %v", err)
		}
		mb.Close()

		bad := md.Credentials()
		bad.Password += "-wrong"
		_, err = b.Login(ctx(t), bad)
		if !errors.Is(err, backends.ErrAuthFailed) || code(err) != backends.CodeAuth {
			t.Fatalf("wrong password: err %v, code %q; want ErrAuthFailed [AUTH]", err, code(err))
		}
		if strings.Contains(err.Error(), bad.Password) {
			t.Fatalf("error text holds the password: %v", err)
		}
		_, text := backends.ClientError(err)
		if text != backends.ErrAuthFailed.Text {
			t.Fatalf("client text %q, want the generic %q", text, backends.ErrAuthFailed.Text)
		}

		unknown := md.Credentials()
		unknown.Username = "nosuchuser" + unknown.Username
		if _, err := b.Login(ctx(t), unknown); code(err) != backends.CodeAuth {
			t.Fatalf("unknown user: %v, want [AUTH]", err)
		}

		_, err = md.Unreachable(t).Login(ctx(t), md.Credentials())
		if !errors.Is(err, backends.ErrUnavailable) || code(err) != backends.CodeSysTemp {
			t.Fatalf("unreachable store: err %v, code %q; want ErrUnavailable [SYS/TEMP]", err, code(err))
		}
	})

	t.Run("SnapshotAndContent", func(t *testing.T) {
		t.Parallel()
		md := newDrop(t)
		b := md.Backend(t, def)
		mb, snap := session(t, b, md.Credentials())
		if len(snap) != len(msgs) {
			t.Fatalf("snapshot has %d messages, want %d", len(snap), len(msgs))
		}
		uidls := map[string]bool{}
		for i, m := range snap {
			if len(m.UIDL) < 1 || len(m.UIDL) > 70 {
				t.Errorf("UIDL %q: length %d, want 1-70 (RFC 1939 §7)", m.UIDL, len(m.UIDL))
			}
			for _, ch := range []byte(m.UIDL) {
				if ch < 0x21 || ch > 0x7e {
					t.Errorf("UIDL %q: character %q outside 0x21-0x7E", m.UIDL, ch)
				}
			}
			if uidls[m.UIDL] {
				t.Errorf("UIDL %q not unique", m.UIDL)
			}
			uidls[m.UIDL] = true
			got := read(t, mb, m, -1)
			if int64(len(got)) != m.Size {
				t.Errorf("message %d: snapshot size %d, Open delivered %d octets", i+1, m.Size, len(got))
			}
			n := seq(got)
			if n < 0 || n >= len(msgs) {
				t.Fatalf("message %d: unknown content %q", i+1, got)
			}
			if !bytes.Equal(got, msgs[n]) {
				t.Errorf("message %d (seq %d): content differs\n got %q\nwant %q", i+1, n, got, msgs[n])
			}
			// Reading again gives the same octets.
			if again := read(t, mb, m, -1); !bytes.Equal(again, got) {
				t.Errorf("message %d: second RETR differs", i+1)
			}
		}
		if err := mb.Close(); err != nil {
			t.Fatal(err)
		}

		// Stable across sessions: same UIDLs, sizes and order.
		mb2, snap2 := session(t, b, md.Credentials())
		defer mb2.Close()
		if len(snap2) != len(snap) {
			t.Fatalf("second session: %d messages, first %d", len(snap2), len(snap))
		}
		for i := range snap {
			if snap[i].UIDL != snap2[i].UIDL || snap[i].Size != snap2[i].Size {
				t.Errorf("message %d: %s/%d then %s/%d across sessions", i+1, snap[i].UIDL, snap[i].Size, snap2[i].UIDL, snap2[i].Size)
			}
		}
	})

	t.Run("Top", func(t *testing.T) {
		t.Parallel()
		md := newDrop(t)
		mb, snap := session(t, md.Backend(t, def), md.Credentials())
		bs := bySeq(t, mb, snap)
		for n, raw := range msgs {
			m := bs[n]
			hdrEnd := bytes.Index(raw, []byte("\r\n\r\n")) + 4
			header, body := raw[:hdrEnd], raw[hdrEnd:]
			lines := strings.SplitAfter(string(body), "\r\n")
			if lines[len(lines)-1] == "" {
				lines = lines[:len(lines)-1]
			}
			for _, k := range []int{0, 1, 2, len(lines), len(lines) + 5, 1 << 30} {
				want := string(header) + strings.Join(lines[:min(k, len(lines))], "")
				if got := read(t, mb, m, k); string(got) != want {
					t.Errorf("seq %d TOP %d: got %d octets %q…, want %d octets %q…", n, k, len(got), trunc(got), len(want), trunc([]byte(want)))
				}
			}
		}
		// TOP leaves the message unseen, RETR (when the store marks) sees it.
		if h.MarksSeen {
			read(t, mb, bs[1], -1)
			if err := mb.Commit(ctx(t), nil); err != nil {
				t.Fatal(err)
			}
			st := inMain(md.State(t))
			for n := range msgs {
				if want := n == 1; st[n].HasFlag(`\Seen`) != want {
					t.Errorf("seq %d: \\Seen is %v, want %v (only the RETRieved one)", n, !want, want)
				}
			}
		}
	})

	t.Run("CommitRemovesExactlyTheMarked", func(t *testing.T) {
		t.Parallel()
		md := newDrop(t)
		flags := !h.NoDeletedFlag
		if flags {
			md.FlagDeleted(t, 4) // another client's \Deleted before the session
		}
		mb, snap := session(t, md.Backend(t, def), md.Credentials())
		if want := len(msgs) - btoi(flags); len(snap) != want {
			t.Fatalf("snapshot has %d messages, want %d (a message flagged \\Deleted is left out)", len(snap), want)
		}
		bs := bySeq(t, mb, snap)
		if _, ok := bs[4]; ok && flags {
			t.Fatal("message flagged \\Deleted is in the snapshot")
		}
		if flags {
			md.FlagDeleted(t, 5) // and one during the session
		}
		if err := mb.Commit(ctx(t), []backends.Message{bs[0], bs[2]}); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		mb.Close()
		st := inMain(md.State(t))
		for n := range msgs {
			_, present := st[n]
			if want := n != 0 && n != 2; present != want {
				t.Errorf("seq %d: present %v after commit, want %v", n, present, want)
			}
		}
		if flags && (!st[4].HasFlag(`\Deleted`) || !st[5].HasFlag(`\Deleted`)) {
			t.Errorf("other client's \\Deleted flags lost")
		}
		if st[1].HasFlag(`\Deleted`) || st[3].HasFlag(`\Deleted`) {
			t.Errorf("an unmarked message got \\Deleted")
		}
		_, snap2 := session(t, md.Backend(t, def), md.Credentials())
		if want := 2 + 2*btoi(!flags); len(snap2) != want {
			t.Errorf("next session sees %d messages, want %d", len(snap2), want)
		}
	})

	t.Run("ExpungedByAnotherClient", func(t *testing.T) {
		t.Parallel()
		md := newDrop(t)
		mb, snap := session(t, md.Backend(t, def), md.Credentials())
		bs := bySeq(t, mb, snap)
		md.Expunge(t, 1)
		_, err := mb.Open(ctx(t), bs[1], -1)
		if !errors.Is(err, backends.ErrMessageGone) {
			t.Fatalf("RETR of a message expunged meanwhile: %v, want ErrMessageGone", err)
		}
		if _, err := mb.Open(ctx(t), bs[1], 3); !errors.Is(err, backends.ErrMessageGone) {
			t.Fatalf("TOP of a message expunged meanwhile: %v, want ErrMessageGone", err)
		}
		// The session goes on: later messages keep their content (no
		// shifted sequence numbers).
		for _, n := range []int{2, 3} {
			if got := read(t, mb, bs[n], -1); !bytes.Equal(got, msgs[n]) {
				t.Fatalf("seq %d after another client's expunge: content differs", n)
			}
		}
		if err := mb.Commit(ctx(t), []backends.Message{bs[1], bs[3]}); err != nil {
			t.Fatalf("Commit with a vanished message: %v", err)
		}
		mb.Close()
		st := inMain(md.State(t))
		for n := range msgs {
			_, present := st[n]
			if want := n != 1 && n != 3; present != want {
				t.Errorf("seq %d: present %v, want %v", n, present, want)
			}
		}
	})

	t.Run("NothingChangesWithoutCommit", func(t *testing.T) {
		t.Parallel()
		md := newDrop(t)
		before := md.State(t)
		mb, snap := session(t, md.Backend(t, def), md.Credentials())
		read(t, mb, snap[0], 2)
		if err := mb.Commit(ctx(t), nil); err != nil {
			t.Fatalf("Commit(empty): %v", err)
		}
		mb.Close()
		mb2, snap2 := session(t, md.Backend(t, def), md.Credentials())
		read(t, mb2, snap2[1], 0)
		mb2.Close() // dropped session: no Commit
		if diff := compare(before, md.State(t)); diff != "" {
			t.Fatalf("store changed: %s", diff)
		}
	})

	for _, p := range h.Policies {
		switch p {
		case "move":
			t.Run("PolicyMove", func(t *testing.T) {
				t.Parallel()
				md := newDrop(t)
				pol := Policy{Name: "move", Folder: "Popped"}
				mb, snap := session(t, md.Backend(t, pol), md.Credentials())
				bs := bySeq(t, mb, snap)
				if err := mb.Commit(ctx(t), []backends.Message{bs[0], bs[3]}); err != nil {
					t.Fatalf("Commit: %v", err)
				}
				mb.Close()
				st := md.State(t)
				where := map[int][]string{}
				for _, s := range st {
					where[seq(s.Raw)] = append(where[seq(s.Raw)], s.Folder)
				}
				for n := range msgs {
					want := ""
					if n == 0 || n == 3 {
						want = "Popped"
					}
					if len(where[n]) != 1 || where[n][0] != want {
						t.Errorf("seq %d is in %q, want only in %q", n, where[n], want)
					}
				}
			})
		case "flag":
			t.Run("PolicyFlag", func(t *testing.T) {
				t.Parallel()
				md := newDrop(t)
				pol := Policy{Name: "flag", Keyword: "$POP3Deleted"}
				mb, snap := session(t, md.Backend(t, pol), md.Credentials())
				bs := bySeq(t, mb, snap)
				if err := mb.Commit(ctx(t), []backends.Message{bs[2]}); err != nil {
					t.Fatalf("Commit: %v", err)
				}
				mb.Close()
				st := inMain(md.State(t))
				if len(st) != len(msgs) {
					t.Fatalf("policy flag removed messages: %d left of %d", len(st), len(msgs))
				}
				for n := range msgs {
					if want := n == 2; st[n].HasFlag("$POP3Deleted") != want {
						t.Errorf("seq %d: keyword %v, want %v", n, !want, want)
					}
				}
				mb2, snap2 := session(t, md.Backend(t, pol), md.Credentials())
				if len(snap2) != len(msgs)-1 {
					t.Fatalf("next snapshot has %d messages, want the flagged one left out", len(snap2))
				}
				if _, ok := bySeq(t, mb2, snap2)[2]; ok {
					t.Fatal("flagged message still listed")
				}
			})
		case "keep":
			t.Run("PolicyKeep", func(t *testing.T) {
				t.Parallel()
				md := newDrop(t)
				before := md.State(t)
				pol := Policy{Name: "keep"}
				mb, snap := session(t, md.Backend(t, pol), md.Credentials())
				if err := mb.Commit(ctx(t), snap[:2]); err != nil {
					t.Fatalf("Commit: %v", err)
				}
				mb.Close()
				if diff := compare(before, md.State(t)); diff != "" {
					t.Fatalf("policy keep changed the store: %s", diff)
				}
				_, snap2 := session(t, md.Backend(t, pol), md.Credentials())
				if len(snap2) != len(snap) {
					t.Fatalf("next snapshot has %d messages, want %d", len(snap2), len(snap))
				}
			})
		default:
			t.Errorf("backendtest: unknown policy %q", p)
		}
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func trunc(b []byte) []byte {
	if len(b) > 60 {
		return b[len(b)-60:]
	}
	return b
}

// compare describes the differences between two states ("" if equal).
func compare(a, b []Stored) string {
	key := func(s Stored) string {
		f := append([]string(nil), s.Flags...)
		for i := range f {
			f[i] = strings.ToLower(f[i])
		}
		sort.Strings(f)
		return fmt.Sprintf("%s|%d|%s", s.Folder, seq(s.Raw), strings.Join(f, " "))
	}
	ks := func(st []Stored) []string {
		var out []string
		for _, s := range st {
			out = append(out, key(s))
		}
		sort.Strings(out)
		return out
	}
	x, y := ks(a), ks(b)
	if strings.Join(x, "\n") != strings.Join(y, "\n") {
		return fmt.Sprintf("before %q, after %q", x, y)
	}
	return ""
}
