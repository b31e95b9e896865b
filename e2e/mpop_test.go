package e2e

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/emersion/go-imap/v2"
)

// mpop runs mpop once for the default account of conf.
func mpop(t *testing.T, dir, conf string, args ...string) {
	t.Helper()
	confPath := filepath.Join(dir, "mpoprc")
	writeFile(t, confPath, conf, 0o600) // mpop refuses a readable file holding a password
	out, stderr, err := runClient(t, dir, nil, "mpop", append([]string{"-C", confPath, "--half-quiet"}, args...)...)
	if err != nil {
		t.Fatalf("mpop %v: %v\n%s%s", args, err, out, stderr)
	}
}

// mpop (which pipelines its commands when the server announces PIPELINING):
// keep on with its UIDL file (only new mail), then keep off (everything
// retrieved is deleted upstream; a message another client flagged \Deleted
// survives).
func TestMpop(t *testing.T) {
	require(t, "mpop")
	const user = "e2e-mpop"
	pass := newUser(t, user)
	msgs := corpus()
	appendAll(t, user, msgs[:3])
	var flagged imap.UID
	wantLeft := 0
	if !*reference { // Dovecot's own POP3 lists \Deleted messages
		flagged = appendAll(t, user, [][]byte{[]byte("Subject: flagged elsewhere\r\n\r\nkeep me\r\n")}, imap.FlagDeleted)[0]
		wantLeft = 1
	}
	g := startGateway(t, pass)
	dir := t.TempDir()
	mda := deliverScript(t, dir)
	conf := fmt.Sprintf(`defaults
timeout 60
account default
host %s
port %s
tls off
auth user
user %s
password %s
delivery mda %s
uidls_file %s
keep on
`, g.host(), g.port(), user, pass, mda, filepath.Join(dir, "uidls"))

	mpop(t, dir, conf)
	got := delivered(t, dir)
	if len(got) != 3 {
		t.Fatalf("delivered %d messages, want 3", len(got))
	}
	for i := range got {
		checkDelivered(t, fmt.Sprintf("message %d", i+1), got[i], msgs[i])
	}
	if _, up := upstream(t, user); len(up) != 3+wantLeft {
		t.Errorf("after keep on: %d messages upstream, want %d", len(up), 3+wantLeft)
	}

	// Nothing new: the UIDLs did not change.
	mpop(t, dir, conf)
	if got := delivered(t, dir); len(got) != 0 {
		t.Errorf("second run delivered %d messages, want 0 (UIDLs must not change)", len(got))
	}

	// A new message, and keep off: only it is delivered; mpop deletes every
	// message it has retrieved, old and new.
	appendAll(t, user, msgs[3:4])
	mpop(t, dir, conf, "--keep=off")
	got = delivered(t, dir)
	if len(got) != 1 {
		t.Fatalf("keep off delivered %d messages, want 1 (the new one)", len(got))
	}
	checkDelivered(t, "new message", got[0], msgs[3])
	_, up := upstream(t, user)
	if len(up) != wantLeft || (wantLeft == 1 && (up[0].UID != flagged || !up[0].has(imap.FlagDeleted))) {
		t.Errorf("upstream after keep off: %d messages, want only the one flagged \\Deleted by another client (UID %d)", len(up), flagged)
	}
}
