package imap

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/internal/testserver/dovecot"
)

// The whole conformance suite with warm sessions on: reuse must not change
// what a POP3 session sees or commits.
func TestConformanceReuse(t *testing.T) {
	reuse := func(c *Config) { c.Reuse.Max = 100 }
	backendtest.Run(t, harnessWith(sharedDovecot(t), reuse, "move", "flag", "keep"))
}

// upstreamLogins counts Dovecot's successful IMAP logins of user.
func upstreamLogins(st *dovecotStore, user string) int {
	return strings.Count(st.s.Log(), "Login: user=<"+user+">")
}

func TestReuseWarmSession(t *testing.T) {
	st := sharedDovecot(t)
	md := seedMaildrop(t, st, [][]byte{[]byte("Subject: one\r\n\r\n1\r\n")})
	cfg := md.config(backendtest.Policy{})
	cfg.Reuse = Reuse{Max: 10, Idle: time.Minute, MaxAge: time.Hour}
	be, err := New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	ctx := context.Background()
	session := func(c backends.Credentials) ([]backends.Message, error) {
		t.Helper()
		mb, err := be.Login(ctx, c)
		if err != nil {
			return nil, err
		}
		defer mb.Close()
		return mb.Snapshot(ctx)
	}
	waitLogins := func(want int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for upstreamLogins(st, md.user) != want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond) // Dovecot writes its log asynchronously
		}
		if got := upstreamLogins(st, md.user); got != want {
			t.Fatalf("upstream logins: %d, want %d", got, want)
		}
	}
	before := upstreamLogins(st, md.user)
	if msgs, err := session(md.Credentials()); err != nil || len(msgs) != 1 {
		t.Fatalf("first session: %v %v", msgs, err)
	}
	waitLogins(before + 1)

	// The same credential: the warm session, no LOGIN; mail that arrived
	// meanwhile is seen.
	seedMore(t, md, []byte("Subject: two\r\n\r\n2\r\n")) // one upstream login of its own
	waitLogins(before + 2)
	if msgs, err := session(md.Credentials()); err != nil || len(msgs) != 2 {
		t.Fatalf("reused session: %d messages, %v; want 2", len(msgs), err)
	}
	waitLogins(before + 2) // popgate did not log in again

	// A wrong password never gets the warm session.
	wrong := md.Credentials()
	wrong.Password = "not-" + wrong.Password
	if _, err := session(wrong); !errors.Is(err, backends.ErrAuthFailed) {
		t.Fatalf("wrong password with a warm session parked: %v, want ErrAuthFailed", err)
	}
	// The right one still finds it.
	if _, err := session(md.Credentials()); err != nil {
		t.Fatal(err)
	}
	waitLogins(before + 2)

	// Idle expiry: the next login is a fresh one.
	be.pool.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if _, err := session(md.Credentials()); err != nil {
		t.Fatal(err)
	}
	waitLogins(before + 3)
	be.pool.now = time.Now

	// A broken warm connection (the server went away under it): NOOP fails,
	// fresh login, the session works.
	w := be.pool.take(be.pool.key(md.user, md.pass))
	if w == nil {
		t.Fatal("no warm session parked after a clean session")
	}
	w.m.conn.Close()
	be.pool.put(be.pool.key(md.user, md.pass), w)
	if msgs, err := session(md.Credentials()); err != nil || len(msgs) != 2 {
		t.Fatalf("after a dead warm connection: %v %v", msgs, err)
	}
	waitLogins(before + 4)
}

// seedMore appends msgs to md's INBOX from another IMAP client.
func seedMore(t *testing.T, md *maildrop, msgs ...[]byte) {
	t.Helper()
	c := md.client(t)
	defer c.Close()
	for _, raw := range msgs {
		uid, err := dovecot.AppendWith(c, "INBOX", raw)
		if err != nil {
			t.Fatal(err)
		}
		md.uids = append(md.uids, uid)
	}
	c.Logout().Wait()
}
