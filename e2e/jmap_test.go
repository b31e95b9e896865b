package e2e

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/internal/testserver/cyrus"
)

// The same clients through popgate → a real Cyrus JMAP server (type: jmap):
// what was APPENDed over Cyrus' IMAP is what they get, a message APPENDed
// later shows up in the next snapshot, DELE+QUIT removes it from IMAP, a
// dropped session deletes nothing.

var (
	cyrusOnce sync.Once
	cyrusSrv  *cyrus.Server
	cyrusErr  error
)

// requireCyrus returns the shared Cyrus (started on first use, stopped by
// TestMain), skipping t (failing it when CI=true) without Cyrus or bins.
func requireCyrus(t *testing.T, bins ...string) *cyrus.Server {
	t.Helper()
	if *reference {
		t.Skip("-reference runs the clients against Dovecot's POP3")
	}
	cyrus.Require(t, false)
	requireBin(t, bins...)
	cyrusOnce.Do(func() { cyrusSrv, cyrusErr = cyrus.New(cyrus.Options{}) })
	if cyrusErr != nil {
		t.Fatalf("starting Cyrus: %v", cyrusErr)
	}
	return cyrusSrv
}

func closeCyrus() {
	if cyrusSrv != nil {
		cyrusSrv.Close()
	}
}

// cyrusUser creates a Cyrus user for t and seeds its INBOX with msgs
// (internal dates a minute apart: the JMAP receivedAt order is the APPEND
// order).
func cyrusUser(t *testing.T, s *cyrus.Server, name string, msgs [][]byte) string {
	t.Helper()
	pass := "pw-" + name + "-Jm4p"
	if err := s.AddUser(name, pass); err != nil {
		t.Fatal(err)
	}
	cyrusAppend(t, s, name, msgs, time.Date(2024, 1, 1, 10, 0, 0, 0, time.UTC))
	return pass
}

func cyrusAppend(t *testing.T, s *cyrus.Server, user string, msgs [][]byte, at time.Time) {
	t.Helper()
	c, err := s.Dial(user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i, raw := range msgs {
		cmd := c.Append("INBOX", int64(len(raw)), &imap.AppendOptions{Time: at.Add(time.Duration(i) * time.Minute)})
		cmd.Write(raw)
		cmd.Close()
		if _, err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	c.Logout().Wait()
}

// cyrusInbox returns the raw messages of user's INBOX over IMAP.
func cyrusInbox(t *testing.T, s *cyrus.Server, user string) [][]byte {
	t.Helper()
	c, err := s.Dial(user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	if sel.NumMessages > 0 {
		section := &imap.FetchItemBodySection{Peek: true}
		msgs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}}, &imap.FetchOptions{BodySection: []*imap.FetchItemBodySection{section}}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			out = append(out, m.FindBodySection(section))
		}
	}
	c.Logout().Wait()
	return out
}

// startJMAPGateway runs popgate serve with one `type: jmap` backend on s.
func startJMAPGateway(t *testing.T, s *cyrus.Server, secrets ...string) *gateway {
	t.Helper()
	dir := t.TempDir()
	port := freePort(t)
	g := &gateway{addr: "127.0.0.1:" + port, logPath: filepath.Join(dir, "popgate.log"), secrets: secrets}
	conf := fmt.Sprintf(`# popgate e2e configuration, JMAP
listeners:
  - address: "%s"
    tls: none
backends:
  cyrus:
    type: jmap
    url: "%s"
    delete:
      policy: expunge
routes:
  - match: "*"
    backend: cyrus
auth:
  allow_plaintext: true
  failure_delay: 0s
log:
  level: debug
  format: json
`, g.addr, s.SessionURL())
	return runGateway(t, g, dir, conf)
}

// curl through popgate → Cyrus JMAP: LIST, RETR byte for byte, UIDL (the
// JMAP Email ids) stable, DELE removing exactly that message from IMAP.
func TestJMAPCurl(t *testing.T) {
	s := requireCyrus(t, "curl")
	const user = "e2e-jmap-curl"
	msgs := corpus()
	pass := cyrusUser(t, s, user, msgs)
	g := startJMAPGateway(t, s, pass)

	var want strings.Builder
	for i, m := range msgs {
		fmt.Fprintf(&want, "%d %d\r\n", i+1, len(m))
	}
	if got := curl(t, g.addr, user, pass, ""); string(got) != want.String() {
		t.Errorf("LIST:\n got %q\nwant %q", got, want.String())
	}
	for i, m := range msgs {
		if got := curl(t, g.addr, user, pass, fmt.Sprint(i+1)); !bytes.Equal(got, m) {
			t.Errorf("RETR %d differs:\n got %q\nwant %q", i+1, clip(got), clip(m))
		}
	}
	u1 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL"))
	if u2 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL")); strings.Join(u1, " ") != strings.Join(u2, " ") || len(u1) != len(msgs) {
		t.Fatalf("UIDLs %v then %v", u1, u2)
	}
	for _, u := range u1 {
		if !strings.HasPrefix(u, "M") || len(u) != 25 { // Cyrus' Email ids
			t.Errorf("UIDL %q is not a Cyrus Email id", u)
		}
	}
	curl(t, g.addr, user, pass, "2", "-X", "DELE", "-I") // -I: no body to wait for
	inbox := cyrusInbox(t, s, user)
	if len(inbox) != len(msgs)-1 {
		t.Fatalf("IMAP INBOX holds %d messages after DELE 2, want %d", len(inbox), len(msgs)-1)
	}
	for _, m := range inbox {
		if bytes.Equal(m, msgs[1]) {
			t.Fatal("message 2 still in IMAP after DELE+QUIT")
		}
	}
	if u3 := uidlLines(t, curl(t, g.addr, user, pass, "", "-X", "UIDL")); strings.Join(u3, " ") != strings.Join(append(append([]string{}, u1[:1]...), u1[2:]...), " ") {
		t.Errorf("UIDLs after DELE 2: %v, want %v without the second", u3, u1)
	}
}

