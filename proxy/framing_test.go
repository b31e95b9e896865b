package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends/memory"
)

// wireBody is what RETR must put on the wire for raw, computed line by line
// independently of dotWriter: every line ends in CRLF (a bare LF too, and a
// missing final line end is added), a leading '.' is doubled, and ".\r\n"
// terminates (RFC 1939 §3).
func wireBody(raw string) string {
	var b strings.Builder
	if raw == "" {
		return ".\r\n"
	}
	lines := strings.SplitAfter(raw, "\n")
	for _, l := range lines {
		if l == "" {
			continue
		}
		l = strings.TrimSuffix(l, "\n")
		l = strings.TrimSuffix(l, "\r")
		if strings.HasPrefix(l, ".") {
			b.WriteString(".")
		}
		b.WriteString(l + "\r\n")
	}
	b.WriteString(".\r\n")
	return b.String()
}

// readWire reads a multi-line body up to and including its terminator,
// exactly as sent.
func readWire(c *client) string {
	var b strings.Builder
	for {
		l := c.Line()
		b.WriteString(l + "\r\n")
		if l == "." {
			return b.String()
		}
	}
}

var framingCases = []struct{ name, raw string }{
	{"dot line", "Subject: d\r\n\r\n.\r\nafter\r\n"},
	{"dot dot line", "Subject: d\r\n\r\n..\r\n"},
	{"leading dot first line", ".Subject: odd\r\n\r\nbody\r\n"},
	{"dot at body start and end", "S: x\r\n\r\n.start\r\nmid\r\n.end\r\n"},
	{"terminator lookalike", "S: x\r\n\r\nA\r\n.\r\n.\r\nB\r\n"},
	{"no final CRLF", "Subject: x\r\n\r\nno final line end"},
	{"no final CRLF dot", "Subject: x\r\n\r\n."},
	{"final bare CR", "Subject: x\r\n\r\nends in CR\r"},
	{"bare LF", "Subject: x\n\nbare\nlf\n.dot\n"},
	{"mixed line ends", "A: 1\r\nB: 2\n\r\nx\ny\r\n"},
	{"8-bit", "Subject: \xe9t\xe9\r\n\r\n\x80\x81\xfe\xff\r\n"},
	{"NUL bytes", "A: \x00\r\n\r\n\x00.\x00\r\n.\x00\r\n"},
	{"20 KB line", "Subject: long\r\n\r\n" + strings.Repeat("0123456789", 2048) + "\r\n.x\r\n"},
	{"empty body", "Subject: empty\r\n\r\n"},
	{"empty message", ""},
	{"only CRLF", "\r\n"},
	{"many dots across buffers", strings.Repeat(".\r\n..\n", 30000)},
}

func TestRETRFraming(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			e := newEnv(t, envConfig{})
			for _, tc := range framingCases {
				e.be.Append("alice", []byte(tc.raw))
			}
			if chunked {
				// Reads of 7 octets split CRLF pairs and dots across Writes.
				e.be.SetFaults(memory.Faults{SlowRead: time.Nanosecond, SlowChunk: 7})
			}
			c := e.login("alice", "secret pw")
			for i, tc := range framingCases {
				if tc.name == "many dots across buffers" && chunked {
					continue // 60k slow reads: covered unchunked
				}
				c.Send(fmt.Sprintf("RETR %d", i+1))
				c.Expect(fmt.Sprintf("+OK %d octets", len(tc.raw)))
				if got, want := readWire(c), wireBody(tc.raw); got != want {
					t.Errorf("%s: wire\n%q\nwant\n%q", tc.name, trunc(got), trunc(want))
				}
			}
			c.Script(`
				C: QUIT
				S: +OK bye
			`)
		})
	}
}

