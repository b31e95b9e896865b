package e2e

// The fault matrix (issue 13): popgate serve in front of the shared Dovecot
// with Toxiproxy in between, one toxic at a time, installed at the start of
// one phase of a POP3 session. Each case asserts what the client sees,
// what Dovecot holds afterwards, the session's one "session end" log line,
// and that a bystander session on the same popgate is served meanwhile
// (its latency is logged, never asserted). docs/failure-modes.md holds the
// same table; TestFailureModesDoc compares it with faultCases.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2/client"
	"github.com/emersion/go-imap/v2"

	"github.com/popgate/popgate/backends/demo"
	"github.com/popgate/popgate/internal/testutil"
)

var updateDoc = flag.Bool("update-failure-modes", false, "rewrite the matrix table in docs/failure-modes.md from the test's cases")

// faultPhase is where in a session the toxic is installed. trigger is an
// upstream (popgate → Dovecot) command pattern: a test relay in front of
// Toxiproxy holds the nth matching write until the toxic is in place, so
// the toxic acts exactly from that command on. An empty trigger installs
// the toxic before popgate connects; "*" fires on the first write.
type faultPhase struct {
	name    string
	doc     string // what the phase is, for the doc
	trigger string
	nth     int
	// after: the toxic goes in once this many octets of the answer to the
	// triggering request have come back (the relay stops reading the
	// answer meanwhile): a fault in the middle of one HTTP response.
	after int64
	// limit is limit_data's byte count in this phase (counted from the
	// trigger): where the cut falls.
	limit int64
	// deletes are the message numbers the client DELEs before the phase
	// (1-based; the maildrop holds 3 messages).
	deletes []int
}

var faultPhases = []faultPhase{
	{name: "connect", doc: "popgate connects to the IMAP server (at PASS); the toxic is in place before the greeting", trigger: "", limit: 16},
	{name: "login", doc: "the IMAP LOGIN/AUTHENTICATE popgate sends at PASS, and its answer", trigger: "*", nth: 1, limit: 16},
	{name: "snapshot", doc: "SELECT and UID FETCH 1:* (the listing), still within PASS", trigger: " SELECT ", nth: 1, limit: 64},
	{name: "retr", doc: "RETR of a 1.5 MiB message, from its second 1 MiB chunk: the client already has +OK and the first chunk", trigger: "BODY.PEEK[", nth: 2, limit: 4096, deletes: []int{3}},
	{name: "top", doc: "TOP 2 10 of the same message, from its first upstream FETCH", trigger: "BODY.PEEK[", nth: 1, limit: 16, deletes: []int{3}},
	{name: "quit", doc: "QUIT's commit after DELE 1 and DELE 3, from its UID STORE +FLAGS (\\Deleted)", trigger: `\Deleted`, nth: 1, limit: 10, deletes: []int{1, 3}},
	{name: "quit-expunge", doc: "QUIT's commit after DELE 1 and DELE 3, from its UID EXPUNGE (the STORE succeeded)", trigger: "EXPUNGE", nth: 1, limit: 10, deletes: []int{1, 3}},
}

// faultToxic is one Toxiproxy toxic, always on the downstream (Dovecot →
// popgate) direction: the command reaches Dovecot, its answer is delayed,
// throttled, cut or lost.
type faultToxic struct {
	name  string
	doc   string
	attrs toxiproxy.Attributes
}

var faultToxics = []faultToxic{
	{"latency", "200 ms added to every chunk", toxiproxy.Attributes{"latency": 200}},
	{"bandwidth", "1 KB/s", toxiproxy.Attributes{"rate": 1}},
	{"reset_peer", "TCP RST on the next answer", toxiproxy.Attributes{"timeout": 0}},
	{"timeout", "answers dropped, connection kept open (black hole)", toxiproxy.Attributes{"timeout": 0}},
	{"slicer", "answers cut into pieces of 64–192 octets", toxiproxy.Attributes{"average_size": 128, "size_variation": 64, "delay": 0}},
	{"limit_data", "connection closed after N octets of answer (N per phase)", nil},
}

// What the client sees at the phase.
const (
	seesOK      = "ok"       // everything answered, messages complete
	seesErrPass = "err-pass" // -ERR [SYS/TEMP] at PASS
	seesCut     = "cut"      // +OK, part of the message, closed before the terminating dot
	seesErrCmd  = "err-cmd"  // -ERR [SYS/TEMP] answering the phase's command (TOP, QUIT)
)

// faultCase is one cell of the matrix with its expected outcome.
type faultCase struct {
	store *faultStore
	phase faultPhase
	toxic faultToxic
	sees  string
}

// faultStore is one store type's matrix: its phases and what each case
// must give.
type faultStore struct {
	name   string // imap, jmap, rest
	prefix string // of the case users' names
	phases []faultPhase
	sees   func(phase, toxic string) string
	end    func(c faultCase) string
	up     func(c faultCase) [3]string
	// lift: the toxic is removed after liftAfter while the client still
	// reads (a slow transfer that would outlast the test), instead of
	// after the phase's outcome.
	lift func(phase, toxic string) bool
	// errCmdText is what the client sees in a seesErrCmd case.
	errCmdText func(phase string) string
	marker     string // the table's first line in docs/failure-modes.md
}

// liftAfter is how long a lifted toxic acts.
const liftAfter = 5 * time.Second

var imapFaults = &faultStore{
	name: "imap", prefix: "f-", phases: faultPhases, sees: expectSees,
	end: imapEnd, up: imapUpstream, lift: func(string, string) bool { return false },
	errCmdText: func(phase string) string {
		if phase == "top" {
			return "`-ERR [SYS/TEMP]` to TOP; QUIT then `-ERR [SYS/TEMP]` too"
		}
		return "`-ERR [SYS/TEMP]` to QUIT"
	},
	marker: tableStart,
}

// faultCases is the matrix of st: every phase × every toxic.
func faultCases(st *faultStore) []faultCase {
	var cs []faultCase
	for _, p := range st.phases {
		for _, x := range faultToxics {
			cs = append(cs, faultCase{store: st, phase: p, toxic: x, sees: st.sees(p.name, x.name)})
		}
	}
	return cs
}

func expectSees(phase, toxic string) string {
	switch toxic {
	case "latency", "slicer":
		return seesOK // slower, within the timeouts
	case "bandwidth":
		// The login's answers are under 2 KB and TOP's under 5 KB: slow
		// but in time. A 1 MiB chunk cannot arrive within command_timeout.
		if phase == "retr" {
			return seesCut
		}
		return seesOK
	}
	switch phase {
	case "connect", "login", "snapshot":
		return seesErrPass
	case "retr":
		return seesCut
	}
	return seesErrCmd
}

// end is the session's "end" log field for c.
func (c faultCase) end() string { return c.store.end(c) }

func imapEnd(c faultCase) string {
	switch {
	case c.sees == seesOK, c.sees == seesErrPass:
		return "quit" // after -ERR at PASS the client says QUIT in AUTHORIZATION
	case c.sees == seesCut:
		return "error"
	default:
		return "commit_failed" // TOP failed, the upstream session is gone: QUIT cannot commit DELE 3
	}
}

// Upstream states of a message after the session.
const (
	upKept    = "kept"    // present, not \Deleted
	upFlagged = "flagged" // present with \Deleted: hidden from POP3 sessions, not removed
	upGone    = "gone"    // expunged
)

// upstream is the state of messages 1, 2, 3 after c.
func (c faultCase) upstream() [3]string { return c.store.up(c) }

func imapUpstream(c faultCase) [3]string {
	st := [3]string{upKept, upKept, upKept}
	del := func(s string) {
		for _, n := range c.phase.deletes {
			st[n-1] = s
		}
		if len(c.phase.deletes) == 0 {
			st[2] = s // the login phases' clients DELE 3 after a successful PASS
		}
	}
	switch {
	case c.sees == seesOK:
		del(upGone)
	case c.sees == seesErrCmd && c.phase.name == "quit":
		del(upFlagged) // the STORE ran upstream, its answer was lost: no EXPUNGE
	case c.sees == seesErrCmd && c.phase.name == "quit-expunge":
		del(upGone) // the EXPUNGE ran upstream, its answer was lost
	}
	return st
}

func (c faultCase) name() string { return c.phase.name + "/" + c.toxic.name }

func (c faultCase) user() string { return c.store.prefix + c.phase.name + "-" + c.toxic.name }

func (c faultCase) attrs() toxiproxy.Attributes {
	if c.toxic.name == "limit_data" {
		return toxiproxy.Attributes{"bytes": c.phase.limit}
	}
	return c.toxic.attrs
}

