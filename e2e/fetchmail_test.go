package e2e

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// fetchmail runs fetchmail once (foreground, no syslog, its own rc file, id
// file and pid file) and returns its exit code: 0 mail retrieved, 1 no mail
// (fetchmail(1) EXIT CODES); anything else fails the test.
func fetchmail(t *testing.T, dir, rc string) int {
	t.Helper()
	rcPath := filepath.Join(dir, "fetchmailrc")
	writeFile(t, rcPath, rc, 0o600) // fetchmail refuses a group/world-readable rc file
	_, stderr, err := runClient(t, dir, nil, "fetchmail",
		"-f", rcPath, "-i", filepath.Join(dir, "fetchids"), "--pidfile", filepath.Join(dir, "fetchmail.pid"),
		"--nodetach", "--nosyslog", "-v")
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("fetchmail: %v", err)
	}
	if code != 0 && code != 1 {
		t.Fatalf("fetchmail exit code %d:\n%s", code, stderr)
	}
	return code
}

// fetchmail with keep + UIDL (only new mail, nothing deleted upstream), then
// without keep (everything fetched and deleted upstream, except a message
// another client flagged \Deleted, which must survive popgate's QUIT).
func TestFetchmail(t *testing.T) {
	require(t, "fetchmail")
	const user = "e2e-fetchmail"
	pass := newUser(t, user)
	msgs := corpus()
	uids := appendAll(t, user, msgs[:4])
	var flagged imap.UID
	wantLeft := 0
	if !*reference { // Dovecot's own POP3 lists \Deleted messages
		flagged = appendAll(t, user, [][]byte{[]byte("Subject: flagged elsewhere\r\n\r\nkeep me\r\n")}, imap.FlagDeleted)[0]
		wantLeft = 1
	}
	g := startGateway(t, pass)
	dir := t.TempDir()
	mda := deliverScript(t, dir)

	rc := func(keep string) string {
		return fmt.Sprintf(`set no bouncemail
poll %s service %s protocol POP3 uidl auth password timeout 60
  user "%s" there with password "%s" is "nobody" here
  sslproto ""
  mda "%s"
  %s
`, g.host(), g.port(), user, pass, mda, keep)
	}

	// keep + uidl: all four delivered, nothing removed upstream.
	if code := fetchmail(t, dir, rc("keep")); code != 0 {
		t.Fatalf("first fetchmail run: exit code %d, want 0 (mail)", code)
	}
	got := delivered(t, dir)
	if len(got) != 4 {
		t.Fatalf("delivered %d messages, want 4", len(got))
	}
	for i := range got {
		checkDelivered(t, fmt.Sprintf("message %d", i+1), got[i], msgs[i])
	}
	if _, up := upstream(t, user); len(up) != 4+wantLeft {
		t.Errorf("after a keep run, %d messages upstream, want %d", len(up), 4+wantLeft)
	}

	// Again: the UIDLs are known, nothing is new.
	if code := fetchmail(t, dir, rc("keep")); code != 1 {
		t.Errorf("second run: exit code %d, want 1 (no mail)", code)
	}
	if got := delivered(t, dir); len(got) != 0 {
		t.Errorf("second run delivered %d messages, want 0 (UIDLs must not change)", len(got))
	}

	// A new message: only it is fetched.
	newUID := appendAll(t, user, msgs[4:5])[0]
	if code := fetchmail(t, dir, rc("keep")); code != 0 {
		t.Errorf("third run: exit code %d, want 0", code)
	}
	if got := delivered(t, dir); len(got) != 1 {
		t.Errorf("third run delivered %d messages, want only the new one", len(got))
	} else {
		checkDelivered(t, "new message", got[0], msgs[4])
	}

	// no keep + fetchall: everything fetched and deleted upstream.
	if code := fetchmail(t, dir, rc("no keep fetchall")); code != 0 {
		t.Errorf("non-keep run: exit code %d, want 0", code)
	}
	got = delivered(t, dir)
	if len(got) != 5 {
		t.Fatalf("non-keep run delivered %d messages, want 5", len(got))
	}
	for i := range got {
		checkDelivered(t, fmt.Sprintf("non-keep message %d", i+1), got[i], msgs[i])
	}
	_, up := upstream(t, user)
	if len(up) != wantLeft || (wantLeft == 1 && (up[0].UID != flagged || !up[0].has(imap.FlagDeleted))) {
		var left []imap.UID
		for _, m := range up {
			left = append(left, m.UID)
		}
		t.Errorf("upstream after the non-keep run: UIDs %v, want only %d (flagged \\Deleted by another client); deleted were %v and %d", left, flagged, uids, newUID)
	}
}
