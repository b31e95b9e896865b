package testutil

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/pop3client"
)

// IOTimeout bounds each exchange of a POP3 test client; generous for a
// noisy machine. It is a safety net, never an assertion.
const IOTimeout = 30 * time.Second

// POP3 is the POP3 client of the tests: internal/pop3client under a
// testing.TB. Any I/O error fails the test, with the transcript so far.
// It checks exact answers line by line (Expect, Script) and every line's
// CRLF.
type POP3 struct {
	t  testing.TB
	c  *pop3client.Client
	tr []string // transcript, for failure messages
}

// DialPOP3 connects to addr over TCP and reads nothing: the caller reads
// the greeting (Expect, ExpectPrefix). The connection closes at the end of
// the test.
func DialPOP3(t testing.TB, addr string) *POP3 {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, IOTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return NewPOP3(t, nc)
}

// DialPOP3S connects to addr with TLS from the first byte (RFC 8314) and
// reads nothing.
func DialPOP3S(t testing.TB, addr string, conf *tls.Config) *POP3 {
	t.Helper()
	nc, err := tls.DialWithDialer(&net.Dialer{Timeout: IOTimeout}, "tcp", addr, conf)
	if err != nil {
		t.Fatal(err)
	}
	return NewPOP3(t, nc)
}

// NewPOP3 runs the client over an open connection, closed at the end of
// the test.
func NewPOP3(t testing.TB, nc net.Conn) *POP3 {
	t.Cleanup(func() { nc.Close() })
	return &POP3{t: t, c: pop3client.New(nc, IOTimeout)}
}

// T is the test the client fails.
func (p *POP3) T() testing.TB { return p.t }

// Conn is the connection under the client (the *tls.Conn once encrypted).
func (p *POP3) Conn() net.Conn { return p.c.Conn() }

func (p *POP3) fatalf(format string, args ...any) {
	p.t.Helper()
	p.t.Fatalf(format+"\ntranscript:\n%s", append(args, strings.Join(p.tr, "\n"))...)
}

// Send sends one command line (CRLF added).
func (p *POP3) Send(line string) {
	p.t.Helper()
	p.tr = append(p.tr, "C: "+line)
	if err := p.c.WriteRaw(line + "\r\n"); err != nil {
		p.fatalf("send %q: %v", line, err)
	}
}

// SendRaw sends s as it is.
func (p *POP3) SendRaw(s string) {
	p.t.Helper()
	p.tr = append(p.tr, "C (raw): "+s)
	if err := p.c.WriteRaw(s); err != nil {
		p.fatalf("send: %v", err)
	}
}

// Line reads one line, which must end in CRLF, and returns it without.
func (p *POP3) Line() string {
	p.t.Helper()
	s, err := p.c.ReadLine()
	if err != nil {
		p.fatalf("read line: %v (got %q)", err, s)
	}
	p.tr = append(p.tr, "S: "+s)
	return s
}

// Expect reads one line and fails unless it is want.
func (p *POP3) Expect(want string) {
	p.t.Helper()
	if got := p.Line(); got != want {
		p.fatalf("got %q, want %q", got, want)
	}
}

// ExpectPrefix reads one line and fails unless it starts with prefix.
func (p *POP3) ExpectPrefix(prefix string) string {
	p.t.Helper()
	got := p.Line()
	if !strings.HasPrefix(got, prefix) {
		p.fatalf("got %q, want prefix %q", got, prefix)
	}
	return got
}

// Cmd sends a command and returns its status line.
func (p *POP3) Cmd(line string) string {
	p.t.Helper()
	p.Send(line)
	return p.Line()
}

// CmdPrefix sends a command and expects a status line starting with prefix.
func (p *POP3) CmdPrefix(line, prefix string) string {
	p.t.Helper()
	p.Send(line)
	return p.ExpectPrefix(prefix)
}

// OK sends a command that must succeed and returns its status line.
func (p *POP3) OK(line string) string {
	p.t.Helper()
	return p.CmdPrefix(line, "+OK")
}

// Multi reads the lines of a multi-line body up to the terminator, raw
// (still dot-stuffed).
func (p *POP3) Multi() []string {
	p.t.Helper()
	var out []string
	for {
		l := p.Line()
		if l == "." {
			return out
		}
		out = append(out, l)
	}
}

// Body reads a multi-line body and undoes the dot-stuffing (RFC 1939 §3),
// returning the octets with CRLF line ends.
func (p *POP3) Body() []byte {
	p.t.Helper()
	var b bytes.Buffer
	for _, l := range p.Multi() {
		b.WriteString(strings.TrimPrefix(l, ".") + "\r\n")
	}
	return b.Bytes()
}

// Fetch sends a command with a multi-line answer (RETR, TOP, LIST, UIDL)
// that must succeed, and returns the body as Body does.
func (p *POP3) Fetch(line string) []byte {
	p.t.Helper()
	p.OK(line)
	return p.Body()
}

// Login logs in with USER and PASS.
func (p *POP3) Login(user, pass string) {
	p.t.Helper()
	p.OK("USER " + user)
	p.OK("PASS " + pass)
}

// STLS sends STLS, which must succeed, and upgrades the connection.
func (p *POP3) STLS(conf *tls.Config) {
	p.t.Helper()
	p.OK("STLS")
	p.Handshake(conf)
}

// Handshake runs TLS on the connection now (after a +OK to STLS read by
// the caller).
func (p *POP3) Handshake(conf *tls.Config) {
	p.t.Helper()
	if err := p.c.Handshake(conf); err != nil {
		p.fatalf("%v", err)
	}
	p.tr = append(p.tr, "(TLS)")
}

// ReadToClose reads what the server sends until it closes the connection
// (or IOTimeout passes) and returns it as sent.
func (p *POP3) ReadToClose() []byte {
	p.t.Helper()
	var b bytes.Buffer
	for {
		s, err := p.c.ReadLine()
		switch {
		case err == nil:
			b.WriteString(s + "\r\n")
			continue
		case errors.Is(err, pop3client.ErrNoCRLF):
			b.WriteString(s + "\n")
			continue
		}
		b.WriteString(s)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			p.fatalf("connection still open after %v (read %q)", IOTimeout, b.Bytes())
		}
		return b.Bytes()
	}
}

// ExpectClosed checks that the server closed the connection (without
// sending another line).
func (p *POP3) ExpectClosed() {
	p.t.Helper()
	s, err := p.c.ReadLine()
	if err == nil || errors.Is(err, pop3client.ErrNoCRLF) {
		p.fatalf("connection still open (read %q)", s)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		p.fatalf("connection still open after %v", IOTimeout)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		p.tr = append(p.tr, "(closed: "+err.Error()+")")
	}
}

// Script runs a transcript: "C: x" sends x, "S: y" expects the line y
// ("S: y*" expects a line starting with y), "S: <closed>" expects the
// server to close the connection. Leading tabs and blank lines are ignored.
func (p *POP3) Script(s string) {
	p.t.Helper()
	for _, l := range strings.Split(s, "\n") {
		l = strings.TrimLeft(l, "\t ")
		switch {
		case l == "":
		case l == "C:":
			p.Send("")
		case strings.HasPrefix(l, "C: "):
			p.Send(l[3:])
		case l == "S: <closed>":
			p.ExpectClosed()
		case strings.HasPrefix(l, "S: ") && strings.HasSuffix(l, "*"):
			p.ExpectPrefix(strings.TrimSuffix(l[3:], "*"))
		case strings.HasPrefix(l, "S: "):
			p.Expect(l[3:])
		default:
			p.t.Fatalf("bad script line %q", l)
		}
	}
}
