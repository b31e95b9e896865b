package proxy

// Connection plumbing: the line reader with its limits, the buffered writer
// over a deadline-setting counting writer, buffer pools, and the TLS
// upgrade. Nothing here knows a POP3 command; session.go drives it.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
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

// Connection buffers are recycled: a connection's goroutine is their only
// user while it holds them.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}
	writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, writeBufSize) }}
)

// clientConn is one client connection: the accepted socket, TLS over it
// once negotiated, a pooled line reader and a pooled buffered writer. An
// idle connection gives both buffers back to their pools where it can.
type clientConn struct {
	raw net.Conn // the accepted connection
	nc  net.Conn // raw, or the *tls.Conn over it
	tls bool     // nc is TLS

	lr  lineReader
	out deadlineWriter // under w: deadlines, octet count, first write error
	w   *bufio.Writer  // nil while idle (back in the pool)
}

func (c *clientConn) init(nc net.Conn, writeTimeout time.Duration) {
	c.raw, c.nc = nc, nc
	c.out = deadlineWriter{c: nc, timeout: writeTimeout}
	c.lr.r = readerPool.Get().(*bufio.Reader)
	c.lr.r.Reset(nc)
	c.acquireWriter()
}

// acquireWriter takes a write buffer from the pool for the next answers.
func (c *clientConn) acquireWriter() {
	if c.w == nil {
		c.w = writerPool.Get().(*bufio.Writer)
		c.w.Reset(&c.out)
	}
}

// releaseWriter gives the (flushed) write buffer back to the pool while the
// connection waits for the client, so that an idle session does not hold one.
func (c *clientConn) releaseWriter() {
	if c.w != nil && c.w.Buffered() == 0 {
		c.w.Reset(nil)
		writerPool.Put(c.w)
		c.w = nil
	}
}

// flush sends what is buffered.
func (c *clientConn) flush() error { return c.w.Flush() }

// flushIdle sends what is buffered and gives the write buffer back: the
// connection now waits for the client.
func (c *clientConn) flushIdle() error {
	if err := c.w.Flush(); err != nil {
		return err
	}
	c.releaseWriter()
	return nil
}

// flushUnlessPipelined flushes unless a whole command line already waits in
// the read buffer (RFC 2449 §6.6: answers to a pipelined batch go out
// together, but never wait on the network).
func (c *clientConn) flushUnlessPipelined() error {
	if completeLineBuffered(c.lr.r) {
		return nil
	}
	return c.flushIdle()
}

// waitIdle waits for the next line without holding a read buffer when none
// is pending in it (plaintext connections on Linux).
func (c *clientConn) waitIdle() error {
	if c.tls || c.lr.r.Buffered() > 0 {
		return nil
	}
	c.lr.r.Reset(nil)
	readerPool.Put(c.lr.r)
	_, err := waitReadable(c.nc)
	c.lr.r = readerPool.Get().(*bufio.Reader)
	c.lr.r.Reset(c.nc)
	return err
}

// readCommand waits up to timeout for the next command line (at most
// maxCommandLine octets, or maxSASLLine for a line isLong accepts) and
// takes a write buffer for the answer. The line is valid until the next
// read.
func (c *clientConn) readCommand(timeout time.Duration, isLong func([]byte) bool) ([]byte, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if err := c.waitIdle(); err != nil {
		return nil, err
	}
	line, err := c.lr.readLine(maxCommandLine, isLong)
	c.acquireWriter()
	return line, err
}

// readContinuation reads one SASL continuation line of up to maxSASLLine
// octets within timeout (RFC 5034 §4).
func (c *clientConn) readContinuation(timeout time.Duration) ([]byte, error) {
	if err := c.nc.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	return c.lr.readLine(maxSASLLine, nil)
}

// pendingInput reports whether octets the client sent wait in the read
// buffer.
func (c *clientConn) pendingInput() bool { return c.lr.r.Buffered() > 0 }

// prompt writes one line and flushes it: a server challenge the client
// must answer before the command goes on (RFC 5034 §4).
func (c *clientConn) prompt(line string) error {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
	return c.w.Flush()
}

// writeFailed is the first error writing to the client, if any: the
// connection is unusable after it.
func (c *clientConn) writeFailed() error { return c.out.err }

// sent is the number of octets written to the client.
func (c *clientConn) sent() int64 { return c.out.n }

// startTLS runs the server side of TLS on the raw connection within
// timeout (or until ctx ends). Nothing read before is used after it (RFC
// 2595 §4): the reader is reset onto the TLS connection. hello is what the
// client offered, nil if no ClientHello arrived.
func (c *clientConn) startTLS(ctx context.Context, base *tls.Config, timeout time.Duration) (hello *tls.ClientHelloInfo, err error) {
	cfg := base.Clone()
	next := base.GetConfigForClient
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		hello = h
		if next != nil {
			return next(h)
		}
		return nil, nil
	}
	tc := tls.Server(c.raw, cfg)
	_ = c.raw.SetDeadline(time.Now().Add(timeout))
	ctx, cancel := context.WithTimeout(ctx, timeout)
	err = tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		return hello, err
	}
	_ = c.raw.SetDeadline(time.Time{})
	c.nc = tc
	c.tls = true
	c.lr.r.Reset(tc)
	c.out.c = tc
	return hello, nil
}

