package demo

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/rs/zerolog"
)

func startStore(t *testing.T, opts Options) *Store {
	t.Helper()
	if opts.IMAPAddress == "" {
		opts.IMAPAddress = "127.0.0.1:0"
	}
	opts.Logger = zerolog.New(zerolog.NewTestWriter(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func login(t *testing.T, s *Store, user, pass string) *imapclient.Client {
	t.Helper()
	c, err := imapclient.DialInsecure(s.IMAPAddr(), nil)
	if err != nil {
		t.Fatalf("dial %s: %v", s.IMAPAddr(), err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatalf("LOGIN %s: %v", user, err)
	}
	return c
}

type fetched struct {
	uid  imap.UID
	size int64
	body []byte
}

func fetchAll(t *testing.T, c *imapclient.Client) []fetched {
	t.Helper()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	uids := imap.UIDSet{}
	uids.AddRange(1, 0) // 1:*
	bodySection := &imap.FetchItemBodySection{Peek: true}
	msgs, err := c.Fetch(uids, &imap.FetchOptions{
		UID:         true,
		RFC822Size:  true,
		BodySection: []*imap.FetchItemBodySection{bodySection},
	}).Collect()
	if err != nil {
		t.Fatalf("UID FETCH: %v", err)
	}
	var out []fetched
	for _, m := range msgs {
		out = append(out, fetched{uid: m.UID, size: m.RFC822Size, body: m.FindBodySection(bodySection)})
	}
	return out
}

// An IMAP client sees the demo user's seeded messages byte for byte, with
// RFC822.SIZE equal to their length (what POP3 LIST will report).
func TestSeededMailboxOverIMAP(t *testing.T) {
	s := startStore(t, Options{})
	c := login(t, s, DemoUser, DemoPassword)
	caps, err := c.Capability().Wait()
	if err != nil {
		t.Fatal(err)
	}
	// popgate's delete policies rely on UID EXPUNGE and MOVE.
	for _, want := range []imap.Cap{imap.CapUIDPlus, imap.CapMove} {
		if !caps.Has(want) {
			t.Errorf("capability %s missing: %v", want, caps)
		}
	}
	got := fetchAll(t, c)
	want := Samples()
	if len(got) != len(want) {
		t.Fatalf("INBOX has %d messages, want %d", len(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		if g.size != int64(len(w.Raw)) {
			t.Errorf("%s: RFC822.SIZE %d, want %d", w.Name, g.size, len(w.Raw))
		}
		if !bytes.Equal(g.body, w.Raw) {
			t.Errorf("%s: BODY[] differs from the seeded bytes:\n got %q\nwant %q", w.Name, g.body, w.Raw)
		}
	}
}

// The samples cover what a POP3 gateway must get right.
func TestSamplesAreRealistic(t *testing.T) {
	byName := map[string][]byte{}
	for _, m := range Samples() {
		byName[m.Name] = m.Raw
		if bytes.Contains(bytes.ReplaceAll(m.Raw, []byte("\r\n"), nil), []byte("\n")) ||
			bytes.Contains(bytes.ReplaceAll(m.Raw, []byte("\r\n"), nil), []byte("\r")) {
			t.Errorf("%s: bare CR or LF; messages must use CRLF", m.Name)
		}
		if !bytes.Contains(m.Raw, []byte("\r\n\r\n")) {
			t.Errorf("%s: no header/body separator", m.Name)
		}
	}
	if !bytes.Contains(byName["dot-lines"], []byte("\r\n.\r\n")) || !bytes.Contains(byName["dot-lines"], []byte("\r\n..")) {
		t.Error("dot-lines: needs a line that is a lone dot and one starting with dots")
	}
	if !bytes.Contains(byName["8bit"], []byte("Content-Transfer-Encoding: 8bit")) || !bytes.Contains(byName["8bit"], []byte("Köln")) {
		t.Error("8bit: needs an 8bit UTF-8 body")
	}
	if !bytes.Contains(byName["attachment"], []byte("multipart/mixed")) || !bytes.Contains(byName["attachment"], []byte("Content-Transfer-Encoding: base64")) {
		t.Error("attachment: needs a multipart/mixed message with a base64 part")
	}
}

func TestWrongPasswordRejected(t *testing.T) {
	s := startStore(t, Options{})
	c, err := imapclient.DialInsecure(s.IMAPAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(DemoUser, "not-the-password").Wait(); err == nil {
		t.Fatal("LOGIN with a wrong password succeeded")
	}
}

// AddUser and Append give tests their own maildrops; users do not see each
// other's mail.
func TestAddUserAppend(t *testing.T) {
	s := startStore(t, Options{NoSeed: true})
	if err := s.AddUser("alice", "a-secret"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddUser("bob", "b-secret"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddUser("alice", "again"); err == nil {
		t.Error("AddUser of an existing user succeeded")
	}
	raw := []byte("Subject: hi\r\n\r\nhello alice\r\n")
	if err := s.Append("alice", raw); err != nil {
		t.Fatal(err)
	}
	if err := s.Append("nobody", raw); err == nil {
		t.Error("Append to an unknown user succeeded")
	}

	got := fetchAll(t, login(t, s, "alice", "a-secret"))
	if len(got) != 1 || !bytes.Equal(got[0].body, raw) || got[0].size != int64(len(raw)) {
		t.Errorf("alice's INBOX: %+v; want the one appended message", got)
	}
	if got := fetchAll(t, login(t, s, "bob", "b-secret")); len(got) != 0 {
		t.Errorf("bob's INBOX has %d messages, want 0", len(got))
	}

	c, err := imapclient.DialInsecure(s.IMAPAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(DemoUser, DemoPassword).Wait(); err == nil {
		t.Error("NoSeed store still has the demo user")
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:143", "example.org:143"} {
		s, err := Start(context.Background(), Options{IMAPAddress: addr, NoSeed: true})
		if err == nil {
			s.Close()
			t.Errorf("Start(%q) succeeded; want a loopback-only error", addr)
		} else if !strings.Contains(err.Error(), "loopback") {
			t.Errorf("Start(%q): %v; want a loopback-only error", addr, err)
		}
	}
}
