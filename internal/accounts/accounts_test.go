package accounts

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/passwd"
	"github.com/popgate/popgate/internal/testutil"
)

// bcryptHash is a cheap hash for tests (cost 4).
func bcryptHash(t testing.TB, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), 4)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func write(t testing.TB, path, s string) {
	t.Helper()
	if err := os.WriteFile(path+".tmp", []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	t.Setenv("SCANS_PASSWORD", "upstream-secret")
	h := bcryptHash(t, "device-pw")
	data := `
scanner-3@corp.example:
  password: "` + h + `"
  backend: corp
  upstream: {user: scans@corp.example, password: "${SCANS_PASSWORD}"}
  login_delay: 5m
printer:
  password: '` + strings.Replace(h, "$2a$", "$2y$", 1) + `'
  upstream:
    user: print@corp.example
    password: "literal $${X}"
`
	accts, err := Parse([]byte(data), func(b string) bool { return b == "corp" })
	if err != nil {
		t.Fatal(err)
	}
	a := accts["scanner-3@corp.example"]
	if a == nil || a.Backend != "corp" || a.UpstreamUser != "scans@corp.example" || a.UpstreamPassword != "upstream-secret" || a.LoginDelay != 5*time.Minute || !a.HasLoginDelay {
		t.Fatalf("scanner: %#v", a)
	}
	p := accts["printer"]
	if p == nil || p.Backend != "" || p.UpstreamPassword != "literal ${X}" || p.HasLoginDelay {
		t.Fatalf("printer: %#v", p)
	}
	for _, s := range []string{a.String(), a.GoString(), p.String()} {
		if strings.Contains(s, "upstream-secret") || strings.Contains(s, "$2") {
			t.Errorf("%q shows a secret", s)
		}
	}
}

// TestParseProblems: every problem names account, key and line, and no
// problem text holds a value from the file.
func TestParseProblems(t *testing.T) {
	secret := "Plain-Text-Secret-42"
	cases := []struct{ data, want string }{
		{"a:\n  password: " + secret + "\n  upstream: {user: u, password: p}\n", "line 2: a.password: not an argon2id or bcrypt hash"},
		{"a:\n  password: $argon2id$v=19$m=9999999,t=1,p=1$c2FsdHNhbHQ$" + secret + "\n  upstream: {user: u, password: p}\n", "a.password: not an argon2id"},
		{"a:\n  upstream: {user: u, password: " + secret + "}\n", "a.password: required"},
		{"a:\n  password: HASH\n", "a.upstream: required"},
		{"a:\n  password: HASH\n  upstream: {user: u}\n", "a.upstream.password: required"},
		{"a:\n  password: HASH\n  upstream: {user: u, password: p, pass: " + secret + "}\n", "line 3: a.upstream.pass: unknown key"},
		{"a:\n  password: HASH\n  upstream: {user: u, password: p}\n  colour: " + secret + "\n", "line 4: a.colour: unknown key"},
		{"a:\n  password: HASH\n  upstream: {user: u, password: p}\n  backend: nosuch\n", `a.backend: no backend named "nosuch"`},
		{"a:\n  password: HASH\n  upstream: {user: u, password: p}\n  login_delay: " + secret + "\n", "a.login_delay: not a duration"},
		{"a:\n  password: HASH\n  upstream: {user: u, password: \"${POPGATE_SURELY_UNSET}\"}\n", "environment variable POPGATE_SURELY_UNSET is not set"},
		{"a:\n  password: [" + secret + "\n", "not valid YAML: syntax error"},
		{"- " + secret + "\n", "must be a mapping of login names"},
		{"a: " + secret + "\n", "a: must be a mapping"},
		{"a:\n  password: HASH\n  upstream: {user: u, password: p}\na:\n  password: HASH\n  upstream: {user: u, password: p}\n", "a: account defined twice"},
	}
	h := bcryptHash(t, "x")
	for _, c := range cases {
		data := strings.ReplaceAll(c.data, "HASH", "'"+h+"'")
		_, err := Parse([]byte(data), func(b string) bool { return b == "corp" })
		if err == nil {
			t.Errorf("%q: no error", c.data)
			continue
		}
		var ps Problems
		if !errors.As(err, &ps) {
			t.Errorf("%q: error %T", c.data, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %q, want %q", c.data, err, c.want)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), h) {
			t.Errorf("%q: error text holds a value from the file: %q", c.data, err)
		}
	}
	if accts, err := Parse(nil, nil); err != nil || len(accts) != 0 {
		t.Errorf("empty file: %v %v", accts, err)
	}
}

// An upstream names an OAuth2 credential instead of a password: exactly
// one of the two, and the credential must exist (problem with account,
// key and line).
func TestParseCredential(t *testing.T) {
	h := "'" + bcryptHash(t, "x") + "'"
	known := func(n string) bool { return n == "m365-app" }
	accts, err := ParseKnown([]byte("scanner:\n  password: "+h+"\n  upstream: {user: scans@corp.example, credential: m365-app}\n"), nil, known)
	if err != nil {
		t.Fatal(err)
	}
	a := accts["scanner"]
	if a == nil || a.UpstreamCredential != "m365-app" || a.UpstreamPassword != "" || a.UpstreamUser != "scans@corp.example" {
		t.Fatalf("%#v", a)
	}
	if !strings.Contains(a.String(), "credential=m365-app") {
		t.Errorf("String: %s", a)
	}
	for data, want := range map[string]string{
		"a:\n  password: HASH\n  upstream:\n    user: u\n    credential: nosuch\n":                    `line 5: a.upstream.credential: no credential named "nosuch" in the configuration`,
		"a:\n  password: HASH\n  upstream:\n    user: u\n    password: p\n    credential: m365-app\n": "line 6: a.upstream: give password or credential, not both",
		"a:\n  password: HASH\n  upstream: {user: u, credential: \"\"}\n":                             "a.upstream.credential: must name a credential",
		"a:\n  password: HASH\n  upstream: {user: u}\n":                                               "a.upstream.password: required (or credential",
	} {
		_, err := ParseKnown([]byte(strings.ReplaceAll(data, "HASH", h)), nil, known)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", data, err, want)
		}
	}
	// Without a list of credentials (nil), any name is taken.
	if _, err := ParseKnown([]byte("a:\n  password: "+h+"\n  upstream: {user: u, credential: any}\n"), nil, nil); err != nil {
		t.Error(err)
	}
}

func TestAuthenticateAndReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "accounts.yaml")
	write(t, path, "dev:\n  password: '"+bcryptHash(t, "one")+"'\n  upstream: {user: u1, password: p1}\n")
	var logs testutil.SyncBuffer
	f, err := Open(path, Options{Logger: zerolog.New(&logs), Verifier: passwd.NewVerifier(1)})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	id, err := f.Authenticate(ctx, identity.Request{User: "dev", Password: "one"})
	if err != nil || id.UpstreamUser != "u1" || id.UpstreamPassword != "p1" || id.HasLoginDelay {
		t.Fatalf("right password: %v %v", id, err)
	}
	var rej *identity.Rejected
	if _, err := f.Authenticate(ctx, identity.Request{User: "dev", Password: "two"}); !errors.As(err, &rej) {
		t.Fatalf("wrong password: %v", err)
	}
	if _, err := f.Authenticate(ctx, identity.Request{User: "nobody", Password: "one"}); !errors.As(err, &rej) {
		t.Fatalf("unknown user: %v", err)
	}
	if f.PerUserLoginDelay() {
		t.Error("no account has login_delay")
	}

	// A bad file keeps the accounts in force.
	write(t, path, "dev:\n  password: one\n")
	if err := f.Reload(); err == nil {
		t.Fatal("bad file reloaded")
	}
	if _, err := f.Authenticate(ctx, identity.Request{User: "dev", Password: "one"}); err != nil {
		t.Fatalf("after a failed reload: %v", err)
	}

	// SIGHUP path: Reload takes a good file.
	write(t, path, "dev:\n  password: '"+bcryptHash(t, "two")+"'\n  upstream: {user: u2, password: p2}\n  login_delay: 1m\n")
	if err := f.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Authenticate(ctx, identity.Request{User: "dev", Password: "one"}); !errors.As(err, &rej) {
		t.Fatalf("old password after reload: %v", err)
	}
	if id, err := f.Authenticate(ctx, identity.Request{User: "dev", Password: "two"}); err != nil || id.UpstreamUser != "u2" || id.LoginDelay != time.Minute {
		t.Fatalf("new password after reload: %v %v", id, err)
	}
	if !f.PerUserLoginDelay() {
		t.Error("an account has login_delay now")
	}

	// Watch: a change on disk is taken without a signal.
	f.Watch(10 * time.Millisecond)
	write(t, path, "dev:\n  password: '"+bcryptHash(t, "three")+"'\n  upstream: {user: u3, password: p3}\n")
	deadline := time.Now().Add(20 * time.Second)
	for {
		id, err := f.Authenticate(ctx, identity.Request{User: "dev", Password: "three"})
		if err == nil && id.UpstreamUser == "u3" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the changed file was not picked up")
		}
		time.Sleep(20 * time.Millisecond)
	}
	f.Close()
	for _, secret := range []string{"one", "two", "three", "p1", "p2", "p3", "$2a$"} {
		if strings.Contains(logs.String(), `"`+secret) || strings.Contains(logs.String(), secret+`"`) {
			t.Errorf("log holds %q: %s", secret, logs.String())
		}
	}
}

func TestOpenErrors(t *testing.T) {
	_, err := Open(filepath.Join(t.TempDir(), "none.yaml"), Options{})
	var fe *FileError
	if !errors.As(err, &fe) || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("missing file: %v", err)
	}
}
