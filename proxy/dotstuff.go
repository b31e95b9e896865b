package proxy

import (
	"bufio"
	"bytes"
	"io"
)

// dotWriter frames a message as a POP3 multi-line response body (RFC 1939
// §3): a line starting with '.' gets one more '.', a bare LF becomes CRLF,
// and Close ends the body with CRLF.CRLF, adding a CRLF first if the
// message did not end with one. It holds no more than two bits of state, so
// memory does not depend on the message size (DESIGN invariant 7).
type dotWriter struct {
	w      *bufio.Writer
	midLn  bool  // some octets of the current line were written
	prevCR bool  // the last octet written was CR
	n      int64 // octets received, before stuffing

	// With out set (the connection's writer under w), a run longer than
	// w has room for goes out in one writev with what w holds (the +OK
	// line, stuffed lines), instead of a copy filling w, a flush and a
	// direct write.
	out  *deadlineWriter
	bufs [2][]byte
}

func (d *dotWriter) Write(p []byte) (int, error) {
	d.n += int64(len(p))
	// Octets go out in runs as long as possible: a run is cut only where a
	// '.' must be added or a bare LF needs its CR.
	run := 0 // start of the pending run in p
	for i := 0; i < len(p); {
		if !d.midLn && p[i] == '.' {
			// RFC 1939 §3: byte-stuff a line beginning with the termination octet.
			if err := d.put(p[run:i], "."); err != nil {
				return 0, err
			}
			run = i
		}
		j := bytes.IndexByte(p[i:], '\n')
		if j < 0 {
			d.midLn = true
			d.prevCR = p[len(p)-1] == '\r'
			break
		}
		lf := i + j
		if !(lf > 0 && p[lf-1] == '\r' || lf == 0 && d.prevCR) {
			// A bare LF ends a line too: send CRLF (RFC 1939 §3).
			if err := d.put(p[run:lf], "\r\n"); err != nil {
				return 0, err
			}
			run = lf + 1
		}
		d.midLn, d.prevCR = false, false
		i = lf + 1
	}
	if err := d.writeRun(p[run:]); err != nil {
		return 0, err
	}
	return len(p), nil
}

// writeRun writes a run of octets that need no stuffing (see out). A run
// longer than w has room for goes out with what w holds in writevs of at
// most maxWrite + 2 × w's size octets, but for its last w-full (less room
// for the terminator), which is copied into w: it goes out with the next
// run, or with the terminator.
func (d *dotWriter) writeRun(run []byte) error {
	if d.out == nil || len(run) <= d.w.Available() {
		_, err := d.w.Write(run)
		return err
	}
	// Take what w holds without a write (held aliases w's buffer, which
	// nothing touches before the writev).
	held, err := d.out.hold(d.w)
	if err != nil {
		return err
	}
	keep := d.w.Size() - 64 // room for the terminator after the kept octets
	for {
		n := len(run) - keep
		if n <= 0 {
			if len(held) == 0 {
				break
			}
			n = len(run) // what w held goes out now, with the whole run
		}
		if n > maxWrite+keep {
			n = maxWrite
		}
		k := 0
		if len(held) > 0 {
			d.bufs[k], k = held, k+1
		}
		d.bufs[k], k = run[:n], k+1
		run, held = run[n:], nil
		err := d.out.writev(d.bufs[:k])
		clear(d.bufs[:])
		if err != nil {
			return err
		}
	}
	_, err = d.w.Write(run)
	return err
}

// put writes b, then s.
func (d *dotWriter) put(b []byte, s string) error {
	if err := d.writeRun(b); err != nil {
		return err
	}
	_, err := d.w.WriteString(s)
	return err
}

// Close writes the terminator. It does not flush.
func (d *dotWriter) Close() error {
	if d.midLn {
		if d.prevCR {
			d.w.WriteByte('\n')
		} else {
			d.w.WriteString("\r\n")
		}
	}
	_, err := d.w.WriteString(".\r\n")
	return err
}

// topReader passes the header of a message, the empty line after it, and
// the first k body lines, then reports io.EOF (RFC 1939 §7, TOP). It makes
// TOP correct even when a backend returns the whole message.
type topReader struct {
	r       io.Reader
	k       int  // body lines still to pass
	inBody  bool // the empty line ending the header was passed
	nonBlnk bool // the current header line has an octet other than CR
	done    bool
}

func (t *topReader) Read(p []byte) (int, error) {
	if t.done || t.inBody && t.k <= 0 {
		t.done = true
		return 0, io.EOF
	}
	n, err := t.r.Read(p)
	for i := 0; i < n; i++ {
		c := p[i]
		if !t.inBody {
			switch c {
			case '\n':
				if !t.nonBlnk {
					t.inBody = true
					if t.k <= 0 {
						t.done = true
						return i + 1, nil
					}
				}
				t.nonBlnk = false
			case '\r':
			default:
				t.nonBlnk = true
			}
			continue
		}
		j := bytes.IndexByte(p[i:n], '\n')
		if j < 0 {
			break
		}
		i += j
		if t.k--; t.k <= 0 {
			t.done = true
			return i + 1, nil
		}
	}
	return n, err
}

// writerOnly and readerOnly hide ReadFrom/WriteTo so that io.CopyBuffer
// uses its fixed buffer.
type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }
