package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/popgate/popgate/internal/testserver/dovecot"
)

func bcryptOf(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), 4)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func writeAtomic(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path+".new", []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceAccountsServe runs the binary with an accounts file in front of
// a real Dovecot, then with the auth hook, and greps every log line, every
// client-visible error and the check-config output for the secrets
// involved: device passwords, their hashes, the upstream password, the
// hook's header value.
func TestDeviceAccountsServe(t *testing.T) {
	const (
		devicePw1  = "Dev-Pass-One-1"
		devicePw2  = "Dev-Pass-Two-2"
		upstreamPw = "Upstr-Pass-77"
		hookToken  = "Hook-Token-99"
		hookUserPw = "Isp-User-Pass-5"
		wrongPw    = "Wrong-Guess-3"
	)
	dc := dovecot.Start(t, dovecot.Options{Users: map[string]string{"scans@corp.example": upstreamPw}})
	if _, err := dc.Append("scans@corp.example", "INBOX", []byte("Subject: s\r\n\r\nscan\r\n")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("POPGATE_TEST_SCANS_PW", upstreamPw)
	dir := t.TempDir()
	accts := filepath.Join(dir, "accounts.yaml")
	hash1, hash2 := bcryptOf(t, devicePw1), bcryptOf(t, devicePw2)
	account := func(hash string) string {
		return "scanner-3@corp.example:\n  password: '" + hash + "'\n  backend: corp\n  upstream: {user: scans@corp.example, password: \"${POPGATE_TEST_SCANS_PW}\"}\n  login_delay: 0s\n"
	}
	writeAtomic(t, accts, account(hash1))
	addr := freeAddr(t)
	cfgPath := filepath.Join(dir, "config.yaml")
	writeAtomic(t, cfgPath, fmt.Sprintf(`listeners: [{address: %q, tls: none}]
backends:
  corp: {type: imap, address: %q, tls: none}
routes: [{match: "*", backend: corp}]
accounts: {file: %s}
auth: {allow_plaintext: true, failure_delay: 10ms, failure_max_delay: 40ms}
session: {login_delay: 5m}
log: {level: debug}
`, addr, dc.Addr(), accts))

	var outputs []string // everything a secret must not be in
	code, out, errOut := runPopgate(t, "check-config", "-c", cfgPath)
	if code != 0 || !strings.Contains(out, "accounts: file "+accts+" (1 accounts") || !strings.Contains(out, "failure delay: 10ms, doubling") || !strings.Contains(out, "login delay: 5m0s") {
		t.Fatalf("check-config: %d\n%s%s", code, out, errOut)
	}
	outputs = append(outputs, out, errOut)

	p := startPopgate(t, "serve", "-c", cfgPath)
	p.waitLog(t, `"message":"listening"`, 1)

	c := dialPOP3(t, addr, false)
	if got := c.ok("CAPA"); got == "" {
		t.Fatal("CAPA")
	}
	capa := strings.Join(c.Multi(), "\n")
	if !strings.Contains(capa, "LOGIN-DELAY 300 USER") {
		t.Errorf("CAPA before login:\n%s", capa)
	}
	c.login("scanner-3@corp.example", devicePw1)
	c.ok("CAPA")
	if capa := strings.Join(c.Multi(), "\n"); !strings.Contains(capa, "LOGIN-DELAY 0") {
		t.Errorf("CAPA after login as an account with login_delay 0s:\n%s", capa)
	}
	c.ok("QUIT")

	c = dialPOP3(t, addr, false)
	c.ok("USER scanner-3@corp.example")
	e1 := c.cmd("PASS " + wrongPw)
	c.ok("USER scans@corp.example")
	e2 := c.cmd("PASS " + upstreamPw)
	if !strings.HasPrefix(e1, "-ERR [AUTH]") || !strings.HasPrefix(e2, "-ERR [AUTH]") {
		t.Fatalf("wrong device password: %q; upstream credentials as a device login: %q", e1, e2)
	}
	outputs = append(outputs, e1, e2)
	c.ok("QUIT")

	// New device password, SIGHUP.
	writeAtomic(t, accts, account(hash2))
	p.signal(t, syscall.SIGHUP)
	p.waitLog(t, `"message":"configuration reloaded"`, 1)
	c = dialPOP3(t, addr, false)
	c.ok("USER scanner-3@corp.example")
	if got := c.cmd("PASS " + devicePw1); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Fatalf("old device password after SIGHUP: %q", got)
	}
	c.login("scanner-3@corp.example", devicePw2)
	c.ok("QUIT")

	// A broken accounts file: check-config names the line, not the value.
	bad := filepath.Join(dir, "bad.yaml")
	writeAtomic(t, bad, "scanner-3@corp.example:\n  password: "+devicePw1+"\n  upstream: {user: u, password: "+upstreamPw+"}\n")
	badCfg := filepath.Join(dir, "bad-config.yaml")
	writeAtomic(t, badCfg, strings.Replace(mustRead(t, cfgPath), accts, bad, 1))
	code, out, errOut = runPopgate(t, "check-config", "-c", badCfg)
	if code != exitUsage || !strings.Contains(errOut, "line 2: scanner-3@corp.example.password: not an argon2id or bcrypt hash") {
		t.Errorf("check-config of a plain-text password: %d\n%s%s", code, out, errOut)
	}
	outputs = append(outputs, out, errOut)

	// The auth hook, with a header.
	var hookCalls atomic.Int32
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hookCalls.Add(1)
		var req map[string]any
		json.NewDecoder(r.Body).Decode(&req)
		if r.Header.Get("Authorization") != "Bearer "+hookToken || req["user"] != "isp-user" || req["password"] != hookUserPw {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		fmt.Fprintf(w, `{"backend":"corp","upstream":{"user":"scans@corp.example","password":%q}}`, upstreamPw)
	}))
	defer hook.Close()
	t.Setenv("POPGATE_TEST_HOOK_TOKEN", hookToken)
	addr2 := freeAddr(t)
	hookCfg := filepath.Join(dir, "hook-config.yaml")
	writeAtomic(t, hookCfg, fmt.Sprintf(`listeners: [{address: %q, tls: none}]
backends:
  corp: {type: imap, address: %q, tls: none}
routes: [{match: "*", backend: corp}]
accounts:
  http: {url: %q, headers: {Authorization: "Bearer ${POPGATE_TEST_HOOK_TOKEN}"}}
auth: {allow_plaintext: true, failure_delay: 10ms, failure_max_delay: 40ms}
log: {level: debug}
`, addr2, dc.Addr(), hook.URL+"/popgate"))
	code, out, errOut = runPopgate(t, "check-config", "-c", hookCfg)
	if code != 0 || !strings.Contains(out, "accounts: auth hook POST "+hook.URL+"/popgate (timeout 5s, headers: Authorization)") {
		t.Fatalf("check-config with the hook: %d\n%s%s", code, out, errOut)
	}
	outputs = append(outputs, out, errOut)
	p2 := startPopgate(t, "serve", "-c", hookCfg)
	p2.waitLog(t, `"message":"listening"`, 1)
	c = dialPOP3(t, addr2, false)
	c.login("isp-user", hookUserPw)
	c.ok("QUIT")
	c = dialPOP3(t, addr2, false)
	c.ok("USER isp-user")
	if got := c.cmd("PASS " + wrongPw); !strings.HasPrefix(got, "-ERR [AUTH]") {
		t.Fatalf("hook refusal: %q", got)
	}
	c.ok("QUIT")
	if hookCalls.Load() != 2 {
		t.Errorf("hook called %d times, want 2", hookCalls.Load())
	}
	hook.Close() // the hook is gone: [SYS/TEMP]
	c = dialPOP3(t, addr2, false)
	c.ok("USER isp-user")
	if got := c.cmd("PASS " + hookUserPw); !strings.HasPrefix(got, "-ERR [SYS/TEMP]") {
		t.Fatalf("hook unreachable: %q", got)
	}
	c.ok("QUIT")

	p.signal(t, syscall.SIGTERM)
	p2.signal(t, syscall.SIGTERM)
	p.wait(t)
	p2.wait(t)
	outputs = append(outputs, p.stdout.String(), p.stderr.String(), p2.stdout.String(), p2.stderr.String())
	if !strings.Contains(p.stderr.String(), `"message":"login rejected"`) {
		t.Fatal("no rejected login in the log: the grep below proves nothing")
	}
	for _, secret := range []string{devicePw1, devicePw2, upstreamPw, hookToken, hookUserPw, wrongPw, hash1, hash2, hash1[7:29], hash2[7:29]} {
		for i, o := range outputs {
			if strings.Contains(o, secret) {
				t.Errorf("output %d holds the secret %q:\n%s", i, secret, o)
			}
		}
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
