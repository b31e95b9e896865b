package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"net"
	"time"
)

const (
	// maxCommandLine is the longest command line, CRLF included (RFC 2449 §4).
	maxCommandLine = 255
	// maxSASLLine is the longest SASL continuation line, and the longest AUTH
	// command line with an initial response we accept. RFC 5034 §4 lets
	// clients send long responses on continuation lines (OAuth tokens).
	maxSASLLine  = 32 * 1024
	readBufSize  = 4096
	writeBufSize = 16 * 1024
)

// errLineTooLong reports a line over the limit; the whole line, up to and
// including its LF, has been consumed.
var errLineTooLong = errors.New("line too long")

// lineReader reads CRLF (or bare LF) terminated lines with a hard length
// cap, from a bufio.Reader whose buffer is the only buffering: an over-long
// line is read and dropped in buffer-sized chunks, never accumulated.
type lineReader struct {
	r   *bufio.Reader
	buf []byte // the current line; reused, so its content is only valid until the next read
}

// readLine returns the next line without its terminator. A line longer than
// max octets (terminator included) returns errLineTooLong after the rest of
// it has been discarded. If longer is not nil and the line's first octets make
// it answer true, the limit for this line becomes maxSASLLine instead.
// longer sees at most the first 8 octets.
func (lr *lineReader) readLine(limit int, longer func([]byte) bool) ([]byte, error) {
	lr.buf = lr.buf[:0]
	for {
		frag, err := lr.r.ReadSlice('\n')
		if len(lr.buf)+len(frag) > limit && longer != nil && limit < maxSASLLine {
			var head [8]byte
			n := copy(head[:], lr.buf)
			n += copy(head[n:], frag)
			if longer(head[:n]) {
				limit = maxSASLLine
			}
		}
		if len(lr.buf)+len(frag) > limit {
			lr.buf = lr.buf[:0]
			// Drop the rest of the line without keeping it.
			for err == bufio.ErrBufferFull {
				_, err = lr.r.ReadSlice('\n')
			}
			if err != nil {
				return nil, err
			}
			return nil, errLineTooLong
		}
		lr.buf = append(lr.buf, frag...)
		switch err {
		case nil:
			line := lr.buf[:len(lr.buf)-1] // drop LF
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
			return line, nil
		case bufio.ErrBufferFull:
			continue
		default:
			return nil, err
		}
	}
}

// wipe zeroes the line buffer (it may have held a password).
func (lr *lineReader) wipe() {
	b := lr.buf[:cap(lr.buf)]
	clear(b)
	if cap(lr.buf) > 2*maxCommandLine {
		lr.buf = nil // drop a big SASL buffer
	}
}

// completeLineBuffered reports whether a whole line waits in the read
// buffer. The writer is flushed when it does not (RFC 2449 §6.6: answers to
// a pipelined batch go out together, but never wait on the network).
func completeLineBuffered(r *bufio.Reader) bool {
	n := r.Buffered()
	if n == 0 {
		return false
	}
	b, _ := r.Peek(n)
	return bytes.IndexByte(b, '\n') >= 0
}

// deadlineWriter sets a write deadline before every write to the
// connection, and counts the octets written.
type deadlineWriter struct {
	c       net.Conn
	timeout time.Duration
	n       int64
	err     error // first write error; the connection is unusable after it
}

// maxWrite is the most written to the connection under one deadline, so
// that a large write (a span of a message written straight from the
// backend's buffer) still fails only when the client makes no progress for
// the write timeout.
const maxWrite = 64 * 1024

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	total := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), maxWrite)]
		if err := d.c.SetWriteDeadline(time.Now().Add(d.timeout)); err != nil {
			d.err = err
			return total, err
		}
		n, err := d.c.Write(chunk)
		d.n += int64(n)
		total += n
		if err != nil {
			d.err = err
			return total, err
		}
		p = p[n:]
	}
	return total, nil
}
