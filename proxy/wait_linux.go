package proxy

import (
	"net"
	"syscall"
)

// waitReadable blocks until c has data (or EOF, or an error) to read,
// without a buffer, honouring c's read deadline: an idle session then holds
// no read buffer (the reader goes back to its pool). It reports false when c
// cannot be waited on this way (a TLS connection keeps its own buffers).
func waitReadable(c net.Conn) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, nil
	}
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		// The socket is non-blocking: EAGAIN means nothing to read yet.
		_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
		return e != syscall.EAGAIN
	})
	return true, err
}
