package main

import (
	"crypto/tls"
	"fmt"
	"os"
	"syscall"
	"testing"

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

// pop3 is the shared POP3 test client under the names these tests use.
type pop3 struct{ *testutil.POP3 }

// insecure accepts the tests' self-signed certificates.
var insecure = &tls.Config{InsecureSkipVerify: true}

// dialPOP3 connects and reads the +OK greeting; implicit selects POP3S.
func dialPOP3(t *testing.T, addr string, implicit bool) *pop3 {
	t.Helper()
	var c *testutil.POP3
	if implicit {
		c = testutil.DialPOP3S(t, addr, insecure)
	} else {
		c = testutil.DialPOP3(t, addr)
	}
	c.ExpectPrefix("+OK")
	return &pop3{c}
}

func (p *pop3) cmd(line string) string   { p.T().Helper(); return p.Cmd(line) }
func (p *pop3) ok(line string) string    { p.T().Helper(); return p.OK(line) }
func (p *pop3) multi(line string) []byte { p.T().Helper(); return p.Fetch(line) }
func (p *pop3) login(user, pass string)  { p.T().Helper(); p.Login(user, pass) }
func (p *pop3) stls()                    { p.T().Helper(); p.STLS(insecure) }

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
