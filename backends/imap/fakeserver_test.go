package imap

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
)

// fakeServer is a scripted IMAP server for what real servers will not do
// on demand: stall, refuse with a given code, offer LOGIN only.
type fakeServer struct {
	ln      net.Listener
	stallAt string // command name (e.g. "SELECT") at which to go silent; "GREETING" stalls before greeting
	loginNo string // answer LOGIN with this NO text
	exists  string // SELECT's EXISTS count; default "1" (one message, UID 7, is listed whatever it says)
	// condStore: CONDSTORE offered; the first SELECT shows UID 7 alone
	// (HIGHESTMODSEQ 10), later ones UIDs 7 and 8 (HIGHESTMODSEQ 11), and
	// a UID FETCH with CHANGEDSINCE is refused with NO.
	condStore bool
	selects   int
	mu        sync.Mutex
	seen      []string
	wg        sync.WaitGroup
	quit      chan struct{}
}

func newFakeServer(t *testing.T, f *fakeServer) *fakeServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	f.quit = make(chan struct{})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.wg.Add(1)
			go func() { defer f.wg.Done(); f.serve(c) }()
		}
	}()
	t.Cleanup(func() { close(f.quit); ln.Close(); f.wg.Wait() })
	return f
}

func (f *fakeServer) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.seen...)
}

func (f *fakeServer) serve(c net.Conn) {
	defer c.Close()
	go func() { <-f.quit; c.Close() }()
	stall := func() { <-f.quit }
	if f.stallAt == "GREETING" {
		stall()
		return
	}
	w := func(s string) { io.WriteString(c, s+"\r\n") }
	caps := "IMAP4rev1 UIDPLUS"
	if f.condStore {
		caps += " CONDSTORE"
	}
	w("* OK [CAPABILITY " + caps + "] fake ready")
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		f.mu.Lock()
		f.seen = append(f.seen, strings.TrimSpace(line))
		f.mu.Unlock()
		fields := strings.Fields(line)
		if len(fields) < 2 {
			return
		}
		tag, cmd := fields[0], strings.ToUpper(fields[1])
		if cmd == "UID" && len(fields) > 2 {
			cmd = "UID " + strings.ToUpper(fields[2])
		}
		if cmd == f.stallAt || (f.stallAt == "UID FETCH BODY" && cmd == "UID FETCH" && strings.Contains(line, "BODY")) {
			if cmd == "UID FETCH" {
				w("* 1 FETCH (UID 7 BODY[] {100}")
				io.WriteString(c, "0123456789") // then nothing
			}
			stall()
			return
		}
		switch cmd {
		case "CAPABILITY":
			w("* CAPABILITY " + caps)
			w(tag + " OK done")
		case "LOGIN":
			if f.loginNo != "" {
				w(tag + " NO " + f.loginNo)
				continue
			}
			w(tag + " OK [CAPABILITY " + caps + "] logged in")
		case "SELECT":
			f.mu.Lock()
			f.selects++
			later := f.selects > 1
			f.mu.Unlock()
			if f.condStore {
				if later {
					w("* 2 EXISTS")
					w("* OK [UIDNEXT 9] ok")
					w("* OK [HIGHESTMODSEQ 11] ok")
				} else {
					w("* 1 EXISTS")
					w("* OK [UIDNEXT 8] ok")
					w("* OK [HIGHESTMODSEQ 10] ok")
				}
				w("* OK [UIDVALIDITY 5] ok")
				w(tag + " OK [READ-WRITE] selected")
				continue
			}
			exists := f.exists
			if exists == "" {
				exists = "1"
			}
			w("* " + exists + " EXISTS")
			w("* OK [UIDVALIDITY 5] ok")
			w(tag + " OK [READ-WRITE] selected")
		case "UID FETCH":
			if f.condStore && strings.Contains(line, "CHANGEDSINCE") {
				w(tag + " NO changedsince refused")
				continue
			}
			w("* 1 FETCH (UID 7 RFC822.SIZE 100 FLAGS ())")
			f.mu.Lock()
			later := f.selects > 1
			f.mu.Unlock()
			if f.condStore && later {
				w("* 2 FETCH (UID 8 RFC822.SIZE 200 FLAGS ())")
			}
			w(tag + " OK done")
		case "LOGOUT":
			w("* BYE bye")
			w(tag + " OK done")
			return
		default:
			w(tag + " BAD unknown")
		}
	}
}

