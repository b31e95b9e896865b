package imap

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

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
					md.tweak = func(c *Config) { c.MarkSeen = tc.markSeen }
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

// A slow POP3 client: the pause between reads is not bounded by the
// upstream command timeout (each chunk is read off the socket at once and
// the upstream connection is idle meanwhile), so a client slower than any
// upstream deadline still gets the whole message.
func TestSlowReader(t *testing.T) {
	for _, st := range []struct {
		name string
		s    func(t *testing.T) store
	}{
		{"MemServer", func(t *testing.T) store { return newMemStore(t, nil) }},
		{"Dovecot", func(t *testing.T) store { return sharedDovecot(t) }},
	} {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			raw := bigMessage(24 << 10)
			md := seedMaildrop(t, st.s(t), [][]byte{raw})
			md.tweak = func(c *Config) { c.ChunkSize = 16 << 10; c.CommandTimeout = time.Second }
			b, err := New(md.config(backendtest.Policy{}), testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			mb, err := b.Login(ctx, md.Credentials())
			if err != nil {
				t.Fatal(err)
			}
			defer mb.Close()
			snap, err := mb.Snapshot(ctx)
			if err != nil {
				t.Fatal(err)
			}
			r, err := mb.Open(ctx, snap[0], -1)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			var got []byte
			buf := make([]byte, 8<<10)
			for {
				n, err := r.Read(buf)
				got = append(got, buf[:n]...)
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("after %d octets: %v", len(got), err)
				}
				time.Sleep(1200 * time.Millisecond) // longer than the command timeout
			}
			if !bytes.Equal(got, raw) {
				t.Fatalf("got %d octets, want %d, content differs", len(got), len(raw))
			}
		})
	}
}

// recorder is a TCP relay in front of an IMAP server that keeps what the
// client sent.
type recorder struct {
	ln   net.Listener
	mu   sync.Mutex
	sent bytes.Buffer
}

func newRecorder(t *testing.T, upstream string) *recorder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(c, u); c.Close() }()
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := c.Read(buf)
					rec.mu.Lock()
					rec.sent.Write(buf[:n])
					rec.mu.Unlock()
					if _, werr := u.Write(buf[:n]); err != nil || werr != nil {
						u.Close()
						return
					}
				}
			}()
		}
	}()
	return rec
}

// seenStores returns the UID sets of the \Seen STOREs sent so far, and
// forgets them.
func (rec *recorder) seenStores() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var out []string
	for _, line := range strings.Split(rec.sent.String(), "\r\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && strings.EqualFold(f[1], "UID") && strings.EqualFold(f[2], "STORE") && strings.Contains(line, `\Seen`) {
			out = append(out, f[3])
		}
	}
	rec.sent.Reset()
	return out
}

// TestMarkSeenOneStore: the session's complete RETRs are marked \Seen in
// one STORE, and messages already \Seen are not stored again.
func TestMarkSeenOneStore(t *testing.T) {
	st := sharedDovecot(t)
	md := seedMaildrop(t, st, backendtest.Messages()[:4])
	rec := newRecorder(t, st.addr())
	cfg := md.config(backendtest.Policy{})
	cfg.Address = rec.ln.Addr().String()
	b, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	session := func(retr ...int) {
		ctx := context.Background()
		mb, err := b.Login(ctx, md.Credentials())
		if err != nil {
			t.Fatal(err)
		}
		snap, err := mb.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range retr {
			r, err := mb.Open(ctx, snap[i], -1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(io.Discard, r); err != nil {
				t.Fatal(err)
			}
			r.Close()
		}
		mb.Close()
	}
	session(0, 2, 3)
	if got := rec.seenStores(); len(got) != 1 || got[0] != "1,3:4" {
		t.Fatalf("\\Seen STOREs %q, want one for 1,3:4", got)
	}
	session(0, 1, 2, 3) // only message 2 was not \Seen
	if got := rec.seenStores(); len(got) != 1 || got[0] != "2" {
		t.Fatalf("\\Seen STOREs %q, want one for 2", got)
	}
	session(0, 1)
	if got := rec.seenStores(); len(got) != 0 {
		t.Fatalf("\\Seen STOREs %q for messages \\Seen already", got)
	}
	for n, s := range inMainState(md.State(t)) {
		if !s.HasFlag(`\Seen`) {
			t.Errorf("seq %d: no \\Seen", n)
		}
	}
}