var seesText = map[string]string{
	seesOK:      "everything answered; messages complete",
	seesErrPass: "`-ERR [SYS/TEMP]` at PASS",
	seesCut:     "`+OK`, then the connection closes before the terminating `.`",
	seesErrCmd:  "`-ERR [SYS/TEMP]` to the command",
}

// matrixTable renders st's cases as the Markdown table of
// docs/failure-modes.md.
func matrixTable(st *faultStore) string {
	var b strings.Builder
	b.WriteString("| phase | toxic | the client sees | `end` | message 1 | message 2 | message 3 |\n")
	b.WriteString("|---|---|---|---|---|---|---|\n")
	for _, c := range faultCases(st) {
		toxic := c.toxic.name
		if toxic == "limit_data" {
			toxic += " " + strconv.FormatInt(c.phase.limit, 10)
		}
		if st.lift(c.phase.name, c.toxic.name) {
			toxic += fmt.Sprintf(" (lifted after %s)", liftAfter)
		}
		sees := seesText[c.sees]
		if c.sees == seesErrCmd {
			sees = st.errCmdText(c.phase.name)
		}
		up := c.upstream()
		fmt.Fprintf(&b, "| %s | %s | %s | `%s` | %s | %s | %s |\n", c.phase.name, toxic, sees, c.end(), up[0], up[1], up[2])
	}
	return b.String()
}

const (
	docPath    = "../docs/failure-modes.md"
	tableStart = "<!-- fault matrix: generated by e2e/faults_test.go; go test ./e2e -run TestFailureModesDoc -args -update-failure-modes -->\n"
	tableEnd   = "<!-- end of fault matrix -->\n"
)

// The matrices in docs/failure-modes.md are the ones the tests run.
func TestFailureModesDoc(t *testing.T) {
	for _, st := range []*faultStore{imapFaults, jmapFaults, restFaults} {
		raw, err := os.ReadFile(docPath)
		if err != nil {
			t.Fatal(err)
		}
		doc := string(raw)
		i := strings.Index(doc, st.marker)
		j := -1
		if i >= 0 {
			j = strings.Index(doc[i:], tableEnd)
		}
		if i < 0 || j < 0 {
			t.Fatalf("%s: no %q … %q block", docPath, st.marker, tableEnd)
		}
		j += i
		want := matrixTable(st)
		got := doc[i+len(st.marker) : j]
		if got == want {
			continue
		}
		if *updateDoc {
			if err := os.WriteFile(docPath, []byte(doc[:i+len(st.marker)]+want+doc[j:]), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		t.Errorf("%s's %s matrix differs from the test's cases; rerun with -args -update-failure-modes. The test's table:\n%s", docPath, st.name, want)
	}
}

// toxiServer starts toxiproxy-server on a free loopback port until the end
// of t.
func toxiServer(t *testing.T) *toxiproxy.Client {
	t.Helper()
	requireBin(t, "toxiproxy-server")
	port := freePort(t)
	var out testutil.SyncBuffer
	cmd := exec.Command("toxiproxy-server", "-host", "127.0.0.1", "-port", port)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	addr := "127.0.0.1:" + port
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/version")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("toxiproxy-server did not answer on %s: %v\n%s", addr, err, out.String())
		}
	}
	return toxiproxy.NewClient(addr)
}

// phaseRelay forwards popgate's upstream connections to a Toxiproxy proxy
// and calls fire (once) just before forwarding the nth write that contains
// trigger, after arm.
type phaseRelay struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	armed  bool
	trig   string
	nth    int
	after  int64
	seen   int
	fire   func()
	fired  chan struct{}
	conns  map[net.Conn]struct{} // open connections toward target
}

func newPhaseRelay(t *testing.T, target string) *phaseRelay {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &phaseRelay{ln: ln, target: target, fired: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		r.mu.Lock()
		for u := range r.conns {
			u.Close()
		}
		r.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); r.relay(c) }()
		}
	}()
	return r
}

func (r *phaseRelay) addr() string { return r.ln.Addr().String() }

// arm makes the relay call fire before the nth upstream write containing
// trigger ("*": any write), or, with after > 0, once after octets of the
// answer on that connection have been forwarded (reading no more of it
// until fire returns).
func (r *phaseRelay) arm(trigger string, nth int, after int64, fire func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.armed, r.trig, r.nth, r.after, r.seen, r.fire = true, trigger, nth, after, 0, fire
}

// deferredFire is a trigger seen, waiting for after octets of the answer.
type deferredFire struct {
	fire  func()
	after int64
}

