package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends/memory"
)

// Per-state fuzz tests of the command reader and state machine (DESIGN
// invariant 9: no input crashes or hangs the server). Each input is sent
// over a real loopback connection whose write side is then closed; the
// server must answer and close, release the lock and the mailbox, and
// commit nothing unless the client said QUIT. `go test` replays the seeds.

// fuzzEnv is one server per fuzz target; every input gets a fresh backend
// through Update.
func fuzzEnv(f *testing.F) *env {
	cert, _ := testCert(f)
	return newEnv(f, envConfig{lc: ListenerConfig{Name: "fuzz", TLS: TLSStartTLS}, opts: func(o *Options) {
		o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
		o.AuthFailureDelay = -1
		o.MaxAuthFailures = 1000
		o.LoginTimeout = ioTimeout
		o.Logger = o.Logger.Level(1) // info: keep the buffer small
	}})
}

var fuzzMessages = []string{
	"Subject: one\r\n\r\nline\r\n.dot\r\n",
	"Subject: two\n\nbare lf\n",
	"",
	"Subject: no final\r\n\r\nend",
}

func runFuzz(t *testing.T, e *env, prefix string, in []byte) {
	be := memory.New()
	be.AddUser("alice", "secret pw")
	for _, m := range fuzzMessages {
		be.Append("alice", []byte(m))
	}
	o := e.opts
	o.Backend = be
	if err := e.srv.Update(o); err != nil {
		t.Fatal(err)
	}

	conn, err := net.DialTimeout("tcp", e.addr, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(ioTimeout))
	go func() {
		_, _ = conn.Write(append([]byte(prefix), in...))
		_ = conn.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(conn)
	if err != nil {
		// A reset after the server closed is fine; a timeout is a hang.
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("server hung on %q", in)
		}
	}
	if !bytes.HasPrefix(out, []byte("+OK POP3 server ready\r\n")) {
		t.Fatalf("no greeting: %q", out)
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) && !bytes.Contains(bytes.ToUpper(in), []byte("STLS")) {
		t.Fatalf("output does not end in CRLF: %q", out)
	}
	eventually(t, "mailbox closed and lock free", func() bool {
		return be.OpenMailboxes() == 0 && !e.locker.Held(aliceKey)
	})
	// Every long SASL line's buffer is given back (auth.max_sasl_buffers).
	eventually(t, "SASL line buffers released", func() bool { return e.srv.saslBufs.used.Load() == 0 })
	if len(be.Commits()) > 0 && !bytes.Contains(bytes.ToUpper(in), []byte("QUIT")) {
		t.Fatalf("committed without QUIT: %q", in)
	}
	left := len(be.UIDLs("alice"))
	deleted := 0
	for _, c := range be.Commits() {
		deleted += len(c.UIDLs)
	}
	if left+deleted != len(fuzzMessages) {
		t.Fatalf("%d messages left + %d deleted != %d", left, deleted, len(fuzzMessages))
	}
}

func FuzzAuthorization(f *testing.F) {
	for _, s := range []string{
		"CAPA\r\n",
		"capa\r\nQUIT\r\n",
		"USER alice\r\nPASS secret pw\r\nSTAT\r\nQUIT\r\n",
		"USER alice\r\nPASS wrong\r\nUSER alice\r\nPASS secret pw\r\n",
		"PASS x\r\nUSER\r\nUSER a b\r\n",
		"AUTH\r\nAUTH PLAIN " + b64("\x00alice\x00secret pw") + "\r\nDELE 1\r\nQUIT\r\n",
		"AUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n=\r\n",
		"STAT\r\nLIST\r\nRETR 1\r\nTOP 1 1\r\nNOOP\r\nRSET\r\nAPOP a b\r\n",
		"STLS\r\nCAPA\r\n",
		"STLS\r\n\x16\x03\x01\x00\x05hello",
		strings.Repeat("X", 300) + "\r\nNOOP\r\n",
		"\x00\xff\xfe\r\n\n\n\r\r\r\n",
		"USER " + strings.Repeat("a", 250) + "\nPASS \n",
		"AUTH PLAIN " + strings.Repeat("A", 40000) + "\r\n",
	} {
		f.Add([]byte(s))
	}
	e := fuzzEnv(f)
	f.Fuzz(func(t *testing.T, in []byte) { runFuzz(t, e, "", in) })
}

func FuzzTransaction(f *testing.F) {
	for _, s := range []string{
		"STAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 2 0\r\nDELE 1\r\nRSET\r\nDELE 2\r\nQUIT\r\n",
		"RETR 3\r\nRETR 4\r\nTOP 4 1\r\nTOP 1 999999999\r\n",
		"LIST 0\r\nLIST 5\r\nUIDL -1\r\nDELE 01\r\nDELE 1\r\nDELE 1\r\nRETR 1\r\nquit\r\n",
		"NOOP\r\nCAPA\r\nUSER x\r\nAUTH PLAIN\r\nSTLS\r\n",
		"DELE 1\r\nDELE 2\r\nDELE 3\r\nDELE 4\r\n",
		"TOP 1\r\nTOP a b\r\nRETR\r\nLIST 1 2\r\n" + strings.Repeat("Z", 1000) + "\r\n",
		"DELE 4\r\nQUIT extra\r\nQUIT\r\n",
	} {
		f.Add([]byte(s))
	}
	e := fuzzEnv(f)
	f.Fuzz(func(t *testing.T, in []byte) { runFuzz(t, e, "USER alice\r\nPASS secret pw\r\n", in) })
}

func FuzzSASL(f *testing.F) {
	for _, s := range []string{
		b64("\x00alice\x00secret pw") + "\r\nSTAT\r\n",
		"*\r\nAUTH LOGIN\r\n" + b64("alice") + "\r\n" + b64("secret pw") + "\r\n",
		"=\r\n",
		"!!!!\r\n",
		b64("a\x00b\x00c\x00d") + "\r\n",
		strings.Repeat("QUFB", 5000) + "\r\n",
	} {
		f.Add([]byte(s))
	}
	e := fuzzEnv(f)
	f.Fuzz(func(t *testing.T, in []byte) { runFuzz(t, e, "AUTH PLAIN\r\n", in) })
}

// FuzzDotWriter checks the stuffer against the line-by-line reference for
// any message cut into two writes.
func FuzzDotWriter(f *testing.F) {
	for _, tc := range framingCases {
		if len(tc.raw) < 1000 {
			f.Add([]byte(tc.raw), uint16(len(tc.raw)/2))
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte, split uint16) {
		cut := int(split) % (len(raw) + 1)
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		d := dotWriter{w: bw}
		d.Write(raw[:cut])
		d.Write(raw[cut:])
		d.Close()
		bw.Flush()
		if want := wireBody(string(raw)); out.String() != want {
			t.Fatalf("stuffed %q as %q, want %q", raw, out.String(), want)
		}
	})
}
