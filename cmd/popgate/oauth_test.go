package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/internal/testserver/idp"
)

// oauthConfig writes a configuration with two credentials against the
// in-test identity provider and a token store keyed by a key file.
func oauthConfig(t *testing.T, dir string, p *idp.Server) (path, keyFile, keyText string) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	keyText = base64.StdEncoding.EncodeToString(key)
	keyFile = filepath.Join(dir, "token.key")
	if err := os.WriteFile(keyFile, []byte(keyText+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.AddClient("app-id", "app-secret-0123456789", "scans@corp.example")
	p.AddClient("desktop-id", "desktop-secret-0123456789", "")
	cfg := goodConfig(t, dir) + fmt.Sprintf(`credentials:
  m365-app:
    type: oauth2_client_credentials
    token_url: %[1]s
    client_id: app-id
    client_secret: app-secret-0123456789
    scopes: [https://outlook.office365.com/.default]
    ca_file: %[3]s
  gmail-jane:
    type: oauth2_refresh_token
    token_url: %[1]s
    device_auth_url: %[2]s
    client_id: desktop-id
    client_secret: desktop-secret-0123456789
    scopes: [https://mail.google.com/]
    ca_file: %[3]s
token_store:
  path: %[4]s
  key_file: %[5]s
`, p.TokenURL, p.DeviceAuthURL, p.CAFile(), filepath.Join(dir, "state", "tokens"), keyFile)
	path = filepath.Join(dir, "oauth.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, keyFile, keyText
}

// check-config, oauth status, oauth enroll and oauth rekey, and no secret
// in anything they print.
func TestOAuthCommands(t *testing.T) {
	dir := t.TempDir()
	p := idp.Start(t, idp.Options{TLS: true})
	cfg, _, keyText := oauthConfig(t, dir, p)
	var outputs []string
	runP := func(args ...string) (int, string, string) {
		code, out, errOut := runPopgate(t, args...)
		outputs = append(outputs, out, errOut)
		return code, out, errOut
	}

	code, out, errOut := runP("check-config", "-c", cfg)
	if code != 0 || !strings.Contains(out, "m365-app     oauth2_client_credentials, client app-id") ||
		!strings.Contains(out, "client secret set") || !strings.Contains(out, "token store: ") {
		t.Fatalf("check-config: %d\n%s\n%s", code, out, errOut)
	}

	code, out, errOut = runP("oauth", "status", "-c", cfg)
	if code != 0 || !strings.Contains(out, "gmail-jane") || !strings.Contains(out, "not enrolled") || !strings.Contains(out, "no token yet") {
		t.Fatalf("status before: %d\n%s\n%s", code, out, errOut)
	}

	// Enrolment: the device flow against the in-test endpoint.
	en := startPopgate(t, "oauth", "enroll", "gmail-jane", "-c", cfg)
	en.waitLog(t, "enter the code", 1)
	codes := p.PendingUserCodes()
	if len(codes) != 1 || !strings.Contains(en.stdout.String(), codes[0]) || !strings.Contains(en.stdout.String(), p.URL+"/activate") {
		t.Fatalf("enroll output without the code or URL:\n%s", en.stdout.String())
	}
	p.Approve(codes[0], "jane@gmail.example")
	if code := en.wait(t); code != 0 {
		t.Fatalf("enroll: %d\n%s\n%s", code, en.stdout.String(), en.stderr.String())
	}
	outputs = append(outputs, en.stdout.String(), en.stderr.String())
	if !strings.Contains(en.stdout.String(), "gmail-jane enrolled") {
		t.Fatalf("enroll output:\n%s", en.stdout.String())
	}

	code, out, _ = runP("oauth", "status", "-c", cfg)
	if code != 0 || !strings.Contains(out, "gmail-jane  oauth2_refresh_token       valid") || !strings.Contains(out, "yes") {
		t.Fatalf("status after enroll: %d\n%s", code, out)
	}

	// Rekey: the old key no longer opens the store, the new one does.
	newKey := make([]byte, 32)
	rand.Read(newKey)
	newKeyText := base64.StdEncoding.EncodeToString(newKey)
	newFile := filepath.Join(dir, "token.key.new")
	os.WriteFile(newFile, []byte(newKeyText), 0o600)
	code, out, errOut = runP("oauth", "rekey", "-c", cfg, "--new-key-file", newFile)
	if code != 0 || !strings.Contains(out, "re-encrypted") {
		t.Fatalf("rekey: %d\n%s\n%s", code, out, errOut)
	}
	code, _, errOut = runP("oauth", "status", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, "cannot decrypt the token store") {
		t.Fatalf("status with the old key: %d %s", code, errOut)
	}
	os.Rename(newFile, filepath.Join(dir, "token.key"))
	code, out, _ = runP("oauth", "status", "-c", cfg)
	if code != 0 || !strings.Contains(out, "gmail-jane  oauth2_refresh_token       valid") {
		t.Fatalf("status with the new key: %d\n%s", code, out)
	}

	// A refresh token obtained elsewhere, on standard input.
	for _, tc := range []struct {
		rt   string
		code int
	}{{"rt-not-issued-0123456789", 1}, {p.IssueRefreshToken("jane@gmail.example"), 0}} {
		cmd := exec.Command(binary, "oauth", "enroll", "gmail-jane", "--refresh-token-stdin", "-c", cfg)
		cmd.Stdin = strings.NewReader(tc.rt + "\n")
		var o, e strings.Builder
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		outputs = append(outputs, o.String(), e.String())
		if code != tc.code || strings.Contains(o.String()+e.String(), tc.rt) {
			t.Fatalf("import: status %d, want %d\n%s\n%s", code, tc.code, o.String(), e.String())
		}
		if tc.code == 1 && !strings.Contains(e.String(), "invalid_grant") {
			t.Fatalf("bad refresh token: %s", e.String())
		}
	}

	code, _, errOut = runP("oauth", "enroll", "m365-app", "-c", cfg)
	if code != 1 || !strings.Contains(errOut, "only oauth2_refresh_token credentials are enrolled") {
		t.Fatalf("enroll of client credentials: %d %s", code, errOut)
	}
	code, _, _ = runP("oauth", "frob")
	if code != 2 {
		t.Fatalf("unknown subcommand: %d", code)
	}

	secrets := append(p.Secrets(), keyText, newKeyText, "app-secret-0123456789", "desktop-secret-0123456789")
	for _, s := range secrets {
		for _, o := range outputs {
			if len(s) >= 6 && strings.Contains(o, s) {
				t.Errorf("a secret (%.4s…) appears in the output:\n%s", s, o)
			}
		}
	}
}

// popgate serve in front of a real Dovecot that checks tokens at the
// in-test provider: CAPA names XOAUTH2 and OAUTHBEARER once the upstream
// is seen to take tokens, and a client's own AUTH XOAUTH2 and OAUTHBEARER
// pass through. No token in the log.
func TestServeClientTokenPassThrough(t *testing.T) {
	dir := t.TempDir()
	p := idp.Start(t, idp.Options{})
	cfg, _, keyText := oauthConfig(t, dir, p)
	const user = "jane@corp.example"
	dv := dovecot.Start(t, dovecot.Options{OAuth2IntrospectionURL: p.IntrospectURL, Users: map[string]string{user: "pw-0123456789"}})
	if _, err := dv.Append(user, "INBOX", []byte("Subject: hi\r\n\r\nbody\r\n")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Listeners and backend of the token test instead of goodConfig's.
	s := string(data)
	s = s[strings.Index(s, "credentials:"):]
	pop3 := freeAddr(t)
	s = fmt.Sprintf("listeners:\n  - {address: %q, tls: none}\nauth: {allow_plaintext: true, failure_delay: 0s}\nbackends:\n  m365: {type: imap, address: %q, tls: none}\nroutes:\n  - {match: \"*\", backend: m365}\nlog: {level: debug, format: json}\n", pop3, dv.Addr()) + s
	if err := os.WriteFile(cfg, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startPopgate(t, "serve", "-c", cfg)
	srv.waitLog(t, `"listening"`, 1)

	c := dialPOP3(t, pop3, false)
	for i := 0; ; i++ { // the first CAPA starts the check of the upstream's capabilities
		capa := string(c.multi("CAPA"))
		if strings.Contains(capa, "SASL PLAIN LOGIN OAUTHBEARER XOAUTH2") {
			break
		}
		if i == 200 {
			t.Fatalf("CAPA never names the token mechanisms:\n%s", capa)
		}
		time.Sleep(50 * time.Millisecond)
	}
	tok := p.IssueToken(user)
	c.cmd("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user="+user+"\x01auth=Bearer "+tok+"\x01\x01")))
	if st := c.ok("STAT"); !strings.HasPrefix(st, "+OK 1 ") {
		t.Fatalf("STAT after AUTH XOAUTH2: %s", st)
	}
	c.ok("QUIT")
	c = dialPOP3(t, pop3, false)
	if r := c.cmd("AUTH OAUTHBEARER " + base64.StdEncoding.EncodeToString([]byte("n,a="+user+",\x01auth=Bearer "+tok+"\x01\x01"))); !strings.HasPrefix(r, "+OK") {
		t.Fatalf("AUTH OAUTHBEARER: %s", r)
	}
	c.ok("QUIT")
	c = dialPOP3(t, pop3, false)
	if r := c.cmd("AUTH XOAUTH2 " + base64.StdEncoding.EncodeToString([]byte("user="+user+"\x01auth=Bearer at-forged-0123456789\x01\x01"))); !strings.HasPrefix(r, "-ERR [AUTH]") {
		t.Fatalf("forged token: %s", r)
	}
	c.ok("QUIT")
	srv.waitLog(t, `"session end"`, 3)
	srv.signal(t, syscall.SIGTERM)
	srv.wait(t)
	logs := srv.stdout.String() + srv.stderr.String()
	for _, secret := range append(p.Secrets(), keyText, "at-forged-0123456789") {
		if len(secret) >= 6 && strings.Contains(logs, secret) {
			t.Fatalf("a secret (%.4s…) in the log", secret)
		}
	}
}

// An account naming a credential passes check-config when the credential
// exists; an unknown one is a problem naming the account, the key and the
// line.
func TestCheckConfigAccountCredential(t *testing.T) {
	dir := t.TempDir()
	p := idp.Start(t, idp.Options{})
	cfg, _, _ := oauthConfig(t, dir, p)
	accts := filepath.Join(dir, "accounts.yaml")
	hash := bcryptOf(t, "device-pw")
	data, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, append(data, []byte("accounts: {file: "+accts+"}\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	write := func(cred string) {
		s := "scanner:\n  password: '" + hash + "'\n  upstream:\n    user: scans@corp.example\n    credential: " + cred + "\n"
		if err := os.WriteFile(accts, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("m365-app")
	if code, out, errOut := runPopgate(t, "check-config", "-c", cfg); code != 0 {
		t.Fatalf("check-config: %d\n%s%s", code, out, errOut)
	}
	write("m365-typo")
	code, out, errOut := runPopgate(t, "check-config", "-c", cfg)
	if code == 0 || !strings.Contains(out+errOut, `line 5: scanner.upstream.credential: no credential named "m365-typo"`) {
		t.Fatalf("check-config with an unknown credential: %d\n%s%s", code, out, errOut)
	}
}

// The commented credentials and token_store entries of config.example.yaml
// pass check-config once uncommented (with their environment variables
// set), and check-config prints none of their secrets.
func TestExampleConfigOAuthEntries(t *testing.T) {
	data, err := os.ReadFile("../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case l == "# credentials:" || l == "# token_store:":
			in = true
		case in && !strings.HasPrefix(l, "#   ") && !strings.HasPrefix(l, "# token_store:"):
			in = false
		}
		if in {
			l = strings.TrimPrefix(l, "# ")
		}
		out = append(out, l)
	}
	text := strings.Join(out, "\n")
	if !strings.Contains(text, "\ncredentials:\n  m365-app:") || !strings.Contains(text, "\ntoken_store:\n  path:") {
		t.Fatalf("config.example.yaml: the credentials and token_store blocks were not found")
	}
	key := make([]byte, 32)
	rand.Read(key)
	keyText := base64.StdEncoding.EncodeToString(key)
	secrets := []string{"M365-Example-Secret-1", "Google-Example-Secret-2", keyText}
	t.Setenv("M365_SECRET", secrets[0])
	t.Setenv("GOOGLE_SECRET", secrets[1])
	t.Setenv("POPGATE_TOKEN_KEY", keyText)
	path := filepath.Join(t.TempDir(), "config.example.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runPopgate(t, "check-config", "--config", path)
	if code != 0 || !strings.Contains(stdout, "m365-app") || !strings.Contains(stdout, "gmail-jane") || !strings.Contains(stdout, "token store: /var/lib/popgate/tokens") {
		t.Fatalf("check-config of the uncommented OAuth entries: %d\n%s%s", code, stdout, stderr)
	}
	for _, s := range secrets {
		if strings.Contains(stdout+stderr, s) {
			t.Errorf("check-config printed a secret (%.4s…)", s)
		}
	}
}