// check counts the trigger in chunk (an upstream write) and returns what
// to fire, if this is the nth.
func (r *phaseRelay) check(tail, chunk []byte) *deferredFire {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.armed {
		return nil
	}
	window := append(append([]byte{}, tail...), chunk...)
	if r.trig == "*" {
		r.seen++
	} else {
		r.seen += bytes.Count(window, []byte(r.trig)) - bytes.Count(tail, []byte(r.trig))
	}
	if r.seen < r.nth {
		return nil
	}
	r.armed = false
	fire := r.fire
	return &deferredFire{fire: func() { fire(); close(r.fired) }, after: r.after}
}

// relayDrain bounds how long a relay goes on reading from its target
// after its client closed.
const relayDrain = time.Minute

// relay forwards one connection. When the client (popgate) closes its end
// with an answer still on the way (TOP over HTTP stops reading the blob
// and closes), the relay goes on reading from the target and discards
// it, until the target closes, relayDrain passes or the test ends: in
// front of Toxiproxy this keeps Toxiproxy's writer alive, as Toxiproxy
// 2.5.0 deadlocks when a toxic is removed while a link's writer has
// failed with data still in its toxic chain (Shopify/toxiproxy#412, #558:
// the DELETE answers 503 after 25 s and the proxy stays locked).
func (r *phaseRelay) relay(c net.Conn) {
	defer c.Close()
	u, err := net.Dial("tcp", r.target)
	if err != nil {
		return
	}
	r.mu.Lock()
	r.conns[u] = struct{}{}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.conns, u)
		r.mu.Unlock()
		u.Close()
	}()
	var pending atomic.Pointer[deferredFire]
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		defer c.Close()
		buf := make([]byte, 16<<10)
		var got int64
		clientGone := false
		for {
			n, err := u.Read(buf)
			if n > 0 {
				if !clientGone {
					if _, werr := c.Write(buf[:n]); werr != nil {
						clientGone = true
						u.SetReadDeadline(time.Now().Add(relayDrain))
					}
				}
				if p := pending.Load(); p != nil {
					if got += int64(n); got >= p.after {
						pending.Store(nil)
						p.fire()
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64<<10)
	var tail []byte
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if f := r.check(tail, buf[:n]); f != nil {
				if f.after > 0 {
					pending.Store(f)
				} else {
					f.fire()
				}
			}
			if _, werr := u.Write(buf[:n]); werr != nil {
				return
			}
			tail = append(tail, buf[:n]...)
			if len(tail) > 64 {
				tail = append([]byte{}, tail[len(tail)-64:]...)
			}
		}
		if err != nil {
			u.(*net.TCPConn).CloseWrite()
			u.SetReadDeadline(time.Now().Add(relayDrain))
			<-drained
			return
		}
	}
}

// faultGateway runs popgate serve with a backend per case (backends:
// the user → the backend's YAML keys, indented by four spaces; its
// upstream address the case's relay), routed by exact login name, and a
// "clean" backend straight to Dovecot for everyone else (the bystanders).
func faultGateway(t *testing.T, backends map[string]string, secrets []string) *gateway {
	t.Helper()
	dir := t.TempDir()
	g := &gateway{addr: "127.0.0.1:" + freePort(t), logPath: filepath.Join(dir, "popgate.log"), secrets: secrets}
	var b strings.Builder
	fmt.Fprintf(&b, "listeners:\n  - {address: %q, tls: none}\n", g.addr)
	b.WriteString("backends:\n")
	fmt.Fprintf(&b, "  clean:\n%s", imapFaultBackend(dc.Addr()))
	var users []string
	for u := range backends {
		users = append(users, u)
	}
	sort.Strings(users)
	for _, u := range users {
		fmt.Fprintf(&b, "  %s:\n%s", u, backends[u])
	}
	b.WriteString("routes:\n")
	for _, u := range users {
		fmt.Fprintf(&b, "  - {match: %q, backend: %s}\n", u, u)
	}
	b.WriteString("  - {match: \"*\", backend: clean}\n")
	b.WriteString(`auth:
  allow_plaintext: true
  failure_delay: 0s
session:
  command_timeout: 30s
  idle_timeout: 1m
  login_timeout: 1m
  max_connections_per_ip: 0
log:
  level: info
  format: json
`)
	return runGateway(t, g, dir, b.String())
}