// fetchmail (keep + UIDL) and mpop through popgate → Cyrus JMAP: a
// message APPENDed over IMAP later is the only one fetched next; then
// fetchmail without keep empties the INBOX as IMAP sees it.
func TestJMAPFetchmailMpop(t *testing.T) {
	s := requireCyrus(t, "fetchmail", "mpop")
	const user = "e2e-jmap-fetch"
	msgs := corpus()
	pass := cyrusUser(t, s, user, msgs[:3])
	g := startJMAPGateway(t, s, pass)
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
	if code := fetchmail(t, dir, rc("keep")); code != 0 {
		t.Fatalf("first fetchmail run: exit code %d", code)
	}
	got := delivered(t, dir)
	if len(got) != 3 {
		t.Fatalf("fetchmail delivered %d, want 3", len(got))
	}
	for i := range got {
		checkDelivered(t, fmt.Sprintf("fetchmail message %d", i+1), got[i], msgs[i])
	}

	mdir := t.TempDir()
	mmda := deliverScript(t, mdir)
	mconf := fmt.Sprintf("defaults\ntimeout 60\naccount default\nhost %s\nport %s\ntls off\nauth user\nuser %s\npassword %s\ndelivery mda %s\nuidls_file %s\nkeep on\n",
		g.host(), g.port(), user, pass, mmda, filepath.Join(mdir, "uidls"))
	mpop(t, mdir, mconf)
	if got := delivered(t, mdir); len(got) != 3 {
		t.Fatalf("mpop delivered %d, want 3", len(got))
	}

	// A message APPENDed over IMAP shows up in the next snapshot, alone.
	cyrusAppend(t, s, user, msgs[3:4], time.Date(2024, 2, 1, 0, 0, 0, 0, time.UTC))
	if code := fetchmail(t, dir, rc("keep")); code != 0 {
		t.Fatalf("fetchmail after an APPEND: exit code %d", code)
	}
	if got := delivered(t, dir); len(got) != 1 {
		t.Fatalf("fetchmail after an APPEND delivered %d, want only the new one", len(got))
	} else {
		checkDelivered(t, "appended message", got[0], msgs[3])
	}
	mpop(t, mdir, mconf)
	if got := delivered(t, mdir); len(got) != 1 {
		t.Fatalf("mpop after an APPEND delivered %d, want only the new one", len(got))
	} else {
		checkDelivered(t, "appended message (mpop)", got[0], msgs[3])
	}

	// Without keep: everything fetched and removed, as IMAP sees it.
	if code := fetchmail(t, dir, rc("no keep fetchall")); code != 0 {
		t.Fatalf("non-keep run: exit code %d", code)
	}
	if got := delivered(t, dir); len(got) != 4 {
		t.Fatalf("non-keep run delivered %d, want 4", len(got))
	}
	if left := cyrusInbox(t, s, user); len(left) != 0 {
		t.Fatalf("IMAP INBOX holds %d messages after fetchmail without keep", len(left))
	}
}

// poplib through popgate → Cyrus JMAP: STAT/LIST/UIDL/RETR/TOP, DELE+QUIT
// removes exactly those; a session dropped after DELE removes nothing.
func TestJMAPPoplib(t *testing.T) {
	s := requireCyrus(t, "python3")
	const user = "e2e-jmap-poplib"
	msgs := corpus()[:4]
	pass := cyrusUser(t, s, user, msgs)
	g := startJMAPGateway(t, s, pass)

	// Dropped after DELE 1..4: nothing removed.
	if _, quit := poplibSession(t, g, user, pass, []int{1, 2, 3, 4}, nil, "abort"); quit != "aborted" {
		t.Fatalf("script: %q", quit)
	}
	if n := len(cyrusInbox(t, s, user)); n != len(msgs) {
		t.Fatalf("IMAP holds %d messages after a dropped session, want %d", n, len(msgs))
	}

	res, quit := poplibSession(t, g, user, pass, []int{1, 3}, nil)
	if !strings.HasPrefix(quit, "+OK") {
		t.Fatalf("QUIT: %q", quit)
	}
	if len(res.Stat) != 2 || res.Stat[0] != int64(len(msgs)) || len(res.Retr) != len(msgs) {
		t.Fatalf("STAT %v, %d RETRs", res.Stat, len(res.Retr))
	}
	for i, r := range res.Retr {
		if got := decode(t, r.Raw); !bytes.Equal(lf(got), lf(msgs[i])) || r.Octets != int64(len(msgs[i])) {
			t.Errorf("RETR %d: %d octets, content differs: %v", i+1, r.Octets, !bytes.Equal(lf(got), lf(msgs[i])))
		}
	}
	left := cyrusInbox(t, s, user)
	if len(left) != 2 || !bytes.Equal(left[0], msgs[1]) || !bytes.Equal(left[1], msgs[3]) {
		t.Fatalf("IMAP after DELE 1 3 + QUIT: %d messages, want messages 2 and 4", len(left))
	}
}
