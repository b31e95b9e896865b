package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/internal/testserver/dovecot"
)

// migrationCorpus is n distinct messages as an old server holds them; every
// tenth has no Message-ID (scanners often send none).
func migrationCorpus(n int) [][]byte {
	var msgs [][]byte
	for i := 1; i <= n; i++ {
		var b bytes.Buffer
		if i%10 != 0 {
			fmt.Fprintf(&b, "Message-ID: <mig.%d@old.example>\r\n", i)
		}
		fmt.Fprintf(&b, "Date: Mon, 1 Jan 2024 %02d:%02d:%02d +0000\r\nFrom: Sender %d <s%d@example.com>\r\nTo: e2e@example.org\r\nSubject: migrated message\r\n  number %d\r\n\r\n", i/3600, i/60%60, i%60, i%7, i%7, i)
		fmt.Fprintf(&b, "body of message %d\r\n.dot line\r\n", i)
		msgs = append(msgs, b.Bytes())
	}
	return msgs
}

// runPopgate runs a popgate subcommand and returns its output.
func runPopgate(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(popgateBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return o.String(), e.String(), code
}

// TestMigrationKeepsClientState is the classic migration: fetchmail and
// mpop leave mail on an old POP3 server (a Dovecot with another UIDL
// format), the mail is copied to a new IMAP store (new UIDs and
// UIDVALIDITY), popgate uidl capture reads the old server, and the same
// clients with the same state, now pointed at popgate, download nothing
// again; a message that arrives after the switch is downloaded once.
func TestMigrationKeepsClientState(t *testing.T) {
	require(t, "fetchmail", "mpop")
	if *reference {
		t.Skip("popgate only")
	}
	const user = "e2e-migrate"
	pass := newUser(t, user)
	old := dovecot.Start(t, dovecot.Options{
		Users: map[string]string{user: pass},
		POP3:  true,
		Extra: "pop3_uidl_format = %v.%u\n",
	})
	const n = 200
	msgs := migrationCorpus(n)
	for _, m := range msgs {
		if _, err := old.Append(user, "INBOX", m); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	mda := deliverScript(t, dir)
	// The clients poll 127.0.0.1 before and after the switch (as they
	// would poll one DNS name), each with its own UIDL state file.
	fetchRC := func(addr string) string {
		h, p := splitHostPort(addr)
		return fmt.Sprintf(`set no bouncemail
poll %s service %s protocol POP3 uidl auth password timeout 60
  user "%s" there with password "%s" is "nobody" here
  sslproto ""
  mda "%s"
  keep
`, h, p, user, pass, mda)
	}
	mpopDir := filepath.Join(dir, "mpop")
	os.MkdirAll(mpopDir, 0o700)
	mpopMDA := deliverScript(t, mpopDir)
	mpopRC := func(addr string) string {
		h, p := splitHostPort(addr)
		return fmt.Sprintf("defaults\ntimeout 60\naccount default\nhost %s\nport %s\ntls off\nauth user\nuser %s\npassword %s\ndelivery mda %s\nuidls_file %s\nkeep on\n",
			h, p, user, pass, mpopMDA, filepath.Join(mpopDir, "uidls"))
	}

	// Before: both clients have seen everything on the old server.
	if code := fetchmail(t, dir, fetchRC(old.POP3Addr())); code != 0 {
		t.Fatalf("fetchmail on the old server: exit code %d", code)
	}
	if got := delivered(t, dir); len(got) != n {
		t.Fatalf("fetchmail got %d messages from the old server, want %d", len(got), n)
	}
	mpop(t, mpopDir, mpopRC(old.POP3Addr()))
	if got := delivered(t, mpopDir); len(got) != n {
		t.Fatalf("mpop got %d messages from the old server, want %d", len(got), n)
	}

	// The copy to the new store: new UIDs, new UIDVALIDITY, new UIDLs.
	appendAll(t, user, msgs)

	// Capture, with the old password on standard input.
	g := startGatewayWith(t, "migration:\n  uidl_dir: "+filepath.Join(dir, "uidl")+"\n", pass)
	start := time.Now()
	out, errOut, code := runPopgate(t, pass+"\n", "uidl", "capture", "-c", g.configPath, "--old", "pop3://"+old.POP3Addr(), "--user", user, "--password-file", "-")
	if code != 0 {
		t.Fatalf("uidl capture: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("capture of %d messages: %s (%s)", n, time.Since(start), strings.TrimSpace(out))
	if !strings.Contains(out, fmt.Sprintf("captured %d messages", n)) || !strings.Contains(errOut, "in clear") {
		t.Errorf("uidl capture output:\n%s%s", out, errOut)
	}
	if strings.Contains(out+errOut, pass) {
		t.Error("uidl capture printed the password")
	}
	st, _, code := runPopgate(t, pass+"\n", "uidl", "status", "-c", g.configPath, user, "--password-file", "-")
	if code != 0 || !strings.Contains(st, fmt.Sprintf("%d presented under their old UIDL", n)) {
		t.Fatalf("uidl status: exit %d\n%s", code, st)
	}

	// After: the same clients, the same state, popgate in front of the
	// new store. Nothing is downloaded again.
	if code := fetchmail(t, dir, fetchRC(g.addr)); code != 1 {
		t.Errorf("fetchmail through popgate: exit code %d, want 1 (no new mail); downloaded %d again", code, len(delivered(t, dir)))
	}
	mpop(t, mpopDir, mpopRC(g.addr))
	if got := delivered(t, mpopDir); len(got) != 0 {
		t.Errorf("mpop through popgate downloaded %d messages again, want 0", len(got))
	}

	// New mail after the switch: downloaded once, by each client.
	fresh := []byte("Message-ID: <after.1@new.example>\r\nSubject: after the switch\r\n\r\nnew\r\n")
	appendAll(t, user, [][]byte{fresh})
	fetchmail(t, dir, fetchRC(g.addr))
	if got := delivered(t, dir); len(got) != 1 {
		t.Errorf("fetchmail: %d new messages delivered, want 1", len(got))
	} else {
		checkDelivered(t, "new message", got[0], fresh)
	}
	mpop(t, mpopDir, mpopRC(g.addr))
	if got := delivered(t, mpopDir); len(got) != 1 {
		t.Errorf("mpop: %d new messages delivered, want 1", len(got))
	}
	if _, up := upstream(t, user); len(up) != n+1 {
		t.Errorf("%d messages upstream, want %d (keep deletes nothing)", len(up), n+1)
	}
	log, _ := os.ReadFile(g.logPath)
	if !bytes.Contains(log, []byte(`"uidl migration"`)) {
		t.Error("no uidl migration line in popgate's log")
	}

	// forget: the store's own UIDLs again (the clients would download all).
	if out, _, code := runPopgate(t, "", "uidl", "forget", "-c", g.configPath, user); code != 0 || !strings.Contains(out, "removed") {
		t.Errorf("uidl forget: exit %d: %s", code, out)
	}
	if out, _, code := runPopgate(t, "", "uidl", "status", "-c", g.configPath, user); code != 1 || !strings.Contains(out, "no map") {
		t.Errorf("uidl status after forget: exit %d: %s", code, out)
	}
}

// TestMigrationDeletedAndDuplicates: a message deleted between the capture
// and the first login simply is not there; two copies of one message on
// both sides match nothing (documented), so the client downloads those two
// again rather than risk hiding a message it never saw.
func TestMigrationDeletedAndDuplicates(t *testing.T) {
	require(t)
	if *reference {
		t.Skip("popgate only")
	}
	const user = "e2e-migrate-edge"
	pass := newUser(t, user)
	old := dovecot.Start(t, dovecot.Options{Users: map[string]string{user: pass}, POP3: true, Extra: "pop3_uidl_format = %v.%u\n"})
	msgs := migrationCorpus(5)
	dup := []byte("Subject: weekly scan\r\nFrom: scanner@example.com\r\n\r\nscan\r\n")
	all := append(append([][]byte{}, msgs...), dup, dup)
	for _, m := range all {
		if _, err := old.Append(user, "INBOX", m); err != nil {
			t.Fatal(err)
		}
	}
	uids := appendAll(t, user, all)
	dir := t.TempDir()
	g := startGatewayWith(t, "migration:\n  uidl_dir: "+filepath.Join(dir, "uidl")+"\n", pass)
	if out, errOut, code := runPopgate(t, pass, "uidl", "capture", "-c", g.configPath, "--old", "pop3://"+old.POP3Addr(), "--user", user, "--password-file", "-"); code != 0 {
		t.Fatalf("capture: %s%s", out, errOut)
	}
	// Message 2 is deleted in the new store before the first login.
	c, err := dc.Dial(user)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.UIDSetNum(uids[1]), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.UIDExpunge(imap.UIDSetNum(uids[1])).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()

	oldUIDLs := curlUIDLs(t, old.POP3Addr(), user, pass)
	newUIDLs := curlUIDLs(t, g.addr, user, pass)
	if len(newUIDLs) != len(all)-1 {
		t.Fatalf("popgate lists %d messages, want %d", len(newUIDLs), len(all)-1)
	}
	want := []string{oldUIDLs[0], oldUIDLs[2], oldUIDLs[3], oldUIDLs[4]}
	for i, w := range want {
		if newUIDLs[i] != w {
			t.Errorf("message %d: UIDL %q, want the old %q", i+1, newUIDLs[i], w)
		}
	}
	for _, u := range newUIDLs[4:] {
		if u == oldUIDLs[5] || u == oldUIDLs[6] {
			t.Errorf("a duplicate got an old UIDL %q: ambiguous matches must get none", u)
		}
	}
	st, _, _ := runPopgate(t, pass, "uidl", "status", "-c", g.configPath, user, "--password-file", "-")
	if !strings.Contains(st, "4 presented under their old UIDL") || !strings.Contains(st, "2 ambiguous") || !strings.Contains(st, "3 old UIDLs match no message") {
		t.Errorf("uidl status:\n%s", st)
	}
}

// curlUIDLs lists the UIDLs of a POP3 maildrop with curl (UIDL command).
func curlUIDLs(t *testing.T, addr, user, pass string) []string {
	t.Helper()
	out := curl(t, addr, user, pass, "", "-X", "UIDL")
	return uidlLines(t, out)
}
