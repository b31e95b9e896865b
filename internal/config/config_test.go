package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/tlsconf"
)

const good = `
listeners:
  - address: 127.0.0.1:1110
    tls: starttls
  - address: 127.0.0.1:1995
    tls: implicit
tls:
  cert_file: CERT
  key_file: KEY
backends:
  main:
    type: imap
    address: 127.0.0.1:143
    tls: none
    delete:
      policy: expunge
  other:
    type: imap
    address: imap.example.com:993
    tls: implicit
    delete: {policy: move, folder: Trash}
routes:
  - match: "*@example.com"
    backend: other
    rewrite: {strip_domain: true}
  - match: "*"
    backend: main
auth:
  allow_plaintext: false
session:
  idle_timeout: 15m
log:
  level: info
  format: json
`

// types are the store types the tests decode backends with.
var types = backends.NewRegistry(imap.Type)

// imapOf returns the decoded settings of an imap backend.
func imapOf(c *Config, name string) *imap.Config { return c.Backends[name].Settings.(*imap.Config) }

// withFiles replaces CERT and KEY by existing files.
func withFiles(t *testing.T, s string) string {
	t.Helper()
	dir := t.TempDir()
	for _, n := range []string{"CERT", "KEY"} {
		p := filepath.Join(dir, strings.ToLower(n)+".pem")
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		s = strings.ReplaceAll(s, n, p)
	}
	return s
}

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(withFiles(t, good)), types)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(c.Listeners) != 2 || c.Listeners[1].TLS != TLSImplicit {
		t.Errorf("listeners = %+v", c.Listeners)
	}
	if got := c.BackendNames(); strings.Join(got, ",") != "main,other" {
		t.Errorf("backend order = %v, want file order main,other", got)
	}
	m := imapOf(c, "main")
	if m.Mailbox != "INBOX" || m.DialTimeout != backends.DefaultDialTimeout || !m.MarkSeen {
		t.Errorf("backend defaults not applied: %+v", m)
	}
	if imapOf(c, "other").Delete.Folder != "Trash" {
		t.Errorf("flow mapping not decoded: %+v", imapOf(c, "other").Delete)
	}
	if c.Session.IdleTimeout != 15*time.Minute {
		t.Errorf("idle_timeout = %v", c.Session.IdleTimeout)
	}
	if c.Session.MaxErrors != 20 || c.Shutdown.DrainTimeout != 30*time.Second || c.Auth.FailureDelay != 2*time.Second {
		t.Errorf("top-level defaults lost: %+v %+v %+v", c.Session, c.Shutdown, c.Auth)
	}
	// Issue 14: no per-address cap by default (NAT, load balancers).
	if c.Session.MaxConnectionsPerIP != 0 || c.Session.MaxConnections != 1000 {
		t.Errorf("connection limits = %d per address, %d in all; want 0 (none) and 1000", c.Session.MaxConnectionsPerIP, c.Session.MaxConnections)
	}
	if !c.Routes[0].Rewrite.StripDomain {
		t.Errorf("rewrite not decoded")
	}
}

// problems parses s and returns the problems as strings.
func problems(t *testing.T, s string) []string {
	t.Helper()
	_, err := Parse([]byte(s), types)
	if err == nil {
		t.Fatalf("Parse succeeded, want problems")
	}
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %T %v is not Problems", err, err)
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Error()
	}
	return out
}

func wantProblems(t *testing.T, s string, want ...string) {
	t.Helper()
	got := problems(t, s)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n got: %q\nwant: %q", got, want)
	}
}

func TestUnknownKeyNamesKeyAndLine(t *testing.T) {
	s := strings.Replace(withFiles(t, good), "    tls: none\n", "    tls: none\n    adress: x\n", 1)
	wantProblems(t, s,
		`line 15: backends.main: unknown key "adress" (known keys: type, address, tls, mailbox, uidl_template, server_name, ca_file, min_version, insecure_skip_verify, dial_timeout, command_timeout, mark_seen, snapshot_cache, delete, uidl_header, allow_plain_expunge, reuse)`)

	wantProblems(t, "listenerz: []\n"+withFiles(t, good),
		`line 1: unknown key "listenerz" (known keys: listeners, tls, backends, routes, accounts, auth, session, shutdown, log, migration, credentials, token_store, cluster, admin)`)
}

