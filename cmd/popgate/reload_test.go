package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/popgate/popgate/internal/testserver/dovecot"
)

// wiretap relays TCP connections to an upstream and records what clients
// send, so that a test sees the commands popgate sends to its IMAP server.
type wiretap struct {
	ln       net.Listener
	upstream string
	mu       sync.Mutex
	sent     strings.Builder
}

func startWiretap(t *testing.T, upstream string) *wiretap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w := &wiretap{ln: ln, upstream: upstream}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(c, u); c.Close() }()
			go func() { io.Copy(io.MultiWriter(u, w), c); u.Close() }()
		}
	}()
	return w
}

func (w *wiretap) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent.Write(p)
}

// take returns what clients sent since the last take.
func (w *wiretap) take() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.sent.String()
	w.sent.Reset()
	return s
}

// TestSIGHUPKeepsUnchangedBackend: a reload that leaves a backend's section
// as it was keeps its running instance, so a login to an unchanged mailbox
// after SIGHUP is served from the snapshot cache (no UID FETCH 1:* reaches
// Dovecot); a changed section gets a new instance with a cold cache.
func TestSIGHUPKeepsUnchangedBackend(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Users: map[string]string{"carol": "pw"}})
	for i := 1; i <= 3; i++ {
		if _, err := dc.Append("carol", "INBOX", []byte(fmt.Sprintf("Subject: m%d\r\n\r\nbody %d\r\n", i, i))); err != nil {
			t.Fatal(err)
		}
	}
	tap := startWiretap(t, dc.Addr())
	dir := t.TempDir()
	addr := freeAddr(t)
	config := func(idle, commandTimeout string) string {
		return fmt.Sprintf(`listeners: [{address: %q, tls: none}]
backends:
  dc: {type: imap, address: %q, tls: none, command_timeout: %s}
routes: [{match: "*", backend: dc}]
auth: {allow_plaintext: true, failure_delay: 0s}
session: {idle_timeout: %s}
log: {level: debug}
`, addr, tap.ln.Addr().String(), commandTimeout, idle)
	}
	path := filepath.Join(dir, "config.yaml")
	write := func(s string) {
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(config("10m", "30s"))
	p := startPopgate(t, "serve", "-c", path)
	p.waitLog(t, `"message":"listening"`, 1)

	session := func() {
		t.Helper()
		c := dialPOP3(t, addr, false)
		c.login("carol", "pw")
		if got := c.ok("STAT"); !strings.HasPrefix(got, "+OK 3 ") {
			t.Fatalf("STAT = %q, want 3 messages", got)
		}
		c.ok("QUIT")
	}
	const listing = "UID FETCH 1:*"
	session() // fills the snapshot cache
	if got := tap.take(); !strings.Contains(got, listing) {
		t.Fatalf("the first login sent no %s: the test proves nothing\n%s", listing, got)
	}
	session()
	if got := tap.take(); strings.Contains(got, listing) {
		t.Fatalf("a second login without reload listed the mailbox again: no CONDSTORE cache?\n%s", got)
	}

	// reload with a change elsewhere: the backend instance stays
	write(config("11m", "30s"))
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `"message":"configuration reloaded"`, 1)
	session()
	if got := tap.take(); strings.Contains(got, listing) {
		t.Errorf("after a reload that left the backend unchanged, the login listed the mailbox again:\n%s", got)
	}

	// reload with the backend changed while a session is open on it: new
	// sessions get a new instance (a cold cache); the open one finishes on
	// the old instance, which is closed when that session ends
	open := dialPOP3(t, addr, false)
	open.login("carol", "pw")
	tap.take()
	write(config("11m", "31s"))
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `"message":"configuration reloaded"`, 2)
	if got := string(open.multi("RETR 2")); got != "Subject: m2\r\n\r\nbody 2\r\n" {
		t.Errorf("RETR 2 in the session opened before the reload = %q", got)
	}
	open.ok("QUIT")
	p.waitLog(t, `"message":"backend closed"`, 1)
	if n := strings.Count(p.stderr.String(), `"message":"backend closed"`); n != 1 {
		t.Errorf("%d backends closed, want 1 (the replaced one)", n)
	}
	tap.take()
	session()
	if got := tap.take(); !strings.Contains(got, listing) {
		t.Errorf("after the backend changed, the login did not list the mailbox: the old instance was kept\n%s", got)
	}
}
