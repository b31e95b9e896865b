package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"

	"github.com/emersion/go-imap/v2/imapclient"
)

// binary is the popgate command built once for this test binary.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "popgate-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary, err = testutil.BuildPopgate(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// syncBuffer collects output written by other goroutines.
type syncBuffer = testutil.SyncBuffer

// proc is a running popgate (testutil.Proc under the names these tests use).
type proc struct {
	*testutil.Proc
	stdout, stderr *syncBuffer
}

// startPopgate runs the binary with args; it is killed at the end of the
// test if it is still running.
func startPopgate(t *testing.T, args ...string) *proc {
	t.Helper()
	p := testutil.StartProc(t, testutil.ProcOptions{}, binary, args...)
	return &proc{Proc: p, stdout: &p.Stdout, stderr: &p.Stderr}
}

// waitLog waits until stdout+stderr holds want n times.
func (p *proc) waitLog(t *testing.T, want string, n int) { t.Helper(); p.WaitLog(t, want, n) }

// wait waits for the process to exit and returns its status.
func (p *proc) wait(t *testing.T) int { t.Helper(); return p.Wait(t) }

func (p *proc) signal(t *testing.T, sig syscall.Signal) { t.Helper(); p.Signal(t, sig) }

// runPopgate runs the binary to its end and returns status, stdout, stderr.
func runPopgate(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	p := startPopgate(t, args...)
	code := p.wait(t)
	return code, p.stdout.String(), p.stderr.String()
}

// freeAddr returns a loopback address with a port free right now that no
// other caller in this test binary got.
func freeAddr(t *testing.T) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", testutil.FreePort(t))
}

// writeCert writes a self-signed certificate for 127.0.0.1 and returns the
// file names.
func writeCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	c, err := testutil.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err = c.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// pop3 is a minimal POP3 client for the tests.
type pop3 struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	tr []string // transcript, for failures
}

// dialPOP3 connects; implicit selects POP3S. The certificate is not verified
// (the tests' certificates are self-signed).
func dialPOP3(t *testing.T, addr string, implicit bool) *pop3 {
	t.Helper()
	var c net.Conn
	var err error
	d := &net.Dialer{Timeout: 10 * time.Second}
	if implicit {
		c, err = tls.DialWithDialer(d, "tcp", addr, &tls.Config{InsecureSkipVerify: true})
	} else {
		c, err = d.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	p := &pop3{t: t, c: c, r: bufio.NewReader(c)}
	t.Cleanup(func() { c.Close() })
	if g := p.line(); !strings.HasPrefix(g, "+OK") {
		t.Fatalf("greeting %q", g)
	}
	return p
}

func (p *pop3) line() string {
	p.t.Helper()
	s, err := p.r.ReadString('\n')
	if err != nil {
		p.t.Fatalf("reading from popgate: %v (transcript %q)", err, p.tr)
	}
	s = strings.TrimRight(s, "\r\n")
	p.tr = append(p.tr, "S: "+s)
	return s
}

// cmd sends a command and returns the status line.
func (p *pop3) cmd(line string) string {
	p.t.Helper()
	p.tr = append(p.tr, "C: "+line)
	if _, err := p.c.Write([]byte(line + "\r\n")); err != nil {
		p.t.Fatalf("writing %q: %v", line, err)
	}
	return p.line()
}

// ok sends a command that must succeed.
func (p *pop3) ok(line string) string {
	p.t.Helper()
	s := p.cmd(line)
	if !strings.HasPrefix(s, "+OK") {
		p.t.Fatalf("%s: %q (transcript %q)", line, s, p.tr)
	}
	return s
}

// multi sends a command with a multi-line answer and returns the body,
// dot-unstuffed, lines ending in CRLF.
func (p *pop3) multi(line string) []byte {
	p.t.Helper()
	p.ok(line)
	var b bytes.Buffer
	for {
		s, err := p.r.ReadString('\n')
		if err != nil {
			p.t.Fatalf("reading the answer to %q: %v", line, err)
		}
		if s == ".\r\n" {
			return b.Bytes()
		}
		b.WriteString(strings.TrimPrefix(s, ".")) // RFC 1939 §3: byte-stuffed lines
	}
}

// login by USER/PASS.
func (p *pop3) login(user, pass string) {
	p.t.Helper()
	p.ok("USER " + user)
	p.ok("PASS " + pass)
}

// stls upgrades a plain connection (RFC 2595).
func (p *pop3) stls() {
	p.t.Helper()
	p.ok("STLS")
	tc := tls.Client(p.c, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		p.t.Fatal(err)
	}
	p.c, p.r = tc, bufio.NewReader(tc)
}

// imapCount returns the number of messages in user's INBOX, asked over IMAP.
func imapCount(t *testing.T, addr, user, pass string) int {
	t.Helper()
	c, err := imapclient.DialInsecure(addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Login(user, pass).Wait(); err != nil {
		t.Fatal(err)
	}
	sel, err := c.Select("INBOX", nil).Wait()
	if err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
	return int(sel.NumMessages)
}
