package imap

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/proxy"
)

// aheadMessages are messages of varied sizes, some with lines starting
// with a dot, each different from the others from its first octets on.
func aheadMessages(n int, maxSize int) [][]byte {
	rng := rand.New(rand.NewPCG(7, 8))
	msgs := make([][]byte, n)
	for i := range msgs {
		var b bytes.Buffer
		fmt.Fprintf(&b, "Subject: message %d\r\nMessage-ID: <%d@ahead.example>\r\n\r\n", i+1, i+1)
		size := 200 + rng.IntN(maxSize)
		for j := 0; b.Len() < size; j++ {
			if j%7 == 3 {
				b.WriteString(".")
			}
			fmt.Fprintf(&b, "m%03d line %06d %s\r\n", i+1, j, strings.Repeat("x", rng.IntN(60)))
		}
		msgs[i] = b.Bytes()
	}
	return msgs
}

// retrPOP3 sends cmd (RETR or TOP) and returns the unstuffed body.
func retrPOP3(t *testing.T, c net.Conn, r *bufio.Reader, cmd string) ([]byte, error) {
	t.Helper()
	io.WriteString(c, cmd+"\r\n")
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if !strings.HasPrefix(l, "+OK") {
		return nil, fmt.Errorf("%s: %q", cmd, l)
	}
	var body []byte
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%s: body: %v", cmd, err)
		}
		if l == ".\r\n" {
			return body, nil
		}
		body = append(body, strings.TrimPrefix(l, ".")...)
	}
}

// TestFetchAheadThroughProxy retrieves messages through the proxy in
// order (the hinted next message is prefetched, the chunks of large ones
// pipelined) and out of order (a prefetched chunk must never be served
// for another message), with TOP in between, and checks every octet:
// against Dovecot with the default chunk and with 4 KiB chunks (every
// message many chunks), with and without warm sessions.
func TestFetchAheadThroughProxy(t *testing.T) {
	st := sharedDovecot(t)
	msgs := aheadMessages(12, 40<<10)
	for _, tc := range []struct {
		name  string
		tweak func(*Config)
	}{
		{"default", func(*Config) {}},
		{"chunk4k", func(c *Config) { c.ChunkSize = 4096 }},
		{"chunk4k-reuse", func(c *Config) { c.ChunkSize = 4096; c.Reuse.Max = 10 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			md := seedMaildrop(t, st, msgs)
			cfg := md.config(backendtest.Policy{})
			tc.tweak(&cfg)
			be, err := New(cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer be.Close()
			srv := proxy.New(proxy.Options{Backend: be, AllowPlaintext: true, Logger: zerolog.Nop()})
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(l, proxy.ListenerConfig{Name: "t"})
			defer func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				srv.Shutdown(ctx)
			}()
			orders := [][]int{
				{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
				{1, 3, 2, 2, 5, 4, 6, 12, 11, 7, 8, 9},
			}
			for round, order := range orders {
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				r := bufio.NewReader(c)
				r.ReadString('\n')
				io.WriteString(c, "USER "+md.user+"\r\nPASS "+md.pass+"\r\n")
				r.ReadString('\n')
				if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
					t.Fatalf("login: %q", l)
				}
				for k, i := range order {
					if k == 4 {
						// TOP between two RETRs in order: the prefetched
						// message is not the one TOP asks for.
						got, err := retrPOP3(t, c, r, "TOP "+strconv.Itoa(i+1)+" 0")
						if err != nil || !bytes.HasPrefix(msgs[i], got) || !bytes.HasSuffix(got, []byte("\r\n\r\n")) {
							t.Fatalf("round %d TOP %d: %q, %v", round, i+1, got, err)
						}
					}
					got, err := retrPOP3(t, c, r, "RETR "+strconv.Itoa(i))
					if err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(got, msgs[i-1]) {
						t.Fatalf("round %d RETR %d: got %d octets (%.40q), want message %d (%d octets)", round, i, len(got), got, i, len(msgs[i-1]))
					}
				}
				io.WriteString(c, "QUIT\r\n")
				if l, _ := r.ReadString('\n'); !strings.HasPrefix(l, "+OK") {
					t.Fatalf("QUIT: %q", l)
				}
				c.Close()
			}
		})
	}
}

