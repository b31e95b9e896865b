package migration

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/internal/testserver/dovecot"
)

func testMessages() [][]byte {
	return [][]byte{
		[]byte("Message-ID: <m1@old>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: a@x\r\nSubject: one\r\n\r\nfirst\r\n"),
		[]byte("Date: Mon, 1 Jan 2024 11:00:00 +0000\r\nFrom: scanner@x\r\nSubject: scan\r\n\r\n.dot line\r\n"),
		[]byte("Message-ID: <m3@old>\r\nSubject: three\r\n  folded\r\n\r\nthird\r\n"),
	}
}

// TestCaptureDovecot captures a real Dovecot POP3 server whose UIDL format
// is not popgate's, and checks that nothing was deleted or marked read.
func TestCaptureDovecot(t *testing.T) {
	old := dovecot.Start(t, dovecot.Options{
		Users: map[string]string{"alice": "old-pw"},
		POP3:  true,
		Extra: "pop3_uidl_format = %v.%u\n",
	})
	msgs := testMessages()
	for _, m := range msgs {
		if _, err := old.Append("alice", "INBOX", m); err != nil {
			t.Fatal(err)
		}
	}
	c, err := pop3client.Dial(old.POP3Addr(), pop3client.Options{TLS: pop3client.STLSIfOffered, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := Capture(c, "alice", "old-pw")
	if err != nil {
		t.Fatal(err)
	}
	if !res.UsedTOP || res.Skipped != 0 || len(res.Entries) != len(msgs) {
		t.Fatalf("capture: %+v", res)
	}
	for i, e := range res.Entries {
		if want := MatchKey(msgs[i]).String(); e.Key != want {
			t.Errorf("message %d: key %s, want %s", i+1, e.Key, want)
		}
		if !strings.HasSuffix(e.UIDL, fmt.Sprintf(".%d", i+1)) {
			t.Errorf("message %d: UIDL %q is not Dovecot's %%v.%%u", i+1, e.UIDL)
		}
	}
	// The old server still holds everything, unread.
	c2, err := pop3client.Dial(old.POP3Addr(), pop3client.Options{Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Login("alice", "old-pw"); err != nil {
		t.Fatal(err)
	}
	if n, _, err := c2.Stat(); err != nil || n != len(msgs) {
		t.Fatalf("after capture: STAT %d %v", n, err)
	}
	c2.Quit()
	if err := c.Login("x", "y"); err == nil {
		t.Error("the capture connection is still open after QUIT")
	}

	t.Run("wrong password", func(t *testing.T) {
		c, err := pop3client.Dial(old.POP3Addr(), pop3client.Options{Timeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = Capture(c, "alice", "secret-wrong")
		if err == nil || strings.Contains(err.Error(), "secret-wrong") {
			t.Fatalf("error %v", err)
		}
	})
}

// fakeRFC1939 is a POP3 server of the oldest kind: no CAPA, no TOP (both
// optional in RFC 1939), which real servers cannot be configured to be.
func fakeRFC1939(t *testing.T, msgs [][]byte) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				r := bufio.NewReader(nc)
				fmt.Fprintf(nc, "+OK old server\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					f := strings.Fields(line)
					if len(f) == 0 {
						continue
					}
					switch strings.ToUpper(f[0]) {
					case "USER", "PASS":
						fmt.Fprintf(nc, "+OK\r\n")
					case "UIDL":
						fmt.Fprintf(nc, "+OK\r\n")
						for i := range msgs {
							fmt.Fprintf(nc, "%d old-%d\r\n", i+1, i+1)
						}
						fmt.Fprintf(nc, ".\r\n")
					case "RETR":
						var n int
						fmt.Sscan(f[1], &n)
						fmt.Fprintf(nc, "+OK\r\n")
						for _, l := range strings.SplitAfter(string(msgs[n-1]), "\r\n") {
							if strings.HasPrefix(l, ".") {
								l = "." + l
							}
							fmt.Fprint(nc, l)
						}
						fmt.Fprintf(nc, ".\r\n")
					case "QUIT":
						fmt.Fprintf(nc, "+OK\r\n")
						return
					default:
						fmt.Fprintf(nc, "-ERR unknown command\r\n")
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

func TestCaptureWithoutTOP(t *testing.T) {
	msgs := testMessages()
	addr := fakeRFC1939(t, msgs)
	c, err := pop3client.Dial(addr, pop3client.Options{TLS: pop3client.STLSIfOffered, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := Capture(c, "u", "p")
	if err != nil {
		t.Fatal(err)
	}
	if res.UsedTOP || len(res.Entries) != len(msgs) {
		t.Fatalf("capture: %+v", res)
	}
	for i, e := range res.Entries {
		if e.UIDL != fmt.Sprintf("old-%d", i+1) || e.Key != MatchKey(msgs[i]).String() {
			t.Errorf("entry %d: %+v", i, e)
		}
	}
}
