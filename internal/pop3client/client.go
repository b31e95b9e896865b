// Package pop3client is a small POP3 client (RFC 1939, RFC 2449 CAPA and
// PIPELINING, RFC 2595 STLS): what popgate needs to read another POP3
// server, for example to capture the UIDLs of a server being retired.
//
// A Client runs one command at a time, except Pipeline, which sends a batch
// of commands in one write when the server announced PIPELINING. Every
// exchange has a deadline. Error texts never hold the password that was
// sent: a command is named by its first word only.
package pop3client

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

// TLSMode is how a connection is protected.
type TLSMode int

const (
	// Plain connects without TLS and never upgrades.
	Plain TLSMode = iota
	// Implicit starts TLS at once (POP3S, RFC 8314).
	Implicit
	// STLSIfOffered upgrades with STLS when CAPA lists it, else stays plain.
	STLSIfOffered
	// STLSRequired upgrades with STLS and fails when the server refuses.
	STLSRequired
)

// Options configure Dial.
type Options struct {
	TLS       TLSMode
	TLSConfig *tls.Config   // for Implicit and STLS; nil: verification against the system roots
	Timeout   time.Duration // each exchange; 0: 60 s
}

// ErrResponse is a -ERR answer. Text is the server's, which never echoes the
// password sent.
type ErrResponse struct {
	Command string
	Text    string
}

func (e *ErrResponse) Error() string { return e.Command + ": -ERR " + e.Text }

// Client is one POP3 connection.
type Client struct {
	nc      net.Conn
	r       *bufio.Reader
	w       *bufio.Writer
	timeout time.Duration
	caps    []string // nil until CAPA ran
	tls     bool
	// Greeting is the text of the server's greeting after +OK.
	Greeting string
}

