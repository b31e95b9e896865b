package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/tlsconf"
)

// scriptedServer answers a fixed POP3 dialogue on a loopback port: RETR 1
// returns body, dot-stuffed on the wire.
func scriptedServer(t *testing.T, body string) string {
	return scriptedServerTLS(t, body, nil, false)
}

// scriptedServerTLS is scriptedServer with implicit TLS (implicit) or STLS
// (RFC 2595) when conf is set.
func scriptedServerTLS(t *testing.T, body string, conf *tls.Config, implicit bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func(c net.Conn) {
				defer func() { c.Close() }()
				if implicit {
					c = tls.Server(c, conf)
				}
				r := bufio.NewReader(c)
				fmt.Fprintf(c, "+OK ready\r\n")
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					switch cmd := strings.Fields(line)[0]; cmd {
					case "STLS":
						if conf == nil || implicit {
							fmt.Fprintf(c, "-ERR no\r\n")
							continue
						}
						fmt.Fprintf(c, "+OK begin TLS\r\n")
						c = tls.Server(c, conf)
						r = bufio.NewReader(c)
					case "USER", "PASS":
						fmt.Fprintf(c, "+OK\r\n")
					case "STAT":
						fmt.Fprintf(c, "+OK 1 %d\r\n", len(body))
					case "LIST":
						fmt.Fprintf(c, "+OK\r\n1 %d\r\n.\r\n", len(body))
					case "RETR":
						var b strings.Builder
						b.WriteString("+OK\r\n")
						for _, l := range strings.SplitAfter(body, "\r\n") {
							if strings.HasPrefix(l, ".") {
								b.WriteString(".")
							}
							b.WriteString(l)
						}
						b.WriteString(".\r\n")
						io.WriteString(c, b.String())
					case "QUIT":
						fmt.Fprintf(c, "+OK bye\r\n")
						return
					default:
						fmt.Fprintf(c, "-ERR unknown\r\n")
					}
				}
			}(c)
		}
	}()
	return ln.Addr().String()
}

