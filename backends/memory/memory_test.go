package memory

import (
	"context"
	"errors"
	"io"
	"reflect"
	"testing"

	"github.com/popgate/popgate/backends"
)

func TestMailbox(t *testing.T) {
	ctx := context.Background()
	b := New()
	b.AddUser("u", "pw")
	raws := []string{"A: 1\r\n\r\nx\r\ny\r\n", "B: 2\r\n\r\n", "C: 3\n\nbare\n"}
	var uidls []string
	for _, r := range raws {
		uidls = append(uidls, b.Append("u", []byte(r)))
	}
	if _, err := b.Login(ctx, backends.Credentials{Username: "u", Password: "bad"}); !errors.Is(err, backends.ErrAuthFailed) {
		t.Fatalf("bad password: %v", err)
	}
	mb, err := b.Login(ctx, backends.Credentials{Username: "u", Password: "pw"})
	if err != nil {
		t.Fatal(err)
	}
	if got := backends.MaildropID(mb, backends.Credentials{Username: "u"}); got != "memory:u" {
		t.Fatalf("MaildropID = %q", got)
	}
	msgs, err := mb.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if m.UIDL != uidls[i] || m.Size != int64(len(raws[i])) {
			t.Fatalf("message %d = %+v", i+1, m)
		}
		rc, err := mb.Open(ctx, m, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		if string(got) != raws[i] {
			t.Fatalf("Open(%d) = %q", i+1, got)
		}
	}
	rc, _ := mb.Open(ctx, msgs[0], 1)
	if got, _ := io.ReadAll(rc); string(got) != "A: 1\r\n\r\nx\r\n" {
		t.Fatalf("TOP 1 1 = %q", got)
	}

	b.SetFaults(Faults{Break: true, BreakAfter: 3})
	rc, _ = mb.Open(ctx, msgs[0], -1)
	if got, err := io.ReadAll(rc); string(got) != "A: " || !errors.Is(err, ErrBroken) {
		t.Fatalf("broken reader gave %q, %v", got, err)
	}
	b.SetFaults(Faults{Commit: errors.New("no")})
	if err := mb.Commit(ctx, msgs[:1]); err == nil || len(b.UIDLs("u")) != 3 {
		t.Fatal("failed commit changed the store")
	}
	b.SetFaults(Faults{})
	if err := mb.Commit(ctx, []backends.Message{msgs[0], msgs[2]}); err != nil {
		t.Fatal(err)
	}
	if got := b.UIDLs("u"); !reflect.DeepEqual(got, []string{uidls[1]}) {
		t.Fatalf("after commit: %v", got)
	}
	if c := b.Commits(); len(c) != 1 || !reflect.DeepEqual(c[0].UIDLs, []string{uidls[0], uidls[2]}) {
		t.Fatalf("commits = %+v", c)
	}
	if _, err := mb.Open(ctx, msgs[0], -1); !errors.Is(err, backends.ErrMessageGone) {
		t.Fatalf("Open of a removed message: %v", err)
	}
	if b.OpenMailboxes() != 1 {
		t.Fatal("open mailbox not counted")
	}
	if err := mb.Close(); err != nil || b.OpenMailboxes() != 0 {
		t.Fatal("Close")
	}
	if mb.Close() == nil {
		t.Fatal("second Close not reported")
	}
	// UIDLs are never reused.
	if u := b.Append("u", nil); u == uidls[0] || u == uidls[2] {
		t.Fatal("UIDL reused")
	}
}
