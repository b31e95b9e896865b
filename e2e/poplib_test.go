package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

type poplibResult struct {
	Stat []int64  `json:"stat"`
	List []string `json:"list"`
	UIDL []string `json:"uidl"`
	Retr []struct {
		Octets int64  `json:"octets"`
		Raw    string `json:"raw"`
	} `json:"retr"`
	Top string `json:"top"`
}

// poplibSession runs testdata/poplib_session.py: it logs in and reads
// everything, then between is called (with the session still open), then the
// script sends DELE for dele and QUIT. It returns what the script saw and
// QUIT's answer.
func poplibSession(t *testing.T, g *gateway, user, pass string, dele []int, between func(), extra ...string) (poplibResult, string) {
	t.Helper()
	var nums []string
	for _, n := range dele {
		nums = append(nums, fmt.Sprint(n))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	script, _ := filepath.Abs("testdata/poplib_session.py")
	cmd := exec.CommandContext(ctx, "python3", append([]string{script, g.host(), g.port(), user, strings.Join(nums, ",")}, extra...)...)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer cancel()
	io.WriteString(stdin, pass+"\n")
	r := bufio.NewReaderSize(stdout, 1<<20)
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("poplib: %v\n%s", err, stderr.Bytes())
	}
	var res poplibResult
	if err := json.Unmarshal(line, &res); err != nil {
		t.Fatalf("poplib output: %v: %q\n%s", err, clip(line), stderr.Bytes())
	}
	if between != nil {
		between()
	}
	io.WriteString(stdin, "go\n")
	line, err = r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("poplib after DELE: %v\n%s", err, stderr.Bytes())
	}
	var q struct{ Quit string }
	if err := json.Unmarshal(line, &q); err != nil {
		t.Fatalf("poplib output: %v: %q", err, line)
	}
	return res, q.Quit
}