// close closes the connection and gives the buffers back to their pools;
// what is still buffered is flushed first when flush is true.
func (c *clientConn) close(flush bool) {
	if c.w != nil && flush && c.out.err == nil {
		_ = c.w.Flush()
	}
	c.nc.Close()
	c.raw.Close()
	c.lr.wipe()
	c.lr.r.Reset(nil)
	readerPool.Put(c.lr.r)
	if c.w != nil {
		c.w.Reset(nil)
		writerPool.Put(c.w)
	}
	c.lr.r, c.w = nil, nil
}

// errLineTooLong reports a line over the limit; the whole line, up to and
// including its LF, has been consumed.
var errLineTooLong = errors.New("line too long")

// errLongLineBusy reports a long SASL line refused because the server's
// cap on them (Options.MaxSASLBuffers) is reached; the whole line has been
// consumed, as for errLineTooLong.
var errLongLineBusy = errors.New("too many long SASL lines being read")

// lineReader reads CRLF (or bare LF) terminated lines with a hard length
// cap, from a bufio.Reader whose buffer is the only buffering: an over-long
// line is read and dropped in buffer-sized chunks, never accumulated.
type lineReader struct {
	r   *bufio.Reader
	buf []byte // the current line; reused, so its content is only valid until the next read
	// budget is the server's cap on long SASL lines; held: this reader
	// holds one of them (its buf may grow up to maxSASLLine) until wipe.
	// onBusy, if set, is called when the cap refuses a line, at once
	// (the answer waits for the line's end).
	budget *lineBudget
	held   bool
	onBusy func()
}

// readLine returns the next line without its terminator. A line longer than
// max octets (terminator included) returns errLineTooLong after the rest of
// it has been discarded. If longer is not nil and the line's first octets make
// it answer true, the limit for this line becomes maxSASLLine instead.
// longer sees at most the first 8 octets.
//
// What it takes from the bufio.Reader's buffer (pooled, shared by sessions
// over time) is zeroed there at once: a line may hold a password, and only
// lr.buf keeps it, until wipe.
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
		over := len(lr.buf)+len(frag) > limit
		busy := false
		if !over && len(lr.buf)+len(frag) > maxCommandLine && !lr.held {
			// A long SASL line: it needs one of the server's buffers.
			if lr.held = lr.budget.acquire(); !lr.held {
				over, busy = true, true
				if lr.onBusy != nil {
					lr.onBusy()
				}
			}
		}
		if over {
			clear(lr.buf)
			lr.buf = lr.buf[:0]
			clear(frag)
			lr.releaseLong()
			// Drop the rest of the line without keeping it.
			for err == bufio.ErrBufferFull {
				var rest []byte
				rest, err = lr.r.ReadSlice('\n')
				clear(rest)
			}
			if err != nil {
				return nil, err
			}
			if busy {
				return nil, errLongLineBusy
			}
			return nil, errLineTooLong
		}
		lr.buf = append(lr.buf, frag...)
		clear(frag) // consumed: the reader never looks at it again
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

// wipe zeroes the line buffer (it may have held a password). Copies made
// from it as strings (backends.Credentials.Password, the fields of an AUTH
// line) cannot be cleared: they live until the garbage collector reclaims
// them. A TLS connection's own buffers are out of reach too.
func (lr *lineReader) wipe() {
	b := lr.buf[:cap(lr.buf)]
	clear(b)
	if cap(lr.buf) > 2*maxCommandLine {
		lr.buf = nil // drop a big SASL buffer
	}
	lr.releaseLong()
}

// releaseLong gives back the long-line buffer this reader holds, if any
// (the line's content must be cleared already).
func (lr *lineReader) releaseLong() {
	if lr.held {
		lr.buf = nil
		lr.held = false
		lr.budget.release()
	}
}

// completeLineBuffered reports whether a whole line waits in the read
// buffer.
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

	holding bool   // hold: Write keeps p instead of writing it
	held    []byte // what hold took
}

// hold empties w, whose writer is d, without writing: it returns what w
// held, valid until w is written to again.
func (d *deadlineWriter) hold(w *bufio.Writer) ([]byte, error) {
	if w.Buffered() == 0 {
		return nil, nil
	}
	d.holding = true
	err := w.Flush()
	d.holding = false
	p := d.held
	d.held = nil
	return p, err
}

// writev writes bufs (at most maxWrite octets in all) under one deadline,
// in one writev on a TCP connection.
func (d *deadlineWriter) writev(bufs [][]byte) error {
	if d.err != nil {
		return d.err
	}
	if err := d.c.SetWriteDeadline(time.Now().Add(d.timeout)); err != nil {
		d.err = err
		return err
	}
	nb := net.Buffers(bufs)
	n, err := nb.WriteTo(d.c)
	d.n += n
	if err != nil {
		d.err = err
	}
	return err
}

// maxWrite is the most written to the connection under one deadline, so
// that a large write (a span of a message written straight from the
// backend's buffer) still fails only when the client makes no progress for
// the write timeout. (dotWriter's writev adds what the write buffer held
// and the run's tail: at most 96 KiB under one deadline.)
const maxWrite = 64 * 1024

func (d *deadlineWriter) Write(p []byte) (int, error) {
	if d.err != nil {
		return 0, d.err
	}
	if d.holding {
		d.held = p
		return len(p), nil
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
