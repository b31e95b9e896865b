package main

import (
	"syscall"
	"testing"
)

// Issue 14: by default popgate does not cap connections per client address:
// an office NAT or a load balancer without the PROXY protocol puts hundreds
// of POP3 clients behind one address. 60 connections from 127.0.0.1 at once
// (more than the former default of 50) are all greeted.
func TestDefaultConfigAcceptsManyConnectionsFromOneAddress(t *testing.T) {
	store := startStore(t, false)
	path, _, plain := serveConfig(t, t.TempDir(), "s0", "", store)
	p := startPopgate(t, "serve", "--config", path)
	p.waitLog(t, `"message":"listening"`, 2)

	const n = 60
	conns := make([]*pop3, 0, n)
	for i := 0; i < n; i++ {
		conns = append(conns, dialPOP3(t, plain, false)) // fails unless greeted with +OK
	}
	for _, c := range conns {
		c.ok("QUIT")
	}
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Errorf("exit status after SIGTERM = %d, want 0", code)
	}
}
