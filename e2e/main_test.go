// Package e2e tests the built popgate binary end to end: a private Dovecot
// IMAP server holds the mail, `popgate serve` runs in front of it, and real
// POP3 clients (curl, fetchmail, mpop, Python's poplib) read and delete mail
// through it. Every test checks the delivered bytes against what was
// APPENDed, deletions upstream over IMAP, UIDL stability, and that messages
// another IMAP client flagged \Deleted survive popgate's QUIT.
//
// Missing Dovecot or client binaries skip a test, or fail it when CI=true.
//
//	go test ./e2e                 # against popgate
//	go test ./e2e -args -reference  # the same clients against Dovecot's own POP3 (checks the tests)
package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/popgate/popgate/backends/demo"
	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/internal/testutil"
)

var reference = flag.Bool("reference", false, "run the clients against Dovecot's own POP3 instead of popgate")

var (
	popgateBin string          // built in TestMain
	dc         *dovecot.Server // shared by all tests; each test has its own users
	dcErr      error
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(run(m))
}

func run(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "popgate-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	if !*reference {
		if popgateBin, err = testutil.BuildPopgate(tmp); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
	}
	dc, dcErr = dovecot.New(dovecot.Options{POP3: true})
	if dc != nil {
		defer dc.Close()
	}
	defer closeCyrus() // started by the JMAP tests on first use
	return m.Run()
}

// require skips t, or fails it when CI=true, unless Dovecot runs and the
// given client binaries are installed.
func require(t *testing.T, bins ...string) {
	t.Helper()
	if dcErr != nil {
		if errors.Is(dcErr, dovecot.ErrNotInstalled) {
			missing(t, dcErr)
		}
		t.Fatalf("starting Dovecot: %v", dcErr)
	}
	requireBin(t, bins...)
}

// requireBin skips t, or fails it when CI=true, unless the given client
// binaries are installed.
func requireBin(t *testing.T, bins ...string) {
	t.Helper()
	for _, b := range bins {
		if _, err := exec.LookPath(b); err != nil {
			missing(t, fmt.Errorf("%s not installed (Debian package %s)", b, b))
		}
	}
}

func missing(t *testing.T, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(err)
	}
	t.Skip(err)
}

// newUser creates a Dovecot user for t alone and returns its password. The
// password is distinctive so that the popgate log can be searched for it.
func newUser(t *testing.T, name string) string {
	t.Helper()
	pass := "pw-" + name + "-Zq7x"
	if err := dc.AddUser(name, pass); err != nil {
		t.Fatal(err)
	}
	return pass
}

// gateway is a running `popgate serve` (or Dovecot's POP3 with -reference).
type gateway struct {
	addr       string
	logPath    string
	configPath string
	secrets    []string
}

// host and port of the gateway's plaintext POP3 listener.
func (g *gateway) host() string { h, _ := splitHostPort(g.addr); return h }
func (g *gateway) port() string { _, p := splitHostPort(g.addr); return p }

// startGateway runs popgate serve in front of the shared Dovecot, with a
// plaintext listener on a free loopback port, until the end of t. secrets
// must never appear in popgate's log (DESIGN invariant 8).
func startGateway(t *testing.T, secrets ...string) *gateway {
	t.Helper()
	return startGatewayWith(t, "", secrets...)
}

// startGatewayWith is startGateway with extra top-level YAML appended to
// the configuration.
func startGatewayWith(t *testing.T, extra string, secrets ...string) *gateway {
	t.Helper()
	if *reference {
		return &gateway{addr: dc.POP3Addr()}
	}
	dir := t.TempDir()
	port := freePort(t)
	g := &gateway{addr: "127.0.0.1:" + port, logPath: filepath.Join(dir, "popgate.log"), secrets: secrets}
	conf := fmt.Sprintf(`# popgate e2e configuration
listeners:
  - address: "%s"
    tls: none
backends:
  dovecot:
    type: imap
    address: "%s"
    tls: none
    delete:
      policy: expunge
routes:
  - match: "*"
    backend: dovecot
auth:
  allow_plaintext: true
  failure_delay: 0s
log:
  level: debug
  format: json
`, g.addr, dc.Addr()) + extra
	return runGateway(t, g, dir, conf)
}

// runGateway starts popgate serve with configuration conf (written to
// dir) for g, until the end of t, and waits for its greeting.
func runGateway(t *testing.T, g *gateway, dir, conf string) *gateway {
	t.Helper()
	confPath := filepath.Join(dir, "popgate.yaml")
	g.configPath = confPath
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Registered first, so it runs after the process has stopped.
		log, _ := os.ReadFile(g.logPath)
		for _, s := range g.secrets {
			if s != "" && bytes.Contains(log, []byte(s)) {
				t.Errorf("popgate's log contains a password")
			}
		}
	})
	p := testutil.StartProc(t, testutil.ProcOptions{LogFile: g.logPath, Graceful: true}, popgateBin, "serve", "--config", confPath)
	p.WaitGreeting(t, g.addr)
	return g
}

// freePort returns a loopback port no other caller in this test binary got.
func freePort(t *testing.T) string { return strconv.Itoa(testutil.FreePort(t)) }

// upstreamMsg is a message as the IMAP server holds it.
type upstreamMsg struct {
	UID   imap.UID
	Flags []imap.Flag
	Raw   []byte
}

func (m upstreamMsg) has(f imap.Flag) bool {
	for _, g := range m.Flags {
		if strings.EqualFold(string(g), string(f)) {
			return true
		}
	}
	return false
}