// imapFaultBackend is the backend section of an IMAP server at addr, with
// the matrix's short timeouts.
func imapFaultBackend(addr string) string {
	return fmt.Sprintf("    type: imap\n    address: %q\n    tls: none\n    dial_timeout: 10s\n    command_timeout: 10s\n    delete: {policy: expunge}\n", addr)
}

// bigMessage is a 1.5 MiB message (two upstream chunks) with dot-leading
// lines.
func bigMessage() []byte {
	var b bytes.Buffer
	b.WriteString("From: Fault Sender <fault@example.com>\r\nTo: f@example.org\r\nSubject: a message of two chunks\r\nMessage-ID: <big.fault@example.com>\r\n\r\n")
	for i := 0; b.Len() < 3<<19; i++ {
		if i%50 == 0 {
			b.WriteString(".a dot-leading line\r\n")
		}
		fmt.Fprintf(&b, "%07d %s\r\n", i, strings.Repeat("0123456789", 1+i%12))
	}
	return b.Bytes()
}

// pop3 is a raw POP3 connection for the matrix: it must see exactly what
// popgate wrote, including a connection closed in the middle of a message.
type pop3 struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	id string // the client's IP address, in the "remote" of its log lines
}

// dialFrom connects to addr from source address ip (any of 127.0.0.0/8
// works on loopback).
func dialFrom(ip, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return d.Dial("tcp", addr)
}

func dialPOP3(t *testing.T, ip, addr string) *pop3 {
	t.Helper()
	c, err := dialFrom(ip, addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &pop3{t: t, c: c, r: bufio.NewReader(c), id: ip}
	t.Cleanup(func() { c.Close() })
	if l, err := p.line(); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Fatalf("greeting %q %v", l, err)
	}
	return p
}

func (p *pop3) line() (string, error) {
	p.c.SetReadDeadline(time.Now().Add(60 * time.Second))
	l, err := p.r.ReadString('\n')
	return strings.TrimRight(l, "\r\n"), err
}

// cmd sends one command and returns its status line.
func (p *pop3) cmd(format string, a ...any) string {
	p.t.Helper()
	l, err := p.try(format, a...)
	if err != nil {
		p.t.Fatal(err)
	}
	return l
}

// try sends one command and returns its status line or an error.
func (p *pop3) try(format string, a ...any) (string, error) {
	name := strings.Fields(format)[0]
	if _, err := fmt.Fprintf(p.c, format+"\r\n", a...); err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	l, err := p.line()
	if err != nil {
		return "", fmt.Errorf("%s: no answer: %w", name, err)
	}
	return l, nil
}

// multi reads a multi-line body after +OK: the unstuffed octets, and
// whether the terminating dot line came (false: the connection closed).
func (p *pop3) multi() ([]byte, bool) {
	var b bytes.Buffer
	for {
		p.c.SetReadDeadline(time.Now().Add(60 * time.Second))
		l, err := p.r.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			b.Write(l)
			continue
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				p.t.Errorf("no data for 60s in a multi-line answer")
			}
			b.Write(l)
			return b.Bytes(), false
		}
		if string(l) == ".\r\n" {
			return b.Bytes(), true
		}
		if l[0] == '.' {
			l = l[1:]
		}
		b.Write(l)
	}
}