// Dial connects to addr (host:port), reads the greeting and, for the STLS
// modes, upgrades the connection (RFC 2595 §4).
func Dial(addr string, o Options) (*Client, error) {
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	d := net.Dialer{Timeout: o.Timeout}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	conf := o.TLSConfig
	if conf == nil {
		host, _, _ := net.SplitHostPort(addr)
		conf = &tls.Config{ServerName: host}
	}
	c := &Client{nc: nc, timeout: o.Timeout}
	if o.TLS == Implicit {
		tc := tls.Client(nc, conf)
		tc.SetDeadline(time.Now().Add(o.Timeout))
		if err := tc.Handshake(); err != nil {
			nc.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		c.nc, c.tls = tc, true
	}
	c.reset()
	c.nc.SetDeadline(time.Now().Add(o.Timeout))
	if c.Greeting, err = c.status("greeting"); err != nil {
		c.nc.Close()
		return nil, err
	}
	if o.TLS == STLSIfOffered || o.TLS == STLSRequired {
		if o.TLS == STLSIfOffered {
			caps, _ := c.Capa() // an old server without CAPA answers -ERR
			if !hasCap(caps, "STLS") {
				return c, nil
			}
		}
		if err := c.startTLS(conf); err != nil {
			c.nc.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Client) reset() {
	c.r = bufio.NewReaderSize(c.nc, 64<<10)
	c.w = bufio.NewWriterSize(c.nc, 4<<10)
}

// startTLS runs STLS and the handshake; capabilities are forgotten, as the
// server may announce others over TLS (RFC 2595 §4).
func (c *Client) startTLS(conf *tls.Config) error {
	if _, err := c.Cmd("STLS"); err != nil {
		return err
	}
	if c.r.Buffered() > 0 { // RFC 2595 §4: nothing may follow the +OK in clear
		return errors.New("STLS: server sent data after +OK")
	}
	return c.Handshake(conf)
}

// Handshake runs the client side of TLS on the connection now, for a caller
// that sent STLS and read the +OK itself; what the server sent before is
// dropped, and the capabilities are forgotten (RFC 2595 §4).
func (c *Client) Handshake(conf *tls.Config) error {
	tc := tls.Client(c.nc, conf)
	tc.SetDeadline(time.Now().Add(c.timeout))
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	c.nc, c.tls, c.caps = tc, true, nil
	c.reset()
	return nil
}

// New wraps a connection that is already open (plain, or TLS from the
// start) without reading the greeting: the caller reads it with ReadLine.
// timeout bounds each exchange (0: 60 s).
func New(nc net.Conn, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	_, isTLS := nc.(*tls.Conn)
	c := &Client{nc: nc, timeout: timeout, tls: isTLS}
	c.reset()
	return c
}

// Conn is the connection under the client (the *tls.Conn once encrypted).
func (c *Client) Conn() net.Conn { return c.nc }

// ErrNoCRLF reports a line that did not end in CRLF.
var ErrNoCRLF = errors.New("line does not end in CRLF")

// ReadLine reads one line as the server sent it, whatever it is, without
// its CRLF, within the timeout. A line ended by a bare LF is returned with
// ErrNoCRLF; a connection closed mid-line with io.ErrUnexpectedEOF, and
// one closed between lines with io.EOF.
func (c *Client) ReadLine() (string, error) {
	c.nc.SetDeadline(time.Now().Add(c.timeout))
	s, err := c.r.ReadString('\n')
	if err != nil {
		if err == io.EOF && s != "" {
			err = io.ErrUnexpectedEOF
		}
		return s, err
	}
	if !strings.HasSuffix(s, "\r\n") {
		return strings.TrimSuffix(s, "\n"), ErrNoCRLF
	}
	return s[:len(s)-2], nil
}

// WriteRaw sends s as it is (no CRLF added, nothing checked) within the
// timeout: for tests of what a server does with malformed or pipelined
// input.
func (c *Client) WriteRaw(s string) error {
	c.nc.SetDeadline(time.Now().Add(c.timeout))
	if _, err := c.w.WriteString(s); err != nil {
		return err
	}
	return c.w.Flush()
}

// TLS reports whether the connection is encrypted.
func (c *Client) TLS() bool { return c.tls }

// Close closes the connection without QUIT: the server must not enter the
// UPDATE state (RFC 1939 §6), so nothing marked is deleted.
func (c *Client) Close() error { return c.nc.Close() }

// status reads one status line and returns the text after +OK.
func (c *Client) status(cmd string) (string, error) {
	line, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return "", fmt.Errorf("%s: status line too long", cmd)
		}
		return "", fmt.Errorf("%s: %w", cmd, unexpected(err))
	}
	s := strings.TrimRight(string(line), "\r\n")
	switch {
	case strings.HasPrefix(s, "+OK"):
		return strings.TrimPrefix(strings.TrimPrefix(s, "+OK"), " "), nil
	case strings.HasPrefix(s, "-ERR"):
		return "", &ErrResponse{Command: cmd, Text: strings.TrimPrefix(strings.TrimPrefix(s, "-ERR"), " ")}
	default:
		return "", fmt.Errorf("%s: unexpected response %.40q", cmd, s)
	}
}

// send writes one command line without flushing.
func (c *Client) send(line string) error {
	if strings.ContainsAny(line, "\r\n") {
		name, _, _ := strings.Cut(line, " ")
		return fmt.Errorf("%s: line break in a command argument", name)
	}
	c.nc.SetDeadline(time.Now().Add(c.timeout))
	_, err := c.w.WriteString(line + "\r\n")
	return err
}

// Cmd sends one command line and reads its status line, returning the text
// after +OK. Errors name the command by its first word only.
func (c *Client) Cmd(line string) (string, error) {
	name, _, _ := strings.Cut(line, " ")
	if err := c.send(line); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	if err := c.w.Flush(); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return c.status(name)
}

// Capa returns the server's capabilities (RFC 2449 §5), each line as sent
// (e.g. "TOP", "SASL PLAIN LOGIN"). An old server without CAPA returns an
// *ErrResponse.
func (c *Client) Capa() ([]string, error) {
	if c.caps != nil {
		return c.caps, nil
	}
	if _, err := c.Cmd("CAPA"); err != nil {
		return nil, err
	}
	caps := []string{}
	err := c.Lines(func(line []byte) error {
		caps = append(caps, string(line))
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.caps = caps
	return caps, nil
}

// hasCap reports whether caps has a capability named name (its first word,
// case-insensitively).
func hasCap(caps []string, name string) bool {
	for _, l := range caps {
		w, _, _ := strings.Cut(l, " ")
		if strings.EqualFold(w, name) {
			return true
		}
	}
	return false
}

// Has reports whether the server announced the capability name; it runs
// CAPA once if needed and answers false for a server without CAPA.
func (c *Client) Has(name string) bool {
	caps, _ := c.Capa()
	return hasCap(caps, name)
}

// Login runs USER and PASS (RFC 1939 §7).
func (c *Client) Login(user, pass string) error {
	if _, err := c.Cmd("USER " + user); err != nil {
		return err
	}
	_, err := c.Cmd("PASS " + pass)
	return err
}

// Stat returns the message count and maildrop size (RFC 1939 §5).
func (c *Client) Stat() (n int, size int64, err error) {
	s, err := c.Cmd("STAT")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(s)
	if len(f) < 2 {
		return 0, 0, fmt.Errorf("STAT: malformed answer %.40q", s)
	}
	if n, err = strconv.Atoi(f[0]); err != nil || n < 0 {
		return 0, 0, fmt.Errorf("STAT: malformed answer %.40q", s)
	}
	if size, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("STAT: malformed answer %.40q", s)
	}
	return n, size, nil
}

// Entry is one line of a LIST or UIDL listing.
type Entry struct {
	Num   int
	Size  int64  // LIST
	UIDL  string // UIDL
	Value string // the raw value after the number
}

// List returns the scan listing (RFC 1939 §5 LIST).
func (c *Client) List() ([]Entry, error) {
	es, err := c.listing("LIST")
	for i := range es {
		if es[i].Size, err = strconv.ParseInt(es[i].Value, 10, 64); err != nil || es[i].Size < 0 {
			return nil, fmt.Errorf("LIST: malformed size %.40q", es[i].Value)
		}
	}
	return es, err
}

// UIDLs returns the unique-id listing (RFC 1939 §7 UIDL).
func (c *Client) UIDLs() ([]Entry, error) {
	es, err := c.listing("UIDL")
	for i := range es {
		es[i].UIDL = es[i].Value
	}
	return es, err
}

func (c *Client) listing(cmd string) ([]Entry, error) {
	if _, err := c.Cmd(cmd); err != nil {
		return nil, err
	}
	var es []Entry
	err := c.Lines(func(line []byte) error {
		num, val, ok := strings.Cut(string(line), " ")
		n, err := strconv.Atoi(num)
		if !ok || err != nil || n < 1 || val == "" {
			return fmt.Errorf("%s: malformed line %.40q", cmd, line)
		}
		es = append(es, Entry{Num: n, Value: strings.TrimSpace(val)})
		return nil
	})
	return es, err
}

// Retr writes message num to w without the dot-stuffing (RFC 1939 §3) and
// returns its size in octets, which is what LIST reports. w may be nil to
// only count.
func (c *Client) Retr(num int, w io.Writer) (int64, error) {
	if _, err := c.Cmd("RETR " + strconv.Itoa(num)); err != nil {
		return 0, err
	}
	return c.Body(w)
}

// Top writes the header of message num and its first n body lines to w
// (RFC 1939 §7 TOP).
func (c *Client) Top(num, n int, w io.Writer) (int64, error) {
	if _, err := c.Cmd("TOP " + strconv.Itoa(num) + " " + strconv.Itoa(n)); err != nil {
		return 0, err
	}
	return c.Body(w)
}

// Pipeline sends cmds in one write when the server announced PIPELINING
// (RFC 2449 §6.6), else one at a time, and calls fn for each answer in
// order with the +OK text or the *ErrResponse. When fn returns nil after a
// +OK to a command with a multi-line answer, fn must have consumed the body
// (Body or Lines); fn's error stops the run, and the connection is then out
// of step and must be closed.
func (c *Client) Pipeline(cmds []string, fn func(i int, text string, err error) error) error {
	const window = 64 // commands in flight, bounding what the server buffers
	pipelined := c.Has("PIPELINING")
	for start := 0; start < len(cmds); {
		end := start + 1
		if pipelined {
			end = min(start+window, len(cmds))
		}
		for _, line := range cmds[start:end] {
			if err := c.send(line); err != nil {
				return err
			}
		}
		if err := c.w.Flush(); err != nil {
			return err
		}
		for i := start; i < end; i++ {
			name, _, _ := strings.Cut(cmds[i], " ")
			text, err := c.status(name)
			var er *ErrResponse
			if err != nil && !errors.As(err, &er) {
				return err
			}
			if err := fn(i, text, err); err != nil {
				return err
			}
		}
		start = end
	}
	return nil
}

// Dele marks message num as deleted (RFC 1939 §5).
func (c *Client) Dele(num int) error {
	_, err := c.Cmd("DELE " + strconv.Itoa(num))
	return err
}

// Quit ends the session (RFC 1939 §6) and closes the connection.
func (c *Client) Quit() error {
	_, err := c.Cmd("QUIT")
	c.nc.Close()
	return err
}

// Body copies a multi-line response body up to its terminating line into w
// (nil: discard), removing the dot added to lines that begin with one
// (RFC 1939 §3), and returns the octets copied.
func (c *Client) Body(w io.Writer) (int64, error) {
	var n, sinceDeadline int64
	atStart := true // the next octet begins a line
	for {
		if atStart {
			p, err := c.r.Peek(3)
			if err != nil { // fewer than the 3 octets of ".\r\n": a cut body
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
		if i := bytes.Index(buf, []byte("\n.")); i >= 0 {
			k, atStart = i+1, true
		} else if buf[k-1] == '\n' {
			atStart = true
		}
		if w != nil {
			if _, err := w.Write(buf[:k]); err != nil {
				return n, err
			}
		}
		c.r.Discard(k)
		n += int64(k)
		if sinceDeadline += int64(k); sinceDeadline > 1<<20 { // keep long transfers alive
			sinceDeadline = 0
			c.nc.SetDeadline(time.Now().Add(c.timeout))
		}
	}
}

// Lines reads a multi-line response body up to the terminating ".", calling
// fn with each line without its CRLF and with one leading dot of a stuffed
// line removed.
func (c *Client) Lines(fn func([]byte) error) error {
	var long []byte // a line longer than the buffer
	var got int
	for {
		chunk, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, chunk...)
			continue
		}
		if err != nil {
			return unexpected(err)
		}
		line := chunk
		if long != nil {
			line = append(long, chunk...)
			long = nil
		}
		if got += len(line); got > 1<<20 {
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

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}