// upstream lists user's INBOX over IMAP (UID order) and its UIDVALIDITY.
func upstream(t *testing.T, user string) (uint32, []upstreamMsg) {
	t.Helper()
	c, err := dc.Dial(user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sel, err := c.Select("INBOX", &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		t.Fatal(err)
	}
	var out []upstreamMsg
	if sel.NumMessages > 0 {
		var all imap.UIDSet
		all.AddRange(1, 0)
		section := &imap.FetchItemBodySection{Peek: true}
		msgs, err := c.Fetch(all, &imap.FetchOptions{UID: true, Flags: true, BodySection: []*imap.FetchItemBodySection{section}}).Collect()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			out = append(out, upstreamMsg{UID: m.UID, Flags: m.Flags, Raw: m.FindBodySection(section)})
		}
	}
	c.Logout().Wait()
	return sel.UIDValidity, out
}

// appendAll APPENDs msgs to user's INBOX and returns their UIDs.
func appendAll(t *testing.T, user string, msgs [][]byte, flags ...imap.Flag) []imap.UID {
	t.Helper()
	var uids []imap.UID
	for _, m := range msgs {
		uid, err := dc.Append(user, "INBOX", m, flags...)
		if err != nil {
			t.Fatal(err)
		}
		uids = append(uids, uid)
	}
	return uids
}

// flagDeleted sets \Deleted on uid as another IMAP client would, without
// expunging.
func flagDeleted(t *testing.T, user string, uid imap.UID) {
	t.Helper()
	c, err := dc.Dial(user)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Select("INBOX", nil).Wait(); err != nil {
		t.Fatal(err)
	}
	if err := c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
		t.Fatal(err)
	}
	c.Logout().Wait()
}

// uidl is Dovecot's default POP3 UIDL (pop3_uidl_format = %08Xu%08Xv; its X
// gives lowercase hex), which popgate reproduces so that clients moving from
// Dovecot keep their state.
func uidl(uid imap.UID, validity uint32) string {
	return fmt.Sprintf("%08x%08x", uint32(uid), validity)
}

// runClient runs a client binary with a deadline, in dir, with HOME=dir.
func runClient(t *testing.T, dir string, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "FETCHMAILHOME="+dir, "LC_ALL=C")
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var o, e bytes.Buffer
	cmd.Stdout = &o
	cmd.Stderr = &e
	err = cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s did not finish within 5 minutes (a hang): %s", name, e.Bytes())
	}
	return o.Bytes(), e.Bytes(), err
}

// lf turns CRLF into LF: how MDA deliveries and mbox files store mail.
func lf(b []byte) []byte { return bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")) }

// checkDelivered checks that a client delivered orig unchanged, apart from
// line endings (normalised to LF on both sides) and trace header lines the
// client prepends (Received:, Delivered-To:, X-…, Return-Path:, Status:).
func checkDelivered(t *testing.T, what string, got, orig []byte) {
	t.Helper()
	g, w := lf(got), lf(orig)
	if !bytes.HasSuffix(g, w) {
		t.Errorf("%s: delivered message does not end with the original.\n got: %q\nwant suffix: %q", what, clip(g), clip(w))
		return
	}
	prefix := string(g[:len(g)-len(w)])
	for _, line := range strings.SplitAfter(prefix, "\n") {
		if line == "" {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // folded header
		}
		name, _, ok := strings.Cut(line, ":")
		if !ok {
			t.Errorf("%s: client added a non-header line before the message: %q", what, line)
			continue
		}
		switch n := strings.ToLower(name); {
		case n == "received", n == "delivered-to", n == "return-path", n == "status", strings.HasPrefix(n, "x-"):
		default:
			t.Errorf("%s: client added an unexpected header before the message: %q", what, line)
		}
	}
}

func clip(b []byte) []byte {
	if len(b) > 600 {
		return append(append([]byte{}, b[:300]...), append([]byte(" … "), b[len(b)-300:]...)...)
	}
	return b
}

// deliverScript writes an MDA script that stores each message it gets on
// stdin as DIR/out/NNNNN (clients deliver one message at a time, in order)
// and returns its path.
func deliverScript(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "deliver.sh")
	script := "#!/bin/sh\nset -e\nn=$(ls '" + out + "' | wc -l)\ncat > '" + out + "'/$(printf %05d \"$n\")\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// delivered returns the messages the MDA script stored, in order, and
// removes them.
func delivered(t *testing.T, dir string) [][]byte {
	t.Helper()
	out := filepath.Join(dir, "out")
	ents, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	var msgs [][]byte
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(out, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, b)
		os.Remove(filepath.Join(out, e.Name()))
	}
	return msgs
}

var corpusOnce sync.Once
var corpusMsgs [][]byte

// corpus is the set of messages the tests APPEND: the demo store's samples
// (plain, dot-leading lines, 8-bit UTF-8, multipart with a base64
// attachment, a long one) and a 300 KB message with long lines.
func corpus() [][]byte {
	corpusOnce.Do(func() {
		for _, s := range demo.Samples() {
			corpusMsgs = append(corpusMsgs, s.Raw)
		}
		var b bytes.Buffer
		b.WriteString("From: Big Sender <big@example.com>\r\nTo: e2e@example.org\r\nSubject: a larger message\r\nMessage-ID: <big.1@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
		for i := 0; b.Len() < 300<<10; i++ {
			fmt.Fprintf(&b, "%06d ", i)
			b.WriteString(strings.Repeat("abcdefghij", 1+i%90))
			b.WriteString("\r\n")
			if i%100 == 0 {
				b.WriteString(".dot at line start\r\n")
			}
		}
		corpusMsgs = append(corpusMsgs, b.Bytes())
	})
	return corpusMsgs
}

func splitHostPort(addr string) (string, string) {
	h, p, _ := net.SplitHostPort(addr)
	return h, p
}

func writeFile(t *testing.T, path, content string, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, perm); err != nil { // regardless of umask
		t.Fatal(err)
	}
}
