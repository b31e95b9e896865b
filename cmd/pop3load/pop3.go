package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// pop3Conn is a minimal POP3 client (RFC 1939) for load generation: one
// command at a time, a deadline on every exchange.
type pop3Conn struct {
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
}

// errResponse is a -ERR answer; its text is the server's, which never holds
// the password we sent.
type errResponse struct {
	cmd  string
	text string
}

func (e *errResponse) Error() string { return e.cmd + ": -ERR " + e.text }

type tlsMode int

const (
	tlsNone tlsMode = iota
	tlsImplicit
	tlsSTLS
)

func dialPOP3(addr string, mode tlsMode, tlsConf *tls.Config, timeout time.Duration) (*pop3Conn, error) {
	d := net.Dialer{Timeout: timeout}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	if mode == tlsImplicit {
		tc := tls.Client(nc, tlsConf)
		tc.SetDeadline(time.Now().Add(timeout))
		if err := tc.Handshake(); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	c := &pop3Conn{nc: nc, timeout: timeout}
	c.r = bufio.NewReaderSize(nc, 64<<10)
	c.w = bufio.NewWriterSize(nc, 512)
	c.nc.SetDeadline(time.Now().Add(timeout))
	if _, err := c.status("greeting"); err != nil {
		nc.Close()
		return nil, err
	}
	if mode == tlsSTLS {
		// RFC 2595 §4: STLS, then a fresh reader over the TLS connection.
		if _, err := c.cmd("STLS"); err != nil {
			nc.Close()
			return nil, err
		}
		if c.r.Buffered() > 0 {
			nc.Close()
			return nil, errors.New("STLS: server sent data after +OK")
		}
		tc := tls.Client(nc, tlsConf)
		if err := tc.Handshake(); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c.nc = tc
		c.r = bufio.NewReaderSize(tc, 64<<10)
		c.w = bufio.NewWriterSize(tc, 512)
	}
	return c, nil
}

func (c *pop3Conn) Close() error { return c.nc.Close() }

// status reads one status line and returns the text after +OK.
func (c *pop3Conn) status(cmd string) (string, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", fmt.Errorf("%s: status line too long", cmd)
		}
		return "", fmt.Errorf("%s: %w", cmd, err)
	}
	s := strings.TrimRight(string(line), "\r\n")
	switch {
	case strings.HasPrefix(s, "+OK"):
		return strings.TrimPrefix(strings.TrimPrefix(s, "+OK"), " "), nil
	case strings.HasPrefix(s, "-ERR"):
		return "", &errResponse{cmd: cmd, text: strings.TrimPrefix(strings.TrimPrefix(s, "-ERR"), " ")}
	default:
		return "", fmt.Errorf("%s: unexpected response %.40q", cmd, s)
	}
}

// cmd sends one command line and reads its status line. The name used in
// errors is the command's first word, so that a password never shows.
func (c *pop3Conn) cmd(line string) (string, error) {
	name, _, _ := strings.Cut(line, " ")
	c.nc.SetDeadline(time.Now().Add(c.timeout))
	if _, err := c.w.WriteString(line + "\r\n"); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	if err := c.w.Flush(); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return c.status(name)
}

// login runs USER and PASS (RFC 1939 §7).
func (c *pop3Conn) login(user, pass string) error {
	if _, err := c.cmd("USER " + user); err != nil {
		return err
	}
	_, err := c.cmd("PASS " + pass)
	return err
}

// stat returns the message count and maildrop size (RFC 1939 §5).
func (c *pop3Conn) stat() (n int, size int64, err error) {
	s, err := c.cmd("STAT")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(s)
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("STAT: malformed answer %.40q", s)
	}
	if n, err = strconv.Atoi(f[0]); err != nil {
		return 0, 0, fmt.Errorf("STAT: %w", err)
	}
	if size, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("STAT: %w", err)
	}
	return n, size, nil
}

// list returns the size of every message, indexed by message number - 1
// (RFC 1939 §5 LIST). Deleted numbers are -1.
func (c *pop3Conn) list(n int) ([]int64, error) {
	if _, err := c.cmd("LIST"); err != nil {
		return nil, err
	}
	sizes := make([]int64, n)
	for i := range sizes {
		sizes[i] = -1
	}
	err := c.multiline(func(line []byte) error {
		f := strings.Fields(string(line))
		if len(f) != 2 {
			return fmt.Errorf("LIST: malformed line %.40q", line)
		}
		num, err1 := strconv.Atoi(f[0])
		sz, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil || num < 1 || num > n {
			return fmt.Errorf("LIST: malformed line %.40q", line)
		}
		sizes[num-1] = sz
		return nil
	})
	return sizes, err
}

// retr retrieves message num and returns its size in octets after removing
// the dot-stuffing (RFC 1939 §3), which is what LIST reports.
func (c *pop3Conn) retr(num int) (int64, error) {
	if _, err := c.cmd("RETR " + strconv.Itoa(num)); err != nil {
		return 0, err
	}
	return c.body()
}

var nlDot = []byte("\n.")

// body consumes a multi-line response body up to its terminating line and
// returns the octets of the message it carries: everything but the
// terminator and the dot added to lines that begin with one (RFC 1939 §3).
// It works on the buffered data in bulk, looking only at line starts that
// hold a dot, so that the load tool costs little CPU next to the server.
func (c *pop3Conn) body() (int64, error) {
	var n, sinceDeadline int64
	atStart := true // the next octet begins a line
	for {
		if atStart {
			p, err := c.r.Peek(3)
			if err != nil {
				return n, unexpected(err)
			}
			if p[0] == '.' {
				if p[1] == '\r' && p[2] == '\n' {
					c.r.Discard(3)
					return n, nil
				}
				c.r.Discard(1) // the stuffed dot
			}
			atStart = false
		}
		if c.r.Buffered() == 0 {
			if _, err := c.r.Peek(1); err != nil {
				return n, unexpected(err)
			}
		}
		buf, _ := c.r.Peek(c.r.Buffered())
		k := len(buf)
		if i := bytes.Index(buf, nlDot); i >= 0 {
			k, atStart = i+1, true
		} else if buf[k-1] == '\n' {
			atStart = true
		}
		c.r.Discard(k)
		n += int64(k)
		if sinceDeadline += int64(k); sinceDeadline > 1<<20 { // keep long transfers alive, cheaply
			sinceDeadline = 0
			c.nc.SetDeadline(time.Now().Add(c.timeout))
		}
	}
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// multiline reads a multi-line response body up to the terminating ".",
// calling fn with each line without its CRLF and with one leading dot of a
// stuffed line removed. The deadline is pushed on as data arrives.
func (c *pop3Conn) multiline(fn func([]byte) error) error {
	var long []byte // a line longer than the buffer
	var got int
	for {
		chunk, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, chunk...)
			continue
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		line := chunk
		if long != nil {
			line = append(long, chunk...)
			long = nil
		}
		got += len(line)
		if got > 1<<20 { // keep slow transfers alive, cheaply
			got = 0
			c.nc.SetDeadline(time.Now().Add(c.timeout))
		}
		line = bytes.TrimSuffix(line, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) > 0 && line[0] == '.' {
			if len(line) == 1 {
				return nil
			}
			line = line[1:]
		}
		if err := fn(line); err != nil {
			return err
		}
	}
}

// quit ends the session (RFC 1939 §6).
func (c *pop3Conn) quit() error {
	_, err := c.cmd("QUIT")
	return err
}