// closed reports whether the server closed the connection (reading gets
// EOF or a reset within 30 s).
func (p *pop3) closed() bool {
	p.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err := p.r.ReadByte()
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// topOf is TOP's expected answer: the header, the blank line and the first
// n body lines.
func topOf(msg []byte, n int) []byte {
	h, body, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	out := append(append([]byte{}, h...), "\r\n\r\n"...)
	for i := 0; i < n && len(body) > 0; i++ {
		l, rest, ok := bytes.Cut(body, []byte("\r\n"))
		out = append(append(out, l...), "\r\n"...)
		if !ok {
			break
		}
		body = rest
	}
	return out
}

// sessionEnds returns the "session end" log lines of connections from ip
// (each case's client has an address of its own in 127.0.0.0/8, so that a
// reused client port cannot mix two connections up).
func sessionEnds(t *testing.T, logPath, ip string) []map[string]any {
	raw, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, l := range bytes.Split(raw, []byte("\n")) {
		if !bytes.Contains(l, []byte(`"session end"`)) || !bytes.Contains(l, []byte(`"`+ip+`:`)) {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal(l, &m); err == nil && m["message"] == "session end" {
			if r, _ := m["remote"].(string); strings.HasPrefix(r, ip+":") {
				out = append(out, m)
			}
		}
	}
	return out
}

// bystander runs a whole session for user on g (login, RETR 1, QUIT) while
// a fault is active elsewhere, checks it, and logs its latencies. It runs
// in its own goroutine, so it reports with Errorf only.
func bystander(t *testing.T, g *gateway, ip, user, pass string, msg []byte) {
	start := time.Now()
	c, err := dialFrom(ip, g.addr)
	if err != nil {
		t.Errorf("bystander: %v", err)
		return
	}
	defer c.Close()
	p := &pop3{t: t, c: c, r: bufio.NewReader(c)}
	step := func(format string, a ...any) bool {
		l, err := p.try(format, a...)
		if err == nil && !strings.HasPrefix(l, "+OK") {
			err = fmt.Errorf("%s: %s", strings.Fields(format)[0], l)
		}
		if err != nil {
			t.Errorf("bystander: %v", err)
			return false
		}
		return true
	}
	if l, err := p.line(); err != nil || !strings.HasPrefix(l, "+OK") {
		t.Errorf("bystander greeting %q %v", l, err)
		return
	}
	if !step("USER %s", user) || !step("PASS %s", pass) {
		return
	}
	login := time.Since(start)
	start = time.Now()
	if !step("RETR 1") {
		return
	}
	got, done := p.multi()
	retr := time.Since(start)
	if !done || !bytes.Equal(got, msg) {
		t.Errorf("bystander RETR 1: complete %v, %d octets, want %d", done, len(got), len(msg))
	}
	step("QUIT")
	t.Logf("bystander during the fault: login %v, RETR %v", login.Round(time.Millisecond), retr.Round(time.Millisecond))
}

// TestFaultMatrix runs every phase × toxic case against popgate serve →
// relay → Toxiproxy → Dovecot, several cases at a time.
func TestFaultMatrix(t *testing.T) {
	require(t)
	if *reference {
		t.Skip("the fault matrix tests popgate")
	}
	runFaultMatrix(t, imapFaults, dovecotFaults{}, dc.Addr(), false)
}

// faultUpstream is a store type's side of the matrix: its users, mail and
// the popgate backend in front of it.
type faultUpstream interface {
	// addUser creates user and returns the password.
	addUser(t *testing.T, user string) string
	// seed puts msgs in user's maildrop, in this order.
	seed(t *testing.T, user string, msgs [][]byte)
	// states returns, for each of msgs, upKept, upFlagged or upGone.
	states(t *testing.T, user string, msgs [][]byte) []string
	// backend is the backend's YAML keys for an upstream at addr.
	backend(addr string) string
}

// dovecotFaults is the IMAP matrix's upstream.
type dovecotFaults struct{}

func (dovecotFaults) addUser(t *testing.T, user string) string { return newUser(t, user) }
func (dovecotFaults) seed(t *testing.T, user string, msgs [][]byte) {
	appendAll(t, user, msgs)
}
func (dovecotFaults) backend(addr string) string { return imapFaultBackend(addr) }
func (dovecotFaults) states(t *testing.T, user string, msgs [][]byte) []string {
	_, held := upstream(t, user)
	var out []string
	for _, m := range msgs {
		state := upGone
		for _, h := range held {
			if bytes.Equal(h.Raw, m) {
				state = upKept
				if h.has(imap.FlagDeleted) {
					state = upFlagged
				}
			}
		}
		out = append(out, state)
	}
	return out
}

// runFaultMatrix runs st's cases, popgate → relay → Toxiproxy → target
// (up's server), or with relayBehind popgate → draining relay → Toxiproxy
// → relay → target,
// several at a time; the bystanders use Dovecot. Behind Toxiproxy, a relay
// that stops reading an answer (faultPhase.after) holds back everything
// after that point until the toxic is in place; in front of it, what
// Toxiproxy has buffered meanwhile would pass untouched.
func runFaultMatrix(t *testing.T, st *faultStore, up faultUpstream, target string, relayBehind bool) {
	tox := toxiServer(t)
	cases := faultCases(st)
	small := demo.Samples()
	big := bigMessage()
	backends := map[string]string{}
	caseRelay := map[string]*phaseRelay{}
	proxies := map[string]*toxiproxy.Proxy{}
	passwords := map[string]string{}
	var secrets []string
	for _, c := range cases {
		var r *phaseRelay
		var px *toxiproxy.Proxy
		var err error
		if relayBehind {
			r = newPhaseRelay(t, target)
			px, err = tox.CreateProxy(c.user(), "127.0.0.1:0", r.addr())
		} else {
			px, err = tox.CreateProxy(c.user(), "127.0.0.1:0", target)
		}
		if err != nil {
			t.Fatal(err)
		}
		// popgate always reaches Toxiproxy through a relay: the phase's
		// own or, with relayBehind, one never armed, which only drains
		// what Toxiproxy still sends after popgate closed (see relay).
		front := newPhaseRelay(t, px.Listen)
		if !relayBehind {
			r = front
		}
		upAddr := front.addr()
		proxies[c.user()] = px
		caseRelay[c.user()] = r
		backends[c.user()] = up.backend(upAddr)
		passwords[c.user()] = up.addUser(t, c.user())
		passwords["by-"+c.user()] = newUser(t, "by-"+c.user())
		secrets = append(secrets, passwords[c.user()], passwords["by-"+c.user()])
	}
	if s, ok := up.(interface{ start(*testing.T) }); ok {
		s.start(t)
	}
	g := faultGateway(t, backends, secrets)

	// The mail, one user after the other (Cyrus fails concurrent APPENDs
	// now and then).
	caseMsgs := map[string][][]byte{}
	for _, c := range cases {
		msgs := [][]byte{small[0].Raw, small[1].Raw, small[2].Raw}
		if c.phase.name == "retr" || c.phase.name == "top" {
			msgs[1] = big
		}
		caseMsgs[c.user()] = msgs
		up.seed(t, c.user(), msgs)
		appendAll(t, "by-"+c.user(), [][]byte{small[0].Raw})
	}

	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t.Run(c.name(), func(t *testing.T) {
				msgs := caseMsgs[c.user()]
				ip := fmt.Sprintf("127.0.1.%d", i+1)
				runFaultCase(t, g, c, ip, passwords, proxies[c.user()], caseRelay[c.user()], msgs, small[0].Raw)
				got := up.states(t, c.user(), msgs)
				want := c.upstream()
				for i := range msgs {
					if got[i] != want[i] {
						t.Errorf("message %d upstream: %s, want %s", i+1, got[i], want[i])
					}
				}
			})
		}()
	}
	wg.Wait()
}