func TestEveryProblemReported(t *testing.T) {
	s := `
listeners:
  - address: localhost
    tls: starttls
  - address: 127.0.0.1:99999
    tls: plain
backends:
  main:
    type: jmap
  b2:
    type: imap
    address: h:143
    tls: none
    delete: {policy: shred}
routes:
  - match: "*"
    backend: nope
  - match: "a*b"
    backend: main
session:
  idle_timeout: 600
  max_errors: many
log:
  level: loud
`
	wantProblems(t, s,
		`line 3: listeners[0].address: "localhost" is not host:port (missing port in address)`,
		`line 4: listeners[0].tls: starttls needs a certificate: add a tls section (cert_file and key_file, or acme)`,
		`line 5: listeners[1].address: "127.0.0.1:99999": port "99999" is not a number from 0 to 65535`,
		`line 6: listeners[1].tls: unknown mode "plain" (want none, starttls or implicit)`,
		`line 9: backends.main.type: unknown type "jmap" (registered types: imap)`,
		`line 14: backends.b2.delete.policy: unknown policy "shred" (want expunge, move, flag or keep)`,
		`line 17: routes[0].backend: unknown backend "nope"`,
		`line 18: routes[1].match: "a*b": a wildcard is only allowed as "*" or "*@domain"`,
		`line 21: session.idle_timeout: duration "600" needs a unit (for example 600s or 600m)`,
		`line 22: session.max_errors: want a whole number, got "many"`,
		`line 24: log.level: unknown level "loud" (want debug, info, warn or error)`,
	)
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("PG_HOST", "imap.example.com")
	t.Setenv("PG_MAXC", "70")
	s := strings.Replace(withFiles(t, good), "address: 127.0.0.1:143", "address: ${PG_HOST}:143", 1)
	s = strings.Replace(s, "idle_timeout: 15m", "idle_timeout: 15m\n  max_connections: ${PG_MAXC}", 1)
	s = strings.Replace(s, "    tls: none\n", "    tls: none\n    uidl_template: \"$${K}%u\"\n", 1)
	c, err := Parse([]byte(s), types)
	if err != nil {
		t.Fatal(err)
	}
	if got := imapOf(c, "main").Address; got != "imap.example.com:143" {
		t.Errorf("address = %q", got)
	}
	if c.Session.MaxConnections != 70 {
		t.Errorf("max_connections = %d: a plain ${…} scalar must resolve to a number", c.Session.MaxConnections)
	}
	if got := imapOf(c, "main").UIDLTemplate; got != "${K}%u" {
		t.Errorf("uidl_template = %q, want the literal ${K} from $${K}", got)
	}

	// an unset variable is an error naming it and its line
	os.Unsetenv("PG_SURELY_UNSET")
	s = strings.Replace(withFiles(t, good), "address: 127.0.0.1:143", "address: ${PG_SURELY_UNSET}", 1)
	wantProblems(t, s, `line 13: backends.main.address: environment variable PG_SURELY_UNSET is not set`)
}

func TestSyntaxAndShapeErrors(t *testing.T) {
	wantProblems(t, "listeners: [\n", `line 1: did not find expected node content`)
	wantProblems(t, "", `the file is empty`)
	wantProblems(t, "tls: starttls\nlisteners: x\nbackends: {}\nroutes: []\n",
		`line 1: tls: want a mapping of keys (cert_file, key_file, min_version, acme), got "starttls"`,
		`line 2: listeners: want a list, got "x"`,
		`line 3: backends: at least one backend is required`,
		`line 4: routes: at least one route is required (for example match: "*")`,
	)
}

func TestTLSChecks(t *testing.T) {
	s := `
listeners: [{address: ":995", tls: implicit}]
tls:
  cert_file: /nonexistent/cert.pem
  min_version: "1.4"
backends: {m: {type: imap, address: "h:993", tls: implicit}}
routes: [{match: "*", backend: m}]
`
	wantProblems(t, s,
		`line 3: tls.key_file: required with cert_file`,
		`line 4: tls.cert_file: /nonexistent/cert.pem: no such file or directory`,
		`line 5: tls.min_version: unknown version "1.4" (want 1.0, 1.1, 1.2 or 1.3)`,
	)
	acme := `
listeners: [{address: ":110", tls: starttls}]
tls:
  acme: {domains: [mail.example.com]}
backends: {m: {type: imap, address: "h:993", tls: implicit}}
routes: [{match: "*", backend: m}]
`
	wantProblems(t, strings.Replace(acme, "mail.example.com]", "mail.example.com], challenge: dns", 1), `line 4: tls.acme.challenge: unknown challenge "dns" (want tls-alpn or http)`)
	c, err := Parse([]byte(strings.Replace(acme, "mail.example.com]", "mail.example.com], challenge: http, http_address: \":80\"", 1)), types)
	if err != nil {
		t.Fatal(err)
	}
	if a := c.TLS.ACME; a.StorageDir() != tlsconf.DefaultACMEStorage || a.ChallengeType() != tlsconf.ChallengeHTTP || a.Directory() != tlsconf.LetsEncryptProduction {
		t.Errorf("acme = %+v: storage %q, challenge %q, directory %q", a, a.StorageDir(), a.ChallengeType(), a.Directory())
	}
}

func TestLoadNamesFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "missing.yaml")
	_, err := Load(p, types)
	if err == nil || err.Error() != p+": no such file or directory" {
		t.Fatalf("Load(missing) = %v", err)
	}
	var fe *FileError
	if !errors.As(err, &fe) || len(fe.Problems()) != 1 {
		t.Fatalf("not a FileError with one problem: %#v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("log: {level: loud}\nlisteners: [{address: \":995\", tls: implicit}]\ntls: {acme: {domains: [x.example]}}\nbackends: {m: {type: imap, address: \"h:1\", tls: none}}\nroutes: [{match: \"*\", backend: m}]\n"), 0o600)
	_, err = Load(bad, types)
	if err == nil || !strings.HasPrefix(err.Error(), bad+": line 1: log.level: unknown level \"loud\"") {
		t.Fatalf("Load(bad, types) = %v", err)
	}
}

func TestPlaintextListenerNeedsAllowPlaintext(t *testing.T) {
	s := `
listeners: [{address: "127.0.0.1:110", tls: none}]
backends: {m: {type: imap, address: "h:143", tls: none}}
routes: [{match: "*", backend: m}]
`
	wantProblems(t, s, `line 2: listeners[0].tls: none without auth.allow_plaintext: true lets no client log in (use starttls or implicit, or allow plaintext logins)`)
	if _, err := Parse([]byte(s+"auth: {allow_plaintext: true}\n"), types); err != nil {
		t.Fatal(err)
	}
}

// FuzzParse: no input makes Parse panic, and what it accepts validates.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("listeners: [{address: \":995\", tls: implicit}]\ntls: {acme: {domains: [a.example]}}\n"))
	f.Add([]byte("a: &x {b: 1}\nc: *x\n<<: *x\n"))
	f.Add([]byte("backends: {m: {type: imap, address: \"${HOME}:1\", tls: none}}\n"))
	f.Add([]byte("session: {idle_timeout: 5, max_errors: [1]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data, types)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a configuration Validate refuses: %v", verr)
			}
		}
	})
}

func TestAccountsAndFailureKeys(t *testing.T) {
	dir := t.TempDir()
	accts := dir + "/accounts.yaml"
	if err := os.WriteFile(accts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	base := "listeners: [{address: \"127.0.0.1:1110\", tls: none}]\nauth: {allow_plaintext: true}\nbackends:\n  corp: {type: imap, address: \"127.0.0.1:143\", tls: none}\nroutes: [{match: \"*\", backend: corp}]\n"
	c, err := Parse([]byte(base), types)
	if err != nil {
		t.Fatal(err)
	}
	if c.Accounts != nil || c.Auth.FailureDelay != 2*time.Second || c.Auth.FailureMaxDelay != 15*time.Second {
		t.Fatalf("defaults: accounts %v, failure delay %v, max %v", c.Accounts, c.Auth.FailureDelay, c.Auth.FailureMaxDelay)
	}
	c, err = Parse([]byte(strings.Replace(base, "auth: {allow_plaintext: true}", "auth: {allow_plaintext: true, failure_delay: 1s, failure_max_delay: 1m}\naccounts: {file: "+accts+"}", 1)), types)
	if err != nil {
		t.Fatal(err)
	}
	if c.Accounts.File != accts || c.Auth.FailureMaxDelay != time.Minute {
		t.Fatalf("accounts %+v, max %v", c.Accounts, c.Auth.FailureMaxDelay)
	}
	c, err = Parse([]byte(base+"accounts:\n  http: {url: \"https://auth.example/popgate\", headers: {Authorization: \"Bearer x\"}}\n"), types)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.Accounts.HTTP; h.URL != "https://auth.example/popgate" || h.Timeout != 0 || h.Headers["Authorization"] != "Bearer x" {
		t.Fatalf("http %+v", h)
	}
	for extra, want := range map[string]string{
		"accounts: {}\n": "accounts: set file",
		"accounts: {file: " + accts + ", http: {url: \"https://a.example/\"}}\n": "not both",
		"accounts: {file: " + dir + "/none.yaml}\n":                              "accounts.file: ",
		"accounts: {http: {url: \"ftp://a.example/\"}}\n":                        "accounts.http.url: required",
		"accounts: {http: {url: \"https://u:SeCrEt@a.example/\"}}\n":             "must not hold credentials",
		"accounts: {http: {url: \"https://a.example/\", timeout: -1s}}\n":        "accounts.http.timeout",
		"accounts: {file: " + accts + ", colour: red}\n":                         "unknown key \"colour\"",
	} {
		_, err := Parse([]byte(base+extra), types)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", extra, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "SeCrEt") {
			t.Errorf("%q: the error shows the URL's password: %v", extra, err)
		}
	}
	_, err = Parse([]byte(strings.Replace(base, "auth: {allow_plaintext: true}", "auth: {allow_plaintext: true, failure_delay: 10s, failure_max_delay: 5s}", 1)), types)
	if err == nil || !strings.Contains(err.Error(), "auth.failure_max_delay: must not be below") {
		t.Errorf("max below base: %v", err)
	}
}