func decode(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Python's poplib: STAT/LIST/UIDL/RETR/TOP byte for byte; DELE + QUIT
// removes exactly the deleted messages upstream; a message another IMAP
// client flagged \Deleted (before or during the session) survives QUIT;
// UIDLs do not change between sessions.
func TestPoplib(t *testing.T) {
	require(t, "python3")
	const user = "e2e-poplib"
	pass := newUser(t, user)
	msgs := corpus()
	uids := appendAll(t, user, msgs)
	// Flagged \Deleted by another client before the session: not listed,
	// and never expunged by popgate.
	preFlagged := appendAll(t, user, [][]byte{[]byte("Subject: flagged elsewhere\r\n\r\nkeep me\r\n")}, imap.FlagDeleted)[0]
	validity, _ := upstream(t, user)
	g := startGateway(t, pass)

	// Session 1: read everything; meanwhile another client flags message 3
	// \Deleted; DELE 1 and 2; QUIT.
	res, quit := poplibSession(t, g, user, pass, []int{1, 2}, func() { flagDeleted(t, user, uids[2]) })
	if !strings.HasPrefix(quit, "+OK") {
		t.Errorf("QUIT: %q, want +OK", quit)
	}
	var total int64
	for _, m := range msgs {
		total += int64(len(m))
	}
	hidesDeleted := !*reference // Dovecot's own POP3 lists \Deleted messages
	wantCount := len(msgs)
	if !hidesDeleted {
		wantCount++
	}
	if len(res.Stat) != 2 || res.Stat[0] != int64(wantCount) || (hidesDeleted && res.Stat[1] != total) {
		t.Errorf("STAT = %v, want [%d %d]", res.Stat, len(msgs), total)
	}
	if len(res.Retr) < len(msgs) || len(res.List) < len(msgs) || len(res.UIDL) < len(msgs) {
		t.Fatalf("got %d RETR, %d LIST, %d UIDL lines; want %d", len(res.Retr), len(res.List), len(res.UIDL), len(msgs))
	}
	for i, m := range msgs {
		n := i + 1
		if want := fmt.Sprintf("%d %d", n, len(m)); res.List[i] != want {
			t.Errorf("LIST line %q, want %q", res.List[i], want)
		}
		if want := fmt.Sprintf("%d %s", n, uidl(uids[i], validity)); res.UIDL[i] != want {
			t.Errorf("UIDL line %q, want %q", res.UIDL[i], want)
		}
		got := decode(t, res.Retr[i].Raw)
		if !bytes.Equal(got, m) {
			t.Errorf("RETR %d differs from the APPENDed message:\n got %q\nwant %q", n, clip(got), clip(m))
		}
		if res.Retr[i].Octets != int64(len(m)) {
			t.Errorf("RETR %d: %d octets, LIST size %d", n, res.Retr[i].Octets, len(m))
		}
	}
	// TOP 1 2: the header, the blank line and the first two body lines.
	hdr, body, _ := bytes.Cut(msgs[0], []byte("\r\n\r\n"))
	bodyLines := bytes.SplitAfter(body, []byte("\r\n"))
	wantTop := append(append(append([]byte{}, hdr...), "\r\n\r\n"...), bytes.Join(bodyLines[:2], nil)...)
	if got := decode(t, res.Top); !bytes.Equal(got, wantTop) {
		t.Errorf("TOP 1 2:\n got %q\nwant %q", got, wantTop)
	}

	// Upstream: 1 and 2 expunged; 3 (flagged during the session) and the
	// message flagged before it are still there, as are the others.
	_, up := upstream(t, user)
	have := map[imap.UID]upstreamMsg{}
	for _, m := range up {
		have[m.UID] = m
	}
	for i, uid := range uids {
		_, ok := have[uid]
		switch {
		case i < 2 && ok:
			t.Errorf("message %d (UID %d) was deleted with DELE+QUIT but is still upstream", i+1, uid)
		case i >= 2 && !ok:
			t.Errorf("message %d (UID %d) was not deleted but is gone upstream", i+1, uid)
		}
	}
	if m, ok := have[uids[2]]; !ok || !m.has(imap.FlagDeleted) {
		t.Errorf("the message another client flagged \\Deleted during the session did not survive QUIT")
	}
	if m, ok := have[preFlagged]; !ok || !m.has(imap.FlagDeleted) {
		t.Errorf("the message another client flagged \\Deleted before the session did not survive QUIT")
	}

	// Session 2: the remaining messages keep their UIDLs (numbers shift).
	res2, quit2 := poplibSession(t, g, user, pass, nil, nil)
	if !strings.HasPrefix(quit2, "+OK") {
		t.Errorf("second QUIT: %q", quit2)
	}
	var want []string
	for i := 3; i < len(uids); i++ {
		want = append(want, uidl(uids[i], validity))
	}
	var got []string
	for _, l := range res2.UIDL {
		_, u, _ := strings.Cut(l, " ")
		got = append(got, u)
	}
	if hidesDeleted && strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("UIDLs in the second session: %v, want %v (unchanged, \\Deleted ones left out)", got, want)
	}
}

// DESIGN invariant 1: DELE without QUIT (the client drops the connection)
// deletes nothing upstream.
func TestPoplibDropWithoutQuit(t *testing.T) {
	require(t, "python3")
	const user = "e2e-poplib-drop"
	pass := newUser(t, user)
	uids := appendAll(t, user, corpus()[:3])
	g := startGateway(t, pass)
	_, quit := poplibSession(t, g, user, pass, []int{1, 2, 3}, nil, "abort")
	if quit != "aborted" {
		t.Fatalf("script: %q", quit)
	}
	// A new session (the script retries while the maildrop is still
	// locked by the dropped one) sees all three.
	res, q := poplibSession(t, g, user, pass, nil, nil)
	if !strings.HasPrefix(q, "+OK") || len(res.Stat) != 2 || res.Stat[0] != 3 {
		t.Errorf("after a dropped session with DELE: STAT %v, QUIT %q; want 3 messages", res.Stat, q)
	}
	_, up := upstream(t, user)
	if len(up) != len(uids) {
		t.Errorf("upstream holds %d messages after a drop without QUIT, want %d", len(up), len(uids))
	}
	for _, m := range up {
		if m.has(imap.FlagDeleted) {
			t.Errorf("UID %d was flagged \\Deleted although the client never sent QUIT", m.UID)
		}
	}
}