func trunc(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

func TestTOP(t *testing.T) {
	msgs := []string{
		"H: 1\r\nH: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n",
		"H: 1\n\nl1\nl2\n",
		"H: only a header\r\n",
		"H: 1\r\n\r\n",
	}
	cases := []struct {
		msg, k int
		want   string
	}{
		{1, 0, "H: 1\r\nH: 2\r\n\r\n"},
		{1, 1, "H: 1\r\nH: 2\r\n\r\nl1\r\n"},
		{1, 2, "H: 1\r\nH: 2\r\n\r\nl1\r\n..l2\r\n"},
		{1, 3, "H: 1\r\nH: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n"},
		{1, 100, "H: 1\r\nH: 2\r\n\r\nl1\r\n..l2\r\nl3\r\n"},
		{2, 0, "H: 1\r\n\r\n"},
		{2, 1, "H: 1\r\n\r\nl1\r\n"},
		{2, 9, "H: 1\r\n\r\nl1\r\nl2\r\n"},
		{3, 0, "H: only a header\r\n"},
		{3, 5, "H: only a header\r\n"},
		{4, 0, "H: 1\r\n\r\n"},
		{4, 3, "H: 1\r\n\r\n"},
	}
	// The proxy cuts TOP itself even when the backend sends everything.
	for _, whole := range []bool{false, true} {
		t.Run(fmt.Sprintf("backend sends whole message=%v", whole), func(t *testing.T) {
			e := newEnv(t, envConfig{})
			for _, m := range msgs {
				e.be.Append("alice", []byte(m))
			}
			e.be.SetFaults(memory.Faults{WholeOnTop: whole, SlowRead: time.Nanosecond, SlowChunk: 3})
			c := e.login("alice", "secret pw")
			for _, tc := range cases {
				c.Send(fmt.Sprintf("TOP %d %d", tc.msg, tc.k))
				c.Expect("+OK top of message follows")
				if got := readWire(c); got != tc.want+".\r\n" {
					t.Errorf("TOP %d %d = %q, want %q", tc.msg, tc.k, got, tc.want+".\r\n")
				}
			}
		})
	}
}

// TestDotWriterChunks feeds the stuffer every split of each case.
func TestDotWriterChunks(t *testing.T) {
	for _, tc := range framingCases {
		if len(tc.raw) > 200 {
			continue
		}
		want := wireBody(tc.raw)
		for split := 0; split <= len(tc.raw); split++ {
			var out bytes.Buffer
			bw := bufio.NewWriter(&out)
			d := dotWriter{w: bw}
			d.Write([]byte(tc.raw[:split]))
			d.Write([]byte(tc.raw[split:]))
			d.Close()
			bw.Flush()
			if out.String() != want {
				t.Fatalf("%s split at %d: %q, want %q", tc.name, split, out.String(), want)
			}
			if d.n != int64(len(tc.raw)) {
				t.Fatalf("%s: counted %d octets, want %d", tc.name, d.n, len(tc.raw))
			}
		}
	}
}

// TestDotWriterWritev sends large messages through the stuffer with the
// connection's writer under it (runs longer than the buffer go out in one
// writev with what it holds) over loopback TCP, in pieces of many sizes,
// and checks the octets against the plain buffered path.
func TestDotWriterWritev(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rng := rand.New(rand.NewPCG(3, 4))
	for round := 0; round < 20; round++ {
		var raw []byte
		for len(raw) < 50+rng.IntN(400<<10) {
			switch rng.IntN(12) {
			case 0:
				raw = append(raw, '.')
			case 1:
				raw = append(raw, '\n')
			case 2, 3:
				raw = append(raw, '\r', '\n')
			default:
				raw = append(raw, bytes.Repeat([]byte{'a' + byte(rng.IntN(26))}, rng.IntN(2000))...)
			}
		}
		var wantBuf bytes.Buffer
		bw := bufio.NewWriter(&wantBuf)
		ref := dotWriter{w: bw}
		ref.Write(raw)
		ref.Close()
		bw.Flush()

		got := make(chan []byte, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- nil
				return
			}
			defer c.Close()
			b, _ := io.ReadAll(c)
			got <- b
		}()
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		out := &deadlineWriter{c: nc, timeout: ioTimeout}
		w := bufio.NewWriterSize(out, writeBufSize)
		w.WriteString("+OK\r\n")
		d := dotWriter{w: w, out: out}
		for p := raw; len(p) > 0; {
			n := min(len(p), 1+rng.IntN(200<<10))
			if k, err := d.Write(p[:n]); err != nil || k != n {
				t.Fatalf("write: %d, %v", k, err)
			}
			p = p[n:]
		}
		d.Close()
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		nc.Close()
		want := "+OK\r\n" + wantBuf.String()
		if b := <-got; string(b) != want {
			t.Fatalf("round %d: %d octets on the wire, want %d", round, len(b), len(want))
		}
		if out.n != int64(len(want)) {
			t.Fatalf("round %d: counted %d octets, want %d", round, out.n, len(want))
		}
	}
}
