package imap

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"

	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/tlsconf"
)

// pop3Lines runs POP3 commands against addr and returns the multi-line
// answers of the last command.
func pop3Lines(t *testing.T, addr, user, pass, cmd string) []string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(c)
	line := func() string {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimRight(l, "\r\n")
	}
	if l := line(); !strings.HasPrefix(l, "+OK") {
		t.Fatal(l)
	}
	for _, x := range []string{"USER " + user, "PASS " + pass, cmd} {
		fmt.Fprintf(c, "%s\r\n", x)
		if l := line(); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("%s: %s", strings.Fields(x)[0], l)
		}
	}
	var out []string
	for l := line(); l != "."; l = line() {
		out = append(out, l)
	}
	fmt.Fprintf(c, "QUIT\r\n")
	return out
}

// The default UIDL template gives Dovecot's own POP3 UIDLs for the same
// mailbox, and the sizes are Dovecot's POP3 LIST sizes: a site moving from
// Dovecot's POP3 keeps its clients' state.
func TestUIDLAndSizesMatchDovecotPOP3(t *testing.T) {
	st := sharedDovecot(t)
	msgs := backendtest.Messages()
	// Bare LF line endings too: Maildir stores LF, IMAP and POP3 serve CRLF.
	msgs = append(msgs, []byte("X-Backendtest-Seq: 99\nSubject: lf only\n\nline one\nline two\n"))
	md := seedMaildrop(t, st, msgs)
	b, err := New(md.config(backendtest.Policy{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mb, err := b.Login(context.Background(), md.Credentials())
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	snap, err := mb.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	uidl := pop3Lines(t, st.s.POP3Addr(), md.user, md.pass, "UIDL")
	list := pop3Lines(t, st.s.POP3Addr(), md.user, md.pass, "LIST")
	if len(uidl) != len(snap) || len(list) != len(snap) {
		t.Fatalf("Dovecot POP3 lists %d/%d messages, snapshot %d", len(uidl), len(list), len(snap))
	}
	for i, m := range snap {
		if want := fmt.Sprintf("%d %s", i+1, m.UIDL); uidl[i] != want {
			t.Errorf("UIDL: Dovecot %q, popgate %q", uidl[i], want)
		}
		if want := fmt.Sprintf("%d %d", i+1, m.Size); list[i] != want {
			t.Errorf("LIST: Dovecot %q, popgate %q", list[i], want)
		}
	}
	last := snap[len(snap)-1]
	r, err := mb.Open(context.Background(), last, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	if want := "X-Backendtest-Seq: 99\r\nSubject: lf only\r\n\r\nline one\r\nline two\r\n"; string(got) != want || int64(len(got)) != last.Size {
		t.Fatalf("LF-stored message: got %q (size %d), want %q", got, last.Size, want)
	}
}

// syncBuffer collects output written by other goroutines.
type syncBuffer = testutil.SyncBuffer

// Without UIDPLUS (RFC 4315) a plain EXPUNGE would also remove messages
// other clients flagged \Deleted: by default popgate only flags, warning
// once per backend; allow_plain_expunge opts into EXPUNGE. Without MOVE,
// policy move copies and flags.
func TestWithoutUIDPLUS(t *testing.T) {
	dovecot.Require(t)
	srv := dovecot.Start(t, dovecot.Options{DropCaps: []string{"UIDPLUS", "MOVE"}})
	st := &dovecotStore{srv}
	msgs := backendtest.Messages()[:4]

	run := func(t *testing.T, cfg func(*Config), log zerolog.Logger) (*maildrop, *Backend) {
		md := seedMaildrop(t, st, msgs)
		md.FlagDeleted(t, 3) // another client's, before the session
		c := md.config(backendtest.Policy{})
		cfg(&c)
		b, err := New(c, log)
		if err != nil {
			t.Fatal(err)
		}
		for session := 0; session < 2; session++ {
			mb, err := b.Login(context.Background(), md.Credentials())
			if err != nil {
				t.Fatal(err)
			}
			snap, err := mb.Snapshot(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if session == 0 {
				if len(snap) != 3 {
					t.Fatalf("snapshot: %d messages, want 3", len(snap))
				}
				if err := mb.Commit(context.Background(), snap[:1]); err != nil {
					t.Fatalf("Commit: %v", err)
				}
			} else if len(snap) != 2 {
				t.Fatalf("second session sees %d messages, want 2 (deleted one left out)", len(snap))
			}
			mb.Close()
		}
		return md, b
	}

	t.Run("DefaultFlagsOnly", func(t *testing.T) {
		var logs syncBuffer
		md, _ := run(t, func(*Config) {}, zerolog.New(&logs))
		st := inMainState(md.State(t))
		if len(st) != 4 || !st[0].HasFlag(`\Deleted`) || !st[3].HasFlag(`\Deleted`) || st[1].HasFlag(`\Deleted`) {
			t.Fatalf("want all 4 kept, 0 and 3 flagged \\Deleted: %v", st)
		}
		if n := strings.Count(logs.String(), "lacks UIDPLUS"); n != 1 {
			t.Fatalf("UIDPLUS warning logged %d times, want once per backend:\n%s", n, logs.String())
		}
	})
	t.Run("AllowPlainExpunge", func(t *testing.T) {
		md, _ := run(t, func(c *Config) { c.AllowPlainExpunge = true }, testLogger(t))
		st := inMainState(md.State(t))
		// The plain EXPUNGE removes the other client's \Deleted message
		// too: that is why it is opt-in.
		if _, ok := st[0]; ok || len(st) != 2 {
			t.Fatalf("want 0 and 3 expunged: %v", st)
		}
	})
	t.Run("MoveWithoutMOVE", func(t *testing.T) {
		md, _ := run(t, func(c *Config) { c.Delete.Policy, c.Delete.Folder = backends.PolicyMove, "Popped" }, testLogger(t))
		all := md.State(t)
		var inFolder, flagged int
		for _, s := range all {
			if s.Folder == "Popped" {
				inFolder++
			}
			if s.Folder == "" && s.HasFlag(`\Deleted`) {
				flagged++
			}
		}
		if inFolder != 1 || flagged != 2 {
			t.Fatalf("want 1 copy in Popped and 2 flagged in INBOX: %+v", all)
		}
	})
}

func inMainState(st []backendtest.Stored) map[int]backendtest.Stored {
	out := map[int]backendtest.Stored{}
	for _, s := range st {
		if s.Folder != "" {
			continue
		}
		var n int
		fmt.Sscanf(string(s.Raw), "X-Backendtest-Seq: %d", &n)
		out[n] = s
	}
	return out
}

// TLS: implicit and STARTTLS with the server verified against a CA file;
// an unknown certificate is [SYS/TEMP]; insecure_skip_verify works and
// warns; a server announcing LOGINDISABLED never receives the password in
// the clear.
func TestTLSModes(t *testing.T) {
	dovecot.Require(t)
	certFile, keyFile, err := dovecot.WriteSelfSigned(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := dovecot.Start(t, dovecot.Options{CertFile: certFile, KeyFile: keyFile, Extra: "disable_plaintext_auth = yes"})
	user, pass := "tls-user", "tls-pass"
	if err := srv.AddUser(user, pass); err != nil {
		t.Fatal(err)
	}
	cred := backends.Credentials{Username: user, Password: pass}
	login := func(cfg Config, log zerolog.Logger) error {
		b, err := New(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		mb, err := b.Login(context.Background(), cred)
		if err == nil {
			_, err = mb.Snapshot(context.Background())
			mb.Close()
		}
		return err
	}
	ca := tlsconf.Upstream{CAFile: certFile}
	cfg := func(addr, mode string, u tlsconf.Upstream) Config {
		c := testConfig(addr, mode)
		c.Upstream = u
		return c
	}
	for _, tc := range []struct {
		name string
		cfg  Config
		code backends.Code // CodeNone: success
	}{
		{"implicit", cfg(srv.IMAPSAddr(), "implicit", ca), backends.CodeNone},
		{"starttls", cfg(srv.Addr(), "starttls", ca), backends.CodeNone},
		{"implicit-by-name", cfg(srv.IMAPSAddr(), "implicit", tlsconf.Upstream{CAFile: certFile, ServerName: "localhost"}), backends.CodeNone},
		{"implicit-unknown-ca", cfg(srv.IMAPSAddr(), "implicit", tlsconf.Upstream{}), backends.CodeSysTemp},
		{"starttls-wrong-name", cfg(srv.Addr(), "starttls", tlsconf.Upstream{CAFile: certFile, ServerName: "imap.example.org"}), backends.CodeSysTemp},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.DialTimeout = 10 * time.Second
			err := login(tc.cfg, testLogger(t))
			if tc.code == backends.CodeNone {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if code(err) != tc.code {
				t.Fatalf("err %v, want [%s]", err, tc.code)
			}
			if strings.Contains(err.Error(), pass) {
				t.Fatal("password in the error")
			}
		})
	}
	t.Run("insecure_skip_verify", func(t *testing.T) {
		var logs syncBuffer
		c := cfg(srv.IMAPSAddr(), "implicit", tlsconf.Upstream{InsecureSkipVerify: true})
		if err := login(c, zerolog.New(&logs)); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs.String(), `"level":"warn"`) || !strings.Contains(logs.String(), "insecure_skip_verify") {
			t.Fatalf("no warning at start: %s", logs.String())
		}
	})
}

func code(err error) backends.Code {
	if err == nil {
		return backends.CodeNone
	}
	c, _ := backends.ClientError(err)
	return c
}

// A server announcing LOGINDISABLED (RFC 3501 §6.2.3) and no AUTH=PLAIN
// (go-imap's server without TLS) is not sent the password: [SYS/TEMP].
func TestLoginDisabled(t *testing.T) {
	var wire syncBuffer
	ms := newMemStoreOpts(t, &imapserver.Options{DebugWriter: &wire})
	user, pass := ms.newUser(t)
	b, err := New(testConfig(ms.addr(), "none"), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.Login(context.Background(), backends.Credentials{Username: user, Password: pass})
	if !errors.Is(err, backends.ErrUnavailable) {
		t.Fatalf("err %v, want ErrUnavailable", err)
	}
	if w := wire.String(); strings.Contains(w, pass) || strings.Contains(w, "LOGIN ") || strings.Contains(w, "AUTHENTICATE") {
		t.Fatalf("credentials sent to a LOGINDISABLED server:\n%s", wire.String())
	}
}
