package cyrus

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
)

func TestStartAppendJMAPAndPOP3(t *testing.T) {
	s := Start(t, Options{Users: map[string]string{"alice": "alice-pw"}, POP3: true})
	raw := []byte("Subject: hi\r\nFrom: a@example.org\r\n\r\nhello\r\n")
	uid, err := s.Append("alice", "INBOX", raw, imap.FlagSeen)
	if err != nil {
		t.Fatal(err, s.Log())
	}
	if uid != 1 {
		t.Fatalf("uid = %d, want 1", uid)
	}
	if err := s.JMAPReady("alice"); err != nil {
		t.Fatal(err)
	}
	// Wrong password: 401.
	req, _ := http.NewRequest("GET", s.SessionURL(), nil)
	req.SetBasicAuth("alice", "wrong")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("wrong password: %s", resp.Status)
	}
	// Users added later log in at once; a second mailbox is created.
	if err := s.AddUser("bob", "bob-pw"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append("bob", "Archive", raw); err != nil {
		t.Fatal(err)
	}

	// Cyrus' own POP3 sees the message, UIDL <uidvalidity>.<uid>.
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
	for _, cmd := range []string{"USER alice", "PASS alice-pw", "STAT"} {
		fmt.Fprintf(pc, "%s\r\n", cmd)
		if l := line(); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("%s: %s", cmd, l)
		} else if cmd == "STAT" && strings.TrimSpace(l) != fmt.Sprintf("+OK 1 %d", len(raw)) {
			t.Fatalf("STAT = %q", l)
		}
	}
	fmt.Fprintf(pc, "RETR 1\r\n")
	line()
	var got bytes.Buffer
	for l := line(); l != ".\r\n" && l != ""; l = line() {
		got.WriteString(l)
	}
	if got.String() != string(raw) {
		t.Fatalf("RETR = %q", got.String())
	}
	fmt.Fprintf(pc, "QUIT\r\n")
}

// Users added at once get distinct mailboxes (JMAP Mailbox ids): see
// createMu.
func TestParallelUsersDistinctMailboxIDs(t *testing.T) {
	s := Start(t, Options{})
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() { errs <- s.AddUser(fmt.Sprintf("p%d", i), "pw") }()
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]string{}
	for i := 0; i < n; i++ {
		u := fmt.Sprintf("p%d", i)
		req, _ := http.NewRequest("POST", "http://"+s.HTTPAddr()+"/jmap/", strings.NewReader(
			`{"using":["urn:ietf:params:jmap:core","urn:ietf:params:jmap:mail"],"methodCalls":[["Mailbox/get",{"accountId":"`+u+`","ids":null,"properties":["id"]},"m"]]}`))
		req.SetBasicAuth(u, "pw")
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			MethodResponses [][]json.RawMessage `json:"methodResponses"`
		}
		json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		var got struct{ List []struct{ ID string } }
		json.Unmarshal(r.MethodResponses[0][1], &got)
		if len(got.List) != 5 {
			t.Fatalf("%s: %d mailboxes", u, len(got.List))
		}
		for _, m := range got.List {
			if other, dup := seen[m.ID]; dup {
				t.Fatalf("mailbox id %s of %s is also %s's", m.ID, u, other)
			}
			seen[m.ID] = u
		}
	}
}