// RETR counts the octets of the message as LIST reports them: dot-stuffing
// removed, CRLF kept, a lone "." line inside the message not taken as the end.
func TestRetrUnstuffs(t *testing.T) {
	body := "Subject: dots\r\n\r\n.\r\n..two\r\n.x\r\n" + strings.Repeat("y", 100000) + "\r\nend\r\n"
	addr := scriptedServer(t, body)
	c, err := pop3client.Dial(addr, pop3client.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login("u", "p"); err != nil {
		t.Fatal(err)
	}
	n, size, err := c.Stat()
	if err != nil || n != 1 || size != int64(len(body)) {
		t.Fatalf("stat = %d %d %v", n, size, err)
	}
	got, err := c.Retr(1, nil)
	if err != nil || got != int64(len(body)) {
		t.Fatalf("retr = %d, %v; want %d", got, err, len(body))
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
}

func TestFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-addr", "192.0.2.1:110"},
		{"-addr", "example.org:110"},
		{"-mode", "bogus"},
		{"-c", "0"},
		{"-tls", "maybe"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("parseFlags(%q) accepted", args)
		}
	}
	cfg, err := parseFlags([]string{"-addr", "127.0.0.1:1", "-users", "u%d", "-nusers", "3", "-first", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.users, ",") != "u0,u1,u2" {
		t.Errorf("users = %v", cfg.users)
	}
}

// Against a real POP3 server (Dovecot's): login, retr with size checks, and
// idle sessions all complete without errors.
func TestAgainstDovecotPOP3(t *testing.T) {
	users := map[string]string{}
	for i := 1; i <= 4; i++ {
		users[fmt.Sprintf("load%d", i)] = "secret"
	}
	dc := dovecot.Start(t, dovecot.Options{Users: users, POP3: true})
	msg := []byte("Subject: load\r\n\r\n.leading dot\r\n" + strings.Repeat("0123456789", 2000) + "\r\n")
	var want int64
	for u := range users {
		for i := 0; i < 3; i++ {
			if _, err := dc.Append(u, "INBOX", msg); err != nil {
				t.Fatal(err)
			}
		}
		want += 3 * int64(len(msg))
	}
	base := []string{"-addr", dc.POP3Addr(), "-users", "load%d", "-nusers", "4", "-pass", "secret", "-c", "4"}
	never := make(chan os.Signal)

	cfg, err := parseFlags(append(base, "-mode", "login", "-n", "20"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res := runLoad(cfg, never)
	if res.errors != 0 || res.sessions != 20 {
		t.Errorf("login: %s %v", res, res.firstErrors)
	}

	cfg, err = parseFlags(append(base, "-mode", "retr", "-n", "4", "-verify"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	res = runLoad(cfg, never)
	if res.errors != 0 || res.sessions != 4 || res.messages != 12 || res.bytes != want {
		t.Errorf("retr: %s %v; want 12 messages, %d bytes", res, res.firstErrors, want)
	}

	// poll: primed, then only the messages appended since are retrieved.
	cfg, err = parseFlags(append(base, "-mode", "poll", "-interval", "0", "-n", "4", "-verify"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg.statePath = filepath.Join(t.TempDir(), "state.json")
	if res = runPoll(cfg, never); res.errors != 0 || res.sessions != 4 || res.messages != 0 {
		t.Errorf("poll, primed: %s %v; want 4 polls, nothing retrieved", res, res.firstErrors)
	}
	for _, u := range []string{"load1", "load3"} {
		if _, err := dc.Append(u, "INBOX", msg); err != nil {
			t.Fatal(err)
		}
	}
	cfg.count = 8
	if res = runPoll(cfg, never); res.errors != 0 || res.sessions != 8 || res.messages != 2 || res.bytes != 2*int64(len(msg)) {
		t.Errorf("poll after 2 appends: %s %v; want 2 messages, %d bytes", res, res.firstErrors, 2*len(msg))
	}

	cfg, err = parseFlags(append(base, "-mode", "idle", "-sessions", "4", "-d", "10ms"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	res = runIdle(cfg, never, &out)
	if res.errors != 0 || res.sessions != 4 || !strings.HasPrefix(out.String(), "ready sessions=4 errors=0") {
		t.Errorf("idle: %s %v %q", res, res.firstErrors, out.String())
	}
}

// Random messages, dense with lines that begin with dots, at sizes around
// the read buffer: the octet count always equals the message size.
func TestRetrUnstuffsRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for c := 0; c < 30; c++ {
		var b strings.Builder
		size := rng.IntN(200 << 10)
		for b.Len() < size {
			switch rng.IntN(4) {
			case 0:
				b.WriteString(".")
			case 1:
				b.WriteString("..")
			}
			b.WriteString(strings.Repeat("x", rng.IntN(100)))
			b.WriteString("\r\n")
		}
		body := b.String()
		addr := scriptedServer(t, body)
		pc, err := pop3client.Dial(addr, pop3client.Options{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := pc.Login("u", "p"); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ { // twice: the first body must end exactly at its terminator
			if got, err := pc.Retr(1, nil); err != nil || got != int64(len(body)) {
				t.Fatalf("case %d: retr = %d, %v; want %d", c, got, err, len(body))
			}
		}
		pc.Close()
	}
}

// -tls implicit and -tls starttls reach the server over TLS.
func TestTLSModes(t *testing.T) {
	cert, err := tlsconf.SelfSigned("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer cert.Close()
	body := "Subject: tls\r\n\r\nover TLS\r\n"
	for _, mode := range []string{"implicit", "starttls"} {
		addr := scriptedServerTLS(t, body, cert.ServerConfig(), mode == "implicit")
		cfg, err := parseFlags([]string{"-addr", addr, "-tls", mode, "-insecure", "-users", "u", "-pass", "p", "-mode", "retr", "-n", "3", "-c", "1", "-verify"}, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		res := runLoad(cfg, make(chan os.Signal))
		if res.errors != 0 || res.sessions != 3 || res.bytes != 3*int64(len(body)) {
			t.Errorf("-tls %s: %s %v", mode, res, res.firstErrors)
		}
		// Without -insecure the self-signed certificate is refused.
		cfg.tlsConf.InsecureSkipVerify = false
		cfg.count = 1
		if res := runLoad(cfg, make(chan os.Signal)); res.errors == 0 {
			t.Errorf("-tls %s accepted a self-signed certificate without -insecure", mode)
		}
	}
}