func runFaultCase(t *testing.T, g *gateway, c faultCase, ip string, passwords map[string]string, px *toxiproxy.Proxy, relay *phaseRelay, msgs [][]byte, byMsg []byte) {
	user, pass := c.user(), passwords[c.user()]

	var by sync.WaitGroup
	defer by.Wait()
	var removeOnce sync.Once
	var remove func()
	install := func() {
		if _, err := px.AddToxic("fault", c.toxic.name, "downstream", 1, c.attrs()); err != nil {
			t.Errorf("adding toxic: %v", err)
		}
		if c.store.lift(c.phase.name, c.toxic.name) {
			time.AfterFunc(liftAfter, func() { remove() })
		}
		by.Add(1)
		go func() {
			defer by.Done()
			by := "by-" + user
			bystander(t, g, strings.Replace(ip, "127.0.1.", "127.0.2.", 1), by, passwords[by], byMsg)
		}()
	}
	// answered: the client has the status line of the phase's command. A
	// fault in the middle of an answer (phase.after) waits for it, so that
	// it hits the message stream, not the calls Open makes before +OK.
	answered := make(chan struct{})
	var answeredOnce sync.Once
	gotAnswer := func() { answeredOnce.Do(func() { close(answered) }) }
	defer gotAnswer()
	arm := func() {
		switch {
		case c.phase.trigger == "":
			install()
			close(relay.fired)
		case c.phase.after > 0:
			relay.arm(c.phase.trigger, c.phase.nth, c.phase.after, func() { <-answered; install() })
		default:
			relay.arm(c.phase.trigger, c.phase.nth, 0, install)
		}
	}
	remove = func() {
		removeOnce.Do(func() {
			select {
			case <-relay.fired:
			default:
				t.Errorf("the phase's trigger %q (#%d) never went upstream", c.phase.trigger, c.phase.nth)
				return
			}
			if err := px.RemoveToxic("fault"); err != nil {
				t.Errorf("removing toxic: %v", err)
			}
		})
	}
	defer remove()
	p := dialPOP3(t, ip, g.addr)
	if l := p.cmd("USER %s", user); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("USER: %s", l)
	}
	sees := ""
	inLogin := len(c.phase.deletes) == 0
	if inLogin {
		arm()
	}
	l := p.cmd("PASS %s", pass)
	if inLogin {
		remove()
	}
	switch {
	case strings.HasPrefix(l, "-ERR [SYS/TEMP]") && inLogin:
		sees = seesErrPass
		if l := p.cmd("QUIT"); !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT after a failed PASS: %s", l)
		}
	case !strings.HasPrefix(l, "+OK"):
		t.Fatalf("PASS: %s", l)
	case inLogin:
		sees = seesOK
		if l := p.cmd("RETR 1"); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("RETR 1: %s", l)
		}
		if got, done := p.multi(); !done || !bytes.Equal(got, msgs[0]) {
			t.Errorf("RETR 1: complete %v, %d octets, want %d", done, len(got), len(msgs[0]))
		}
		if l := p.cmd("DELE 3"); !strings.HasPrefix(l, "+OK") {
			t.Fatalf("DELE 3: %s", l)
		}
		if l := p.cmd("QUIT"); !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT: %s", l)
		}
	default:
		for _, n := range c.phase.deletes {
			if l := p.cmd("DELE %d", n); !strings.HasPrefix(l, "+OK") {
				t.Fatalf("DELE %d: %s", n, l)
			}
		}
		sees = runFaultCommand(t, p, c, msgs[1], arm, gotAnswer, remove)
	}
	if sees != c.sees {
		t.Errorf("client saw %s, want %s", sees, c.sees)
	}

	// One "session end", with the right end.
	var ends []map[string]any
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ends = sessionEnds(t, g.logPath, p.id)
		if len(ends) > 0 || time.Now().After(deadline) {
			break
		}
	}
	time.Sleep(100 * time.Millisecond)
	ends = sessionEnds(t, g.logPath, p.id)
	if len(ends) != 1 {
		t.Errorf("%d session end lines for %s, want 1", len(ends), p.id)
	} else if ends[0]["end"] != c.end() {
		t.Errorf("session end: end=%v, want %s", ends[0]["end"], c.end())
	}
}

