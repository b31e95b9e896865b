package dovecot

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

func TestStartAppendFetchAndPOP3(t *testing.T) {
	s := Start(t, Options{Users: map[string]string{"alice": "secret"}, POP3: true})
	raw := []byte("Subject: hi\n\nhello\n")
	uid, err := s.Append("alice", "INBOX", raw, imap.FlagSeen)
	if err != nil {
		t.Fatal(err, s.Log())
	}
	if uid != 1 {
		t.Fatalf("uid = %d, want 1", uid)
	}
	if err := s.AddUser("bob", "pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("bob", "Archive", raw); err != nil {
		t.Fatal(err)
	}
	c, err := s.Dial("alice")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{RFC822Size: true, BodySection: []*imap.FetchItemBodySection{{Peek: true}}}).Collect()
	if err != nil || len(msgs) != 1 {
		t.Fatal(msgs, err)
	}
	want := Lines(raw)
	if got := msgs[0].BodySection[0].Bytes; !bytes.Equal(got, want) || msgs[0].RFC822Size != int64(len(want)) {
		t.Fatalf("got %q size %d, want %q", got, msgs[0].RFC822Size, want)
	}
	if err := c.Logout().Wait(); err != nil {
		t.Fatal(err)
	}

	// Dovecot's own POP3 sees the same message.
	pc, err := net.DialTimeout("tcp", s.POP3Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(pc)
	line := func() string { l, _ := r.ReadString('\n'); return l }
	if l := line(); !strings.HasPrefix(l, "+OK") {
		t.Fatal(l)
	}
	for _, cmd := range []string{"USER alice", "PASS secret", "STAT"} {
		pc.Write([]byte(cmd + "\r\n"))
		if l := line(); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("%s: %s", cmd, l)
		} else if cmd == "STAT" && strings.TrimSpace(l) != "+OK 1 "+strconv.Itoa(len(want)) {
			t.Fatalf("STAT = %q", l)
		}
	}
	pc.Write([]byte("UIDL 1\r\n"))
	// pop3_uidl_format %08Xu%08Xv: Dovecot's X gives lowercase hex.
	if l, want := line(), fmt.Sprintf("+OK 1 %08x%08x\r\n", uid, sel.UIDValidity); l != want {
		t.Fatalf("UIDL 1 = %q, want %q", l, want)
	}
	pc.Write([]byte("QUIT\r\n"))
}

func TestLines(t *testing.T) {
	if got := string(Lines([]byte("a\nb\r\nc"))); got != "a\r\nb\r\nc" {
		t.Fatalf("%q", got)
	}
}

// Dovecot's own POP3-over-IMAP gateway (imapc) in front of another private
// Dovecot: how benchmarks set up the peer popgate is compared with.
func TestImapcGateway(t *testing.T) {
	users := map[string]string{"carol": "pw-carol"}
	up := Start(t, Options{Users: users})
	gw := Start(t, Options{
		Users:  users,
		POP3:   true,
		NoIMAP: true,
		Extra: "mail_location = imapc:~/imapc\nimapc_host = 127.0.0.1\n" +
			"imapc_port = " + strings.Split(up.Addr(), ":")[1] + "\nimapc_features = rfc822.size fetch-headers\n",
		PassdbExtra: "override_fields = userdb_imapc_user=%u userdb_imapc_password=%w",
	})
	raw := []byte("Subject: via imapc\r\n\r\nbody\r\n")
	if _, err := up.Append("carol", "INBOX", raw); err != nil {
		t.Fatal(err)
	}
	pc, err := net.DialTimeout("tcp", gw.POP3Addr(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pc.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(pc)
	r.ReadString('\n')
	for _, cmd := range []string{"USER carol", "PASS pw-carol", "STAT"} {
		pc.Write([]byte(cmd + "\r\n"))
		l, _ := r.ReadString('\n')
		if !strings.HasPrefix(l, "+OK") {
			t.Fatalf("%s: %q\n%s", cmd, l, gw.Log())
		}
		if cmd == "STAT" && strings.TrimSpace(l) != "+OK 1 "+strconv.Itoa(len(raw)) {
			t.Fatalf("STAT through imapc = %q", l)
		}
	}
	pc.Write([]byte("QUIT\r\n"))
}