func fakeBackend(t *testing.T, f *fakeServer) *Backend {
	c := testConfig(f.ln.Addr().String(), "none")
	c.DialTimeout, c.CommandTimeout = 300*time.Millisecond, 300*time.Millisecond
	b, err := New(c, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var cred = backends.Credentials{Username: "u", Password: "s3cret-pw"}

// Without AUTH=PLAIN the backend uses LOGIN; the snapshot uses one UID
// FETCH; UIDL is Dovecot's format.
func TestFakeLoginCommand(t *testing.T) {
	f := newFakeServer(t, &fakeServer{})
	mb, err := fakeBackend(t, f).Login(context.Background(), cred)
	if err != nil {
		t.Fatal(err)
	}
	snap, err := mb.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	mb.Close()
	if len(snap) != 1 || snap[0].UIDL != "0000000700000005" || snap[0].Size != 100 {
		t.Fatalf("snapshot %+v", snap)
	}
	var login, fetch int
	for _, c := range f.commands() {
		if strings.Contains(c, " LOGIN ") {
			login++
		}
		if strings.Contains(c, "FETCH") {
			fetch++
			if !strings.Contains(c, "UID FETCH 1:* (UID RFC822.SIZE FLAGS)") && !strings.Contains(c, "UID FETCH 1:*") {
				t.Errorf("snapshot command %q", c)
			}
		}
	}
	if login != 1 || fetch != 1 {
		t.Fatalf("want one LOGIN and one FETCH: %q", f.commands())
	}
}

// Upstream failures are [SYS/TEMP] within the configured timeouts; a NO
// with [UNAVAILABLE] is the server's trouble, not wrong credentials.
func TestFakeFailures(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    *fakeServer
		step string // where the error must show: login, snapshot, open
	}{
		{"silent-at-greeting", &fakeServer{stallAt: "GREETING"}, "login"},
		{"silent-at-login", &fakeServer{stallAt: "LOGIN"}, "login"},
		{"login-unavailable", &fakeServer{loginNo: "[UNAVAILABLE] backend down"}, "login"},
		{"silent-at-select", &fakeServer{stallAt: "SELECT"}, "snapshot"},
		{"silent-mid-literal", &fakeServer{stallAt: "UID FETCH BODY"}, "open"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer(t, tc.f)
			b := fakeBackend(t, f)
			start := time.Now()
			err := func() error {
				mb, err := b.Login(context.Background(), cred)
				if err != nil || tc.step == "login" {
					return err
				}
				defer mb.Close()
				snap, err := mb.Snapshot(context.Background())
				if err != nil || tc.step == "snapshot" {
					return err
				}
				r, err := mb.Open(context.Background(), snap[0], -1)
				if err == nil {
					r.Close()
				}
				return err
			}()
			if !errors.Is(err, backends.ErrUnavailable) || code(err) != backends.CodeSysTemp {
				t.Fatalf("err %v, want ErrUnavailable [SYS/TEMP]", err)
			}
			if strings.Contains(err.Error(), cred.Password) {
				t.Fatal("password in the error")
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Fatalf("took %v: timeouts not enforced", d)
			}
		})
	}
	t.Run("wrong-password", func(t *testing.T) {
		f := newFakeServer(t, &fakeServer{loginNo: "[AUTHENTICATIONFAILED] nope"})
		_, err := fakeBackend(t, f).Login(context.Background(), cred)
		if !errors.Is(err, backends.ErrAuthFailed) {
			t.Fatalf("err %v, want ErrAuthFailed", err)
		}
	})
	t.Run("context-cancelled", func(t *testing.T) {
		f := newFakeServer(t, &fakeServer{stallAt: "SELECT"})
		c := testConfig(f.ln.Addr().String(), "none")
		c.CommandTimeout = time.Hour
		b, _ := New(c, testLogger(t))
		mb, err := b.Login(context.Background(), cred)
		if err != nil {
			t.Fatal(err)
		}
		defer mb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if _, err := mb.Snapshot(ctx); code(err) != backends.CodeSysTemp {
			t.Fatalf("err %v, want [SYS/TEMP] on context end", err)
		}
	})
}

// A server announcing 50,000,000 messages but listing one costs what it
// lists, not what it announced (issue 13, defect 5): the listing's
// allocations stay far below the 450 MB the EXISTS count would ask for.
func TestFakeHugeExistsNotPreallocated(t *testing.T) {
	f := newFakeServer(t, &fakeServer{exists: "50000000"})
	mb, err := fakeBackend(t, f).Login(context.Background(), cred)
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	snap, err := mb.Snapshot(context.Background())
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap) != 1 || snap[0].UIDL != "0000000700000005" {
		t.Fatalf("snapshot %+v, want the one message listed", snap)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
		t.Fatalf("the snapshot allocated %d bytes for one listed message: preallocated from EXISTS", alloc)
	}
}

// TestFakeIncrementalRefused: a server offering CONDSTORE that refuses
// the listing of what changed (NO to CHANGEDSINCE) gets the whole listing
// asked again, and the login works as without the cache.
func TestFakeIncrementalRefused(t *testing.T) {
	f := newFakeServer(t, &fakeServer{condStore: true})
	b := fakeBackend(t, f)
	snap := func() []backends.Message {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		mb, err := b.Login(ctx, cred)
		if err != nil {
			t.Fatal(err)
		}
		defer mb.Close()
		msgs, err := mb.Snapshot(ctx)
		if err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		return msgs
	}
	if got := snap(); len(got) != 1 || got[0].Ref != "7" {
		t.Fatalf("first snapshot: %v", got)
	}
	got := snap()
	if len(got) != 2 || got[0].Ref != "7" || got[1].Ref != "8" || got[1].Size != 200 {
		t.Fatalf("second snapshot: %v, want UIDs 7 and 8", got)
	}
	var changed, full int
	for _, c := range f.commands() {
		switch {
		case strings.Contains(c, "CHANGEDSINCE"):
			changed++
		case strings.Contains(c, "UID FETCH 1:*"):
			full++
		}
	}
	if changed != 1 || full != 2 {
		t.Errorf("%d CHANGEDSINCE fetches and %d full listings, want 1 and 2: %q", changed, full, f.commands())
	}
	if b.cache.updates.Load() != 0 {
		t.Errorf("a refused incremental listing counted as brought up to date")
	}
}
