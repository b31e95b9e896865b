package imap

import (
	"context"
	"io"
	"testing"

	"github.com/popgate/popgate/backends/backendtest"
)

// \Seen is set only after a complete RETR, and never with mark_seen off.
func TestMarkSeen(t *testing.T) {
	for _, st := range []struct {
		name string
		s    func(t *testing.T) store
	}{
		{"MemServer", func(t *testing.T) store { return newMemStore(t, nil) }},
		{"Dovecot", func(t *testing.T) store { return sharedDovecot(t) }},
	} {
		t.Run(st.name, func(t *testing.T) {
			msgs := backendtest.Messages()[:3]
			for _, tc := range []struct {
				name     string
				markSeen bool
				read     int // octets to read of message 1; -1 all
				want     bool
			}{
				{"complete", true, -1, true},
				{"partial", true, 10, false},
				{"off", false, -1, false},
			} {
				t.Run(tc.name, func(t *testing.T) {
					md := seedMaildrop(t, st.s(t), msgs)
					md.tweak = func(c *Config) { c.MarkSeen = &tc.markSeen }
					b, err := New(md.config(backendtest.Policy{}), testLogger(t))
					if err != nil {
						t.Fatal(err)
					}
					ctx := context.Background()
					mb, err := b.Login(ctx, md.Credentials())
					if err != nil {
						t.Fatal(err)
					}
					snap, err := mb.Snapshot(ctx)
					if err != nil {
						t.Fatal(err)
					}
					r, err := mb.Open(ctx, snap[1], -1)
					if err != nil {
						t.Fatal(err)
					}
					if tc.read < 0 {
						io.Copy(io.Discard, r)
					} else {
						io.CopyN(io.Discard, r, int64(tc.read))
					}
					r.Close()
					mb.Close() // no Commit: \Seen does not wait for QUIT
					for n, s := range inMainState(md.State(t)) {
						if want := tc.want && n == 1; s.HasFlag(`\Seen`) != want {
							t.Errorf("seq %d: \\Seen %v, want %v", n, !want, want)
						}
					}
				})
			}
		})
	}
}
