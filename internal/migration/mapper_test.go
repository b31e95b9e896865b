package migration

import (
	"context"
	"io"
	"testing"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
)

// countingMailbox counts the header reads of a store without HeaderFetcher.
type countingMailbox struct {
	backends.Mailbox
	opens int
}

func (c *countingMailbox) Open(ctx context.Context, m backends.Message, n int) (io.ReadCloser, error) {
	c.opens++
	return c.Mailbox.Open(ctx, m, n)
}

func TestMapper(t *testing.T) {
	ctx := context.Background()
	mem := memory.New()
	mem.AddUser("alice", "pw")
	msgs := testMessages()
	for _, m := range msgs {
		mem.Append("alice", m)
	}
	rt, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "mem"}}, map[string]backends.Backend{"mem": mem}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	store := Store{Dir: t.TempDir()}
	login := func() (*countingMailbox, string, []backends.Message) {
		t.Helper()
		mb, err := rt.Login(ctx, backends.Credentials{Username: "alice", Password: "pw"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mb.Close() })
		snap, err := mb.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return &countingMailbox{Mailbox: mb}, backends.MaildropID(mb, backends.Credentials{Username: "alice"}), snap
	}
	_, key, _ := login()
	if key != "mem/memory:alice" {
		t.Fatalf("maildrop key %q", key)
	}
	old := &Map{Maildrop: key, User: "alice", Entries: []Entry{
		{UIDL: "old.1", Key: MatchKey(msgs[0]).String()},
		{UIDL: "old.2", Key: MatchKey(msgs[1]).String()},
		{UIDL: "old.gone", Key: MatchKey([]byte("Message-ID: <gone@x>\r\n\r\n")).String()},
	}}
	if err := store.Save(old); err != nil {
		t.Fatal(err)
	}
	mp := NewMapper(store, map[string]string{"other": "X-UIDL"}, 0, zerolog.Nop())

	mb, key, snap := login()
	own3 := snap[2].UIDL
	got, err := mp.MapUIDLs(ctx, key, mb, snap)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].UIDL != "old.1" || got[1].UIDL != "old.2" || got[2].UIDL != own3 {
		t.Fatalf("UIDLs %q %q %q", got[0].UIDL, got[1].UIDL, got[2].UIDL)
	}
	if mb.opens != 3 {
		t.Errorf("first login read %d headers, want 3", mb.opens)
	}

	mb, key, snap = login()
	got, _ = mp.MapUIDLs(ctx, key, mb, snap)
	if mb.opens != 0 || got[0].UIDL != "old.1" {
		t.Errorf("unchanged mailbox: %d header reads (want 0), UIDL %q", mb.opens, got[0].UIDL)
	}

	mem.Append("alice", []byte("Message-ID: <new@x>\r\nSubject: new\r\n\r\nnew\r\n"))
	mb, key, snap = login()
	got, _ = mp.MapUIDLs(ctx, key, mb, snap)
	if mb.opens != 1 || len(got) != 4 || got[1].UIDL != "old.2" {
		t.Errorf("one new message: %d header reads (want 1), %d messages", mb.opens, len(got))
	}

	// A maildrop without a map and a backend without uidl_header: untouched.
	mem.AddUser("bob", "pw")
	mem.Append("bob", msgs[0])
	bmb, err := rt.Login(ctx, backends.Credentials{Username: "bob", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer bmb.Close()
	bsnap, _ := bmb.Snapshot(ctx)
	want := bsnap[0].UIDL
	cm := &countingMailbox{Mailbox: bmb}
	bgot, err := mp.MapUIDLs(ctx, "mem/memory:bob", cm, bsnap)
	if err != nil || bgot[0].UIDL != want || cm.opens != 0 {
		t.Errorf("no map: UIDL %q (want %q), %d reads, %v", bgot[0].UIDL, want, cm.opens, err)
	}

	// Forgetting the map is noticed at the next login.
	if err := store.Forget(key); err != nil {
		t.Fatal(err)
	}
	mb, key, snap = login()
	got, _ = mp.MapUIDLs(ctx, key, mb, snap)
	if got[0].UIDL == "old.1" {
		t.Error("old UIDL still presented after the map was forgotten")
	}
}

func TestMapperUIDLHeader(t *testing.T) {
	ctx := context.Background()
	mem := memory.New()
	mem.AddUser("carol", "pw")
	mem.Append("carol", []byte("X-UIDL: legacy-1\r\nSubject: a\r\n\r\na\r\n"))
	mem.Append("carol", []byte("Subject: b\r\n\r\nX-UIDL: in-body\r\n"))
	rt, _ := backends.NewRouter([]backends.Route{{Match: "*", Backend: "mem"}}, map[string]backends.Backend{"mem": mem}, zerolog.Nop())
	mb, err := rt.Login(ctx, backends.Credentials{Username: "carol", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	snap, _ := mb.Snapshot(ctx)
	own := snap[1].UIDL
	mp := NewMapper(Store{Dir: t.TempDir()}, map[string]string{"mem": "X-UIDL"}, 0, zerolog.Nop())
	got, err := mp.MapUIDLs(ctx, backends.MaildropID(mb, backends.Credentials{}), mb, snap)
	if err != nil {
		t.Fatal(err)
	}
	if got[0].UIDL != "legacy-1" || got[1].UIDL != own {
		t.Fatalf("UIDLs %q %q", got[0].UIDL, got[1].UIDL)
	}
}
