package testutil

import (
	"net"
	"sync"
	"testing"
)

// handedOut holds the ports FreePort already returned in this process: the
// kernel may give a just-closed ephemeral port out again, and two servers
// told to listen on one port fail (Pebble's ACME and management listeners
// once did).
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a loopback TCP port that was free at the time of the call
// and that it never returned before in this process. Prefer listening on
// 127.0.0.1:0 where the code under test accepts a listener; use this for
// servers that must be told a port (child processes, config files).
func FreePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}
