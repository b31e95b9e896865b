package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends/demo"
)

func TestVersionAndHelp(t *testing.T) {
	code, out, _ := runPopgate(t, "version")
	if code != 0 || !strings.HasPrefix(out, "popgate ") {
		t.Errorf("version: status %d, %q", code, out)
	}
	for _, sub := range []string{"serve", "demo", "check-config", "version"} {
		code, out, errOut := runPopgate(t, sub, "--help")
		if code != 0 || !strings.HasPrefix(out, "Usage: popgate "+sub) || errOut != "" {
			t.Errorf("%s --help: status %d, stdout %q, stderr %q", sub, code, out, errOut)
		}
	}
	code, out, _ = runPopgate(t, "--help")
	if code != 0 || !strings.Contains(out, "check-config") {
		t.Errorf("--help: status %d, %q", code, out)
	}
	code, _, errOut := runPopgate(t)
	if code != 2 || !strings.HasPrefix(errOut, "popgate is a POP3 gateway") {
		t.Errorf("no command: status %d, %q", code, errOut)
	}
	code, _, errOut = runPopgate(t, "frobnicate")
	if code != 2 || !strings.HasPrefix(errOut, `popgate: unknown command "frobnicate"`) {
		t.Errorf("unknown command: status %d, %q", code, errOut)
	}
	code, _, errOut = runPopgate(t, "serve", "--no-such-flag")
	if code != 2 || !strings.Contains(errOut, "flag provided but not defined: -no-such-flag") {
		t.Errorf("bad flag: status %d, %q", code, errOut)
	}
}

func TestExampleConfigPassesCheckConfig(t *testing.T) {
	code, out, errOut := runPopgate(t, "check-config", "--config", "../../config.example.yaml")
	if code != 0 || !strings.HasPrefix(out, "../../config.example.yaml: OK\n") || errOut != "" {
		t.Fatalf("status %d\nstdout %s\nstderr %s", code, out, errOut)
	}
}