// openAll reads message m of mb completely.
func openAll(t *testing.T, mb backends.Mailbox, m backends.Message) []byte {
	t.Helper()
	r, err := mb.Open(context.Background(), m, -1)
	if err != nil {
		t.Fatalf("open %s: %v", m.Ref, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("read %s: %v", m.Ref, err)
	}
	return b
}

// TestFetchAheadBackend pins the backend's side: the hinted message's
// first chunk is in flight once the current message has been read, it is
// served only for that message, it is dropped (buffer back to the pool)
// after aheadIdle without a RETR, and a hinted message expunged meanwhile
// still gives ErrMessageGone.
func TestFetchAheadBackend(t *testing.T) {
	st := sharedDovecot(t)
	msgs := aheadMessages(6, 20<<10)
	md := seedMaildrop(t, st, msgs)
	be, err := New(md.config(backendtest.Policy{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ctx := context.Background()
	mbi, err := be.Login(ctx, md.Credentials())
	if err != nil {
		t.Fatal(err)
	}
	defer mbi.Close()
	mb := mbi.(*Mailbox)
	snap, err := mb.Snapshot(ctx)
	if err != nil || len(snap) != len(msgs) {
		t.Fatal(len(snap), err)
	}

	// Hint 2, ask for 3: message 3, never 2's octets.
	r, err := mb.Open(ctx, snap[0], -1)
	if err != nil {
		t.Fatal(err)
	}
	mb.HintNext(snap[1])
	if mb.ahead == nil || mb.ahead.key.uid != md.uids[1] {
		t.Fatalf("no fetch ahead of message 2 after the hint: %+v", mb.ahead)
	}
	io.Copy(io.Discard, r)
	r.Close()
	if got := openAll(t, mb, snap[2]); !bytes.Equal(got, msgs[2]) {
		t.Fatalf("RETR 3 after hint 2: got %.40q", got)
	}

	// Hint 5, ask for 5: served from the fetch ahead.
	r, _ = mb.Open(ctx, snap[3], -1)
	mb.HintNext(snap[4])
	io.Copy(io.Discard, r)
	r.Close()
	f := mb.ahead
	if f == nil {
		t.Fatal("no fetch ahead of message 5")
	}
	if got := openAll(t, mb, snap[4]); !bytes.Equal(got, msgs[4]) {
		t.Fatalf("RETR 5 after hint 5: got %.40q", got)
	}
	if !f.settled || f.bufp != nil || mb.ahead != nil {
		t.Fatalf("fetch ahead not taken: settled %v, buffer %v, ahead %v", f.settled, f.bufp != nil, mb.ahead)
	}

	// Hint 6 and wait: the prefetched chunk is dropped, then 6 is fetched again.
	old := aheadIdle
	aheadIdle = 50 * time.Millisecond
	defer func() { aheadIdle = old }()
	r, _ = mb.Open(ctx, snap[0], -1)
	mb.HintNext(snap[5])
	io.Copy(io.Discard, r)
	r.Close()
	f = mb.ahead
	if f == nil {
		t.Fatal("no fetch ahead of message 6")
	}
	<-f.done
	deadline := time.Now().Add(30 * time.Second)
	for {
		f.mu.Lock()
		dropped := f.bufp == nil
		f.mu.Unlock()
		if dropped {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("prefetched chunk kept past aheadIdle")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := openAll(t, mb, snap[5]); !bytes.Equal(got, msgs[5]) {
		t.Fatalf("RETR 6 after the prefetch was dropped: got %.40q", got)
	}

	// Message 2 expunged by another client before it is hinted: the
	// fetch ahead finds nothing and RETR 2 is -ERR (message gone).
	c := md.client(t)
	if err := c.Store(imap.UIDSetNum(md.uids[1]), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(imap.UIDSetNum(md.uids[1])).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	c.Close()
	r, _ = mb.Open(ctx, snap[0], -1)
	mb.HintNext(snap[1])
	io.Copy(io.Discard, r)
	r.Close()
	if _, err := mb.Open(ctx, snap[1], -1); !errors.Is(err, backends.ErrMessageGone) {
		t.Fatalf("RETR of a message expunged meanwhile: %v, want ErrMessageGone", err)
	}
	// The session goes on.
	if got := openAll(t, mb, snap[2]); !bytes.Equal(got, msgs[2]) {
		t.Fatalf("RETR 3 after the gone message: got %.40q", got)
	}
	if err := mb.Commit(ctx, nil); err != nil {
		t.Fatal(err)
	}
}
