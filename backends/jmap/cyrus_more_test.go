package jmap

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
)

func login(t *testing.T, b *Backend, d *cyrusDrop) (backends.Mailbox, []backends.Message) {
	t.Helper()
	mb, err := b.Login(context.Background(), d.Credentials())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mb.Close() })
	snap, err := mb.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return mb, snap
}

func numbered(n int) [][]byte {
	var out [][]byte
	for i := 0; i < n; i++ {
		out = append(out, []byte(fmt.Sprintf("X-Backendtest-Seq: %d\r\nSubject: message %d\r\n\r\nbody %d\r\n", i, i, i)))
	}
	return out
}

// Paging: many pages, several per request, in receivedAt order; UIDLs
// are the Email ids.
func TestCyrusPagedSnapshot(t *testing.T) {
	s := sharedCyrus(t)
	msgs := numbered(23)
	d := seedCyrus(t, s, msgs)
	b, err := New(d.config(backendtest.Policy{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	b.pageSize = 4
	mb, snap := login(t, b, d)
	if len(snap) != len(msgs) {
		t.Fatalf("%d messages, want %d", len(snap), len(msgs))
	}
	for i, m := range snap {
		r, err := mb.Open(context.Background(), m, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(r)
		r.Close()
		if !bytes.Equal(got, msgs[i]) {
			t.Fatalf("message %d: %q, want %q (seeding order)", i+1, got, msgs[i])
		}
		if m.UIDL[0] != 'M' || len(m.UIDL) != 25 {
			t.Errorf("UIDL %q: want Cyrus' Email id", m.UIDL)
		}
	}
}

// The snapshot cache: an unchanged mailbox is served from it; the
// session's own $seen moves it forward; another client's APPEND
// invalidates it.
func TestCyrusSnapshotCache(t *testing.T) {
	s := sharedCyrus(t)
	d := seedCyrus(t, s, numbered(5))
	b, err := New(d.config(backendtest.Policy{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mb, snap := login(t, b, d)
	r, _ := mb.Open(context.Background(), snap[0], -1)
	io.Copy(io.Discard, r)
	r.Close()
	if err := mb.Commit(context.Background(), []backends.Message{snap[4]}); err != nil {
		t.Fatal(err)
	}
	mb.Close()
	if h := b.cache.hits.Load(); h != 0 {
		t.Fatalf("hits %d", h)
	}
	_, snap2 := login(t, b, d)
	if h := b.cache.hits.Load(); h != 1 {
		t.Fatalf("after the session's own Email/set: hits %d, want 1", h)
	}
	if len(snap2) != 4 || snap2[0].UIDL != snap[0].UIDL || !refSeen(snap2[0].Ref) || refSeen(snap2[1].Ref) {
		t.Fatalf("cached snapshot %v", snap2)
	}
	if _, err := s.Append(d.user, "INBOX", []byte("Subject: new\r\n\r\nnew\r\n")); err != nil {
		t.Fatal(err)
	}
	_, snap3 := login(t, b, d)
	if h := b.cache.hits.Load(); h != 1 || len(snap3) != 5 {
		t.Fatalf("after an APPEND: hits %d, %d messages; want a fresh listing of 5", h, len(snap3))
	}
}

// Policy expunge on an Email that is in two mailboxes (Cyrus shows the
// same bytes as one Email): it leaves this mailbox only.
func TestCyrusExpungeKeepsOtherMailbox(t *testing.T) {
	s := sharedCyrus(t)
	msgs := numbered(2)
	d := seedCyrus(t, s, msgs)
	c, err := s.Dial(d.user)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Create("Archive", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := appendAt(c, "Archive", msgs[0], time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC), imap.FlagFlagged); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()
	b, err := New(d.config(backendtest.Policy{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mb, snap := login(t, b, d)
	if len(snap) != 2 {
		t.Fatalf("%d messages", len(snap))
	}
	if err := mb.Commit(context.Background(), snap); err != nil {
		t.Fatal(err)
	}
	st := d.State(t)
	if len(st) != 1 || st[0].Folder != "Archive" || !bytes.Equal(st[0].Raw, msgs[0]) {
		var where []string
		for _, x := range st {
			where = append(where, x.Folder)
		}
		t.Fatalf("after expunge: %d messages in %q; want only seq 0 in Archive", len(st), where)
	}
}

// mailbox: by name, and policy move to role:trash (the default folder).
func TestCyrusMailboxByNameMoveToTrash(t *testing.T) {
	s := sharedCyrus(t)
	u, _ := newCyrusUser(t, s)
	msgs := numbered(3)
	for _, m := range msgs {
		if _, err := s.Append(u, "Scans", m); err != nil {
			t.Fatal(err)
		}
	}
	d := &cyrusDrop{s: s, user: u, pass: s.Password(u)}
	cfg := d.config(backendtest.Policy{Name: "move"})
	cfg.Mailbox = "Scans"
	b, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mb, snap := login(t, b, d)
	if len(snap) != 3 {
		t.Fatalf("%d messages in Scans", len(snap))
	}
	if err := mb.Commit(context.Background(), snap[:1]); err != nil {
		t.Fatal(err)
	}
	where := map[string]int{}
	for _, x := range d.State(t) {
		where[x.Folder]++
	}
	if where["Scans"] != 2 || where["Trash"] != 1 {
		t.Fatalf("after move: %v", where)
	}
}