// goodConfig is a valid configuration whose files exist.
func goodConfig(t *testing.T, dir string) string {
	cert, key := writeCert(t, dir)
	return fmt.Sprintf(`listeners:
  - address: 127.0.0.1:1110
    tls: starttls
tls:
  cert_file: %s
  key_file: %s
backends:
  main:
    type: imap
    address: 127.0.0.1:1143
    tls: none
routes:
  - match: "*@example.com"
    backend: main
    rewrite: {strip_domain: true}
`, cert, key)
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := goodConfig(t, dir)
	write := func(name, s string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	p := write("good.yaml", good)
	code, out, errOut := runPopgate(t, "check-config", "-c", p)
	wantOut := p + ": OK\n" +
		"listeners:\n  127.0.0.1:1110           starttls\n"
	if code != 0 || !strings.HasPrefix(out, wantOut) || errOut != "" {
		t.Errorf("good: status %d\nstdout %q\nstderr %q", code, out, errOut)
	}
	for _, want := range []string{
		"  main         imap 127.0.0.1:1143 (tls none), mailbox INBOX, delete: expunge\n",
		"  1. *@example.com        -> main (strip domain)\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}

	for _, tc := range []struct {
		name, config, want string
	}{
		{"unknown key", strings.Replace(good, "    tls: none\n", "    tls: none\n    mailboxx: INBOX\n", 1),
			`line 12: backends.main: unknown key "mailboxx" (known keys: type, address, tls, mailbox, uidl_template, server_name, ca_file, min_version, insecure_skip_verify, dial_timeout, command_timeout, mark_seen, snapshot_cache, delete, uidl_header, allow_plain_expunge, reuse)`},
		// a key of another store type under type imap: the imap keys are named
		{"demo key under imap", strings.Replace(good, "    tls: none\n", "    tls: none\n    seed: true\n", 1),
			`line 12: backends.main: unknown key "seed" (known keys: type, address, tls, mailbox, uidl_template, server_name, ca_file, min_version, insecure_skip_verify, dial_timeout, command_timeout, mark_seen, snapshot_cache, delete, uidl_header, allow_plain_expunge, reuse)`},
		// an IMAP key under another type: that type's keys are named
		{"uidl_template under demo", strings.Replace(good, "    type: imap\n    address: 127.0.0.1:1143\n    tls: none\n", "    type: demo\n    uidl_template: \"%u\"\n", 1),
			`line 10: backends.main: unknown key "uidl_template" (known keys: type, address, seed, dial_timeout, command_timeout, mark_seen, snapshot_cache, delete, uidl_header)`},
		{"unknown type", strings.Replace(good, "    type: imap\n", "    type: pop3\n", 1),
			`line 9: backends.main.type: unknown type "pop3" (registered types: imap, jmap, rest or demo)`},
		{"bad address", strings.Replace(good, "127.0.0.1:1110", "127.0.0.1", 1),
			`line 2: listeners[0].address: "127.0.0.1" is not host:port (missing port in address)`},
		{"unknown backend", strings.Replace(good, "backend: main", "backend: mian", 1),
			`line 14: routes[0].backend: unknown backend "mian"`},
	} {
		p := write(strings.ReplaceAll(tc.name, " ", "-")+".yaml", tc.config)
		code, out, errOut := runPopgate(t, "check-config", "--config", p)
		if want := "popgate: " + p + ": " + tc.want + "\n"; code != 2 || errOut != want || out != "" {
			t.Errorf("%s: status %d\nstderr %q\n  want %q", tc.name, code, errOut, want)
		}
	}

	// every problem, one per line
	p = write("many.yaml", strings.Replace(strings.Replace(good, "backend: main", "backend: mian", 1), "127.0.0.1:1110", "127.0.0.1", 1))
	code, _, errOut = runPopgate(t, "check-config", "--config", p)
	want := "popgate: " + p + ": 2 problems:\n" +
		`  line 2: listeners[0].address: "127.0.0.1" is not host:port (missing port in address)` + "\n" +
		`  line 14: routes[0].backend: unknown backend "mian"` + "\n"
	if code != 2 || errOut != want {
		t.Errorf("two problems: status %d\nstderr %q\n  want %q", code, errOut, want)
	}

	// what the IMAP type itself refuses is reported with the key's path and line
	p = write("uidl.yaml", strings.Replace(good, "    tls: none\n", "    tls: none\n    uidl_template: \"%08Xv\"\n", 1))
	code, _, errOut = runPopgate(t, "check-config", "--config", p)
	if want := "popgate: " + p + ": line 12: backends.main.uidl_template: must contain %u (the IMAP UID) to be unique\n"; code != 2 || errOut != want {
		t.Errorf("uidl_template: status %d, stderr %q, want %q", code, errOut, want)
	}

	// a certificate file that is not PEM: serve names the file and exits 2
	// before serving anything
	notPEM := filepath.Join(dir, "not-a-cert.pem")
	os.WriteFile(notPEM, []byte("hello\n"), 0o600)
	certLine := regexp.MustCompile(`(?m)^  cert_file: .*$`)
	p = write("badcert.yaml", strings.Replace(certLine.ReplaceAllString(good, "  cert_file: "+notPEM), "127.0.0.1:1110", freeAddr(t), 1))
	code, out, errOut = runPopgate(t, "serve", "-c", p)
	if want := "popgate: " + p + ": tls: "; code != 2 || !strings.HasPrefix(errOut, want) || strings.Count(errOut, "\n") != 1 || out != "" {
		t.Errorf("serve with a bad certificate: status %d, stderr %q, want 2 and one line %q…", code, errOut, want)
	}

	missing := filepath.Join(dir, "nope.yaml")
	code, _, errOut = runPopgate(t, "check-config", "--config", missing)
	if want := "popgate: " + missing + ": no such file or directory\n"; code != 2 || errOut != want {
		t.Errorf("missing: status %d, stderr %q, want %q", code, errOut, want)
	}
	// serve says the same in one line and exits 2
	code, _, errOut = runPopgate(t, "serve", "-c", missing)
	if want := "popgate: " + missing + ": no such file or directory\n"; code != 2 || errOut != want {
		t.Errorf("serve missing: status %d, stderr %q, want %q", code, errOut, want)
	}
}

// startStore starts an embedded IMAP store on a free loopback port; seeded
// stores hold demo.Samples() for user demo.
func startStore(t *testing.T, seed bool) *demo.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := demo.Start(ctx, demo.Options{IMAPAddress: "127.0.0.1:0", Logger: zerolog.Nop(), NoSeed: !seed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// serveConfig writes a configuration with one implicit-TLS listener and one
// STLS listener in front of the given stores (backend names s0, s1, …),
// routing every login to route.
func serveConfig(t *testing.T, dir, route string, extra string, stores ...*demo.Store) (path, pop3s, pop3 string) {
	t.Helper()
	cert, key := writeCert(t, dir)
	pop3s, pop3 = freeAddr(t), freeAddr(t)
	var b strings.Builder
	fmt.Fprintf(&b, "listeners:\n  - {address: %q, tls: implicit}\n  - {address: %q, tls: starttls}\n", pop3s, pop3)
	fmt.Fprintf(&b, "tls: {cert_file: %q, key_file: %q}\nbackends:\n", cert, key)
	for i, s := range stores {
		fmt.Fprintf(&b, "  s%d: {type: imap, address: %q, tls: none}\n", i, s.IMAPAddr())
	}
	fmt.Fprintf(&b, "routes:\n  - {match: \"*\", backend: %s}\n", route)
	fmt.Fprintf(&b, "auth: {failure_delay: 0s}\nlog: {level: debug, format: json}\n%s", extra)
	path = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, pop3s, pop3
}

func TestServeInFrontOfEmbeddedStore(t *testing.T) {
	store := startStore(t, true)
	samples := demo.Samples()
	path, pop3s, pop3 := serveConfig(t, t.TempDir(), "s0", "", store)
	p := startPopgate(t, "serve", "--config", path)
	p.waitLog(t, `"message":"listening"`, 2)

	c := dialPOP3(t, pop3s, true)
	c.login("demo", "demo")
	if got, want := c.ok("STAT"), fmt.Sprintf("+OK %d ", len(samples)); !strings.HasPrefix(got, want) {
		t.Errorf("STAT = %q, want %q…", got, want)
	}
	if got := c.multi("RETR 2"); !bytes.Equal(got, samples[1].Raw) {
		t.Errorf("RETR 2 differs from the stored message:\n%q\n%q", got, samples[1].Raw)
	}
	c.ok("DELE 1")
	c.ok("QUIT")
	if n := imapCount(t, store.IMAPAddr(), "demo", "demo"); n != len(samples)-1 {
		t.Errorf("upstream holds %d messages after DELE 1 + QUIT, want %d", n, len(samples)-1)
	}

	// STLS listener: no login before TLS (auth.allow_plaintext false)
	c = dialPOP3(t, pop3, false)
	if got := c.cmd("USER demo"); !strings.HasPrefix(got, "-ERR") {
		t.Errorf("USER before STLS = %q, want -ERR", got)
	}
	c.stls()
	c.login("demo", "demo")
	if got, want := c.ok("STAT"), fmt.Sprintf("+OK %d ", len(samples)-1); !strings.HasPrefix(got, want) {
		t.Errorf("STAT = %q, want %q…", got, want)
	}
	c.ok("QUIT")

	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Errorf("exit status after SIGTERM = %d, want 0", code)
	}
}

func TestDemoAnswersPOP3Clients(t *testing.T) {
	p := startPopgate(t, "demo", "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0", "--imap", "127.0.0.1:0", "--log-format", "json")
	p.waitLog(t, "Stop with Ctrl-C.", 1)
	out := p.stdout.String()
	addr := func(label string) string {
		m := regexp.MustCompile(label + `\s+(127\.0\.0\.1:\d+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no %s address in the demo's output:\n%s", label, out)
		}
		return m[1]
	}
	pop3s, pop3, imapAddr := addr("POP3S"), addr("POP3 with STLS"), addr("embedded IMAP")
	for _, want := range []string{"curl -k pop3s://" + pop3s + "/ -u demo:demo", "openssl s_client -quiet -connect " + pop3s, "-starttls pop3 -connect " + pop3} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo does not print %q", want)
		}
	}
	samples := demo.Samples()

	c := dialPOP3(t, pop3s, true)
	c.login("demo", "demo")
	if got := c.multi("RETR 1"); !bytes.Equal(got, samples[0].Raw) {
		t.Errorf("RETR 1 over POP3S differs from the sample")
	}
	c.ok("QUIT")

	c = dialPOP3(t, pop3, false)
	c.stls()
	c.login("demo", "demo")
	c.ok("DELE 1")
	c.ok("QUIT")
	if n := imapCount(t, imapAddr, "demo", "demo"); n != len(samples)-1 {
		t.Errorf("the embedded store holds %d messages after DELE+QUIT, want %d", n, len(samples)-1)
	}

	// a real client, curl, as the demo tells users
	if _, err := exec.LookPath("curl"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("curl is not installed (CI=true)")
		}
		t.Log("curl not installed: skipping the curl part")
	} else {
		got, err := exec.Command("curl", "-sS", "-k", "--max-time", "60", "pop3s://"+pop3s+"/1", "-u", "demo:demo").Output()
		if err != nil {
			t.Fatalf("curl RETR: %v", err)
		}
		// curl strips the dot-stuffing and the terminator; message 1 is now samples[1]
		if !bytes.Equal(got, samples[1].Raw) {
			t.Errorf("curl RETR 1 = %q, want %q", got, samples[1].Raw)
		}
		got, err = exec.Command("curl", "-sS", "-k", "--ssl-reqd", "--max-time", "60", "pop3://"+pop3+"/", "-u", "demo:demo").Output()
		if err != nil {
			t.Fatalf("curl LIST over STLS: %v", err)
		}
		if lines := strings.Count(string(got), "\n"); lines != len(samples)-1 {
			t.Errorf("curl LIST: %d lines, want %d: %q", lines, len(samples)-1, got)
		}
	}

	p.signal(t, syscall.SIGINT)
	if code := p.wait(t); code != 0 {
		t.Errorf("demo exit status after SIGINT = %d, want 0", code)
	}
}

func TestSIGHUPNewRouteForNextSessionOpenSessionContinues(t *testing.T) {
	a := startStore(t, true) // demo with the samples
	b := startStore(t, false)
	if err := b.AddUser("demo", "demo"); err != nil {
		t.Fatal(err)
	}
	only := []byte("From: b@example.com\r\nSubject: only in store b\r\n\r\nHello from b.\r\n")
	if err := b.Append("demo", only); err != nil {
		t.Fatal(err)
	}
	samples := demo.Samples()
	dir := t.TempDir()
	path, pop3s, _ := serveConfig(t, dir, "s0", "", a, b)
	p := startPopgate(t, "serve", "-c", path)
	p.waitLog(t, `"message":"listening"`, 2)

	open := dialPOP3(t, pop3s, true)
	open.login("demo", "demo")
	if got := open.ok("STAT"); !strings.HasPrefix(got, fmt.Sprintf("+OK %d ", len(samples))) {
		t.Fatalf("STAT on store a = %q", got)
	}

	// a bad file on reload: logged, the running configuration stays
	cfg, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(path, append(cfg, []byte("bogus_key: 1\n")...), 0o600)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, "reload failed: the running configuration stays", 1)
	if !strings.Contains(p.stderr.String(), `unknown key \"bogus_key\"`) {
		t.Errorf("the reload failure does not name the bad key")
	}
	// still routed to store a, whose maildrop the open session holds
	c := dialPOP3(t, pop3s, true)
	c.ok("USER demo")
	if got := c.cmd("PASS demo"); !strings.HasPrefix(got, "-ERR [IN-USE]") {
		t.Errorf("PASS after a failed reload = %q, want -ERR [IN-USE] (store a, locked)", got)
	}
	c.cmd("QUIT")

	// now route to store b, and log at info instead of debug
	newCfg := bytes.Replace(cfg, []byte("backend: s0}"), []byte("backend: s1}"), 1)
	newCfg = bytes.Replace(newCfg, []byte("level: debug"), []byte("level: info"), 1)
	os.WriteFile(path, newCfg, 0o600)
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `"message":"configuration reloaded"`, 1)
	debugLines := strings.Count(p.stderr.String(), `"level":"debug"`)
	if debugLines == 0 {
		t.Fatalf("no debug line before the reload: the log level test proves nothing")
	}

	next := dialPOP3(t, pop3s, true)
	next.login("demo", "demo")
	if got := next.ok("STAT"); !strings.HasPrefix(got, "+OK 1 ") {
		t.Errorf("STAT of the session after SIGHUP = %q, want store b's one message", got)
	}
	if got := next.multi("RETR 1"); !bytes.Equal(got, only) {
		t.Errorf("RETR 1 after SIGHUP = %q", got)
	}
	next.ok("QUIT")
	p.waitLog(t, `"message":"session end"`, 2) // the refused one and next
	if n := strings.Count(p.stderr.String(), `"level":"debug"`); n != debugLines {
		t.Errorf("%d debug lines after the reload to level info", n-debugLines)
	}

	// the session opened before SIGHUP goes on with store a
	if got := open.multi("RETR 3"); !bytes.Equal(got, samples[2].Raw) {
		t.Errorf("RETR 3 in the session opened before SIGHUP differs from store a's message")
	}
	open.ok("DELE 3")
	open.ok("QUIT")
	if n := imapCount(t, a.IMAPAddr(), "demo", "demo"); n != len(samples)-1 {
		t.Errorf("store a holds %d messages after the old session's QUIT, want %d", n, len(samples)-1)
	}
	p.signal(t, syscall.SIGTERM)
	p.wait(t)
}

func TestSIGTERMDrainCommitsNothing(t *testing.T) {
	store := startStore(t, true)
	samples := demo.Samples()
	path, pop3s, _ := serveConfig(t, t.TempDir(), "s0", "shutdown: {drain_timeout: 1s}\n", store)
	p := startPopgate(t, "serve", "-c", path)
	p.waitLog(t, `"message":"listening"`, 2)

	c := dialPOP3(t, pop3s, true)
	c.login("demo", "demo")
	c.ok("DELE 1")
	c.ok("DELE 2")
	p.signal(t, syscall.SIGTERM)
	if code := p.wait(t); code != 0 {
		t.Errorf("exit status = %d, want 0", code)
	}
	if !strings.Contains(p.stderr.String(), "drain timeout reached") {
		t.Errorf("no log line says the drain timed out")
	}
	// the connection was cut without +OK to a QUIT
	c.ExpectClosed()
	if n := imapCount(t, store.IMAPAddr(), "demo", "demo"); n != len(samples) {
		t.Errorf("upstream holds %d messages after a shutdown mid-session, want all %d", n, len(samples))
	}
}

func TestAddressInUseExits1AndStartsNothing(t *testing.T) {
	store := startStore(t, true)
	path, pop3s, pop3 := serveConfig(t, t.TempDir(), "s0", "", store)
	busy, err := net.Listen("tcp", pop3) // the second listener of the file
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	code, out, errOut := runPopgate(t, "serve", "-c", path)
	if want := "popgate: cannot listen on " + pop3 + ": address already in use\n"; code != 1 || errOut != want || out != "" {
		t.Errorf("status %d, stderr %q, want 1 and %q", code, errOut, want)
	}
	// the first listener was closed again: its port is free
	l, err := net.Listen("tcp", pop3s)
	if err != nil {
		t.Errorf("the first listener's address is still taken: %v", err)
	} else {
		l.Close()
	}
}