// runFaultCommand runs the phase's command (RETR 2, TOP 2 10 or QUIT) with
// the toxic armed, and QUIT after it when the session goes on.
func runFaultCommand(t *testing.T, p *pop3, c faultCase, msg2 []byte, arm, gotAnswer, remove func()) string {
	arm()
	switch c.phase.name {
	case "retr", "top":
		want := msg2
		cmd := "RETR 2"
		if c.phase.name == "top" {
			cmd, want = "TOP 2 10", topOf(msg2, 10)
		}
		l := p.cmd(cmd)
		gotAnswer()
		var sees string
		switch {
		case strings.HasPrefix(l, "-ERR [SYS/TEMP]"):
			remove()
			sees = seesErrCmd
		case strings.HasPrefix(l, "+OK"):
			got, done := p.multi()
			remove()
			if done {
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: a short or wrong message ending with the dot: %d octets, want %d", cmd, len(got), len(want))
				}
				sees = seesOK
			} else {
				sees = seesCut
				if !bytes.HasPrefix(want, got) {
					t.Errorf("%s: the %d octets before the cut are not the message's beginning", cmd, len(got))
				}
				if c.phase.after > 0 && int64(len(got)) < c.phase.after/2 {
					t.Errorf("%s: cut after %d octets: the fault was to come in the middle of the message", cmd, len(got))
				}
				t.Logf("%s cut after %d of %d octets", cmd, len(got), len(want))
				return sees
			}
		default:
			t.Fatalf("%s: %s", cmd, l)
		}
		l = p.cmd("QUIT")
		if c.end() == "commit_failed" {
			if !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
				t.Errorf("QUIT after %s: %s, want -ERR [SYS/TEMP]", cmd, l)
			}
			if !p.closed() {
				t.Errorf("connection still open after a failed commit")
			}
		} else if !strings.HasPrefix(l, "+OK") {
			t.Errorf("QUIT: %s", l)
		}
		return sees
	default: // quit, quit-expunge
		l := p.cmd("QUIT")
		remove()
		switch {
		case strings.HasPrefix(l, "+OK"):
			return seesOK
		case strings.HasPrefix(l, "-ERR [SYS/TEMP]"):
			if !p.closed() {
				t.Errorf("connection still open after a failed commit")
			}
			return seesErrCmd
		}
		t.Fatalf("QUIT: %s", l)
		return ""
	}
}
