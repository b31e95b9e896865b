//go:build !linux

package proxy

import "net"

// waitReadable is only implemented on Linux; elsewhere the session waits in
// its buffered read.
func waitReadable(net.Conn) (bool, error) { return false, nil }
