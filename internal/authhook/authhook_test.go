package authhook

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/identity"
)

const secret = "Dev1ce-Secret!"

func req() identity.Request {
	return identity.Request{
		User: "scanner@corp.example", Password: secret, Mechanism: "PLAIN",
		RemoteAddr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 51515}, TLS: true, Listener: "pop3s 127.0.0.1:995",
	}
}

func hookFor(t *testing.T, h http.HandlerFunc, cfg Config) *Hook {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	if cfg.URL == "" {
		cfg.URL = srv.URL + "/popgate"
	}
	hk, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hk.Close)
	return hk
}

func noSecret(t *testing.T, err error) {
	t.Helper()
	if err != nil && (strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), "upstream-pw")) {
		t.Errorf("error text holds a secret: %v", err)
	}
}

func TestAccepted(t *testing.T) {
	var got map[string]any
	var hdr http.Header
	hk := hookFor(t, func(w http.ResponseWriter, r *http.Request) {
		hdr = r.Header.Clone()
		if r.Method != http.MethodPost || r.URL.Path != "/popgate" {
			t.Errorf("%s %s", r.Method, r.URL.Path)
		}
		json.NewDecoder(r.Body).Decode(&got)
		io.WriteString(w, `{"backend":"corp","upstream":{"user":"scans@corp.example","password":"upstream-pw"},"maildrop":"isp:7","login_delay":300}`)
	}, Config{Headers: map[string]string{"Authorization": "Bearer hook-token"}})
	id, err := hk.Authenticate(context.Background(), req())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"user": "scanner@corp.example", "password": secret, "mechanism": "PLAIN", "remote_addr": "192.0.2.7", "tls": true, "listener": "pop3s 127.0.0.1:995"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("request %s = %v, want %v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("request has %d fields: %v", len(got), got)
	}
	if hdr.Get("Authorization") != "Bearer hook-token" || hdr.Get("Content-Type") != "application/json" {
		t.Errorf("headers %v", hdr)
	}
	if id.Backend != "corp" || id.UpstreamUser != "scans@corp.example" || id.UpstreamPassword != "upstream-pw" || id.Maildrop != "isp:7" || !id.HasLoginDelay || id.LoginDelay != 5*time.Minute {
		t.Errorf("identity %#v", id)
	}
	if !hk.PerUserLoginDelay() {
		t.Error("a hook may set per-user login delays")
	}
}

func TestAcceptedMinimal(t *testing.T) {
	hk := hookFor(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"upstream":{"user":"u","password":"p"},"login_delay":"90s","extra":"ignored"}`)
	}, Config{})
	id, err := hk.Authenticate(context.Background(), req())
	if err != nil || id.Backend != "" || id.Maildrop != "" || id.LoginDelay != 90*time.Second {
		t.Fatalf("%#v %v", id, err)
	}
	hk = hookFor(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"upstream":{"user":"u","password":"p"}}`)
	}, Config{})
	id, err = hk.Authenticate(context.Background(), req())
	if err != nil || id.HasLoginDelay {
		t.Fatalf("%#v %v", id, err)
	}
}

func TestRefused(t *testing.T) {
	for _, c := range []struct {
		status int
		body   string
		retry  time.Duration
	}{
		{401, "", 0},
		{403, `{"retry_after": 30}`, 30 * time.Second},
		{401, `not json ` + secret, 0},
		{403, `{"retry_after": -5}`, 0},
	} {
		hk := hookFor(t, func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(c.status)
			io.WriteString(w, c.body)
		}, Config{})
		_, err := hk.Authenticate(context.Background(), req())
		var rej *identity.Rejected
		if !errors.As(err, &rej) {
			t.Errorf("%d %q: %v, want Rejected", c.status, c.body, err)
			continue
		}
		if rej.RetryAfter != c.retry {
			t.Errorf("%d %q: retry after %v, want %v", c.status, c.body, rej.RetryAfter, c.retry)
		}
		noSecret(t, err)
	}
}

// TestFailureModes: everything but 200/401/403 is an error that is not a
// Rejected (the client gets [SYS/TEMP]), and no error text holds the
// password or the answer body.
func TestFailureModes(t *testing.T) {
	// stall answers nothing until the client gives up (the body must be
	// read for the server to notice the client going away).
	stall := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		select {
		case <-r.Context().Done():
		case <-time.After(10 * time.Second):
		}
	}
	echo := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			io.WriteString(w, body)
		}
	}
	cases := map[string]struct {
		h    http.HandlerFunc
		want string
	}{
		"500":             {echo(500, "internal "+secret), "unexpected status 500"},
		"404":             {echo(404, ""), "unexpected status 404"},
		"200 not JSON":    {echo(200, "<html>"+secret), "not the expected JSON"},
		"200 no upstream": {echo(200, `{"backend":"corp"}`), "without upstream.user"},
		"200 bad delay":   {echo(200, `{"upstream":{"user":"u","password":"upstream-pw"},"login_delay":"soon"}`), "login_delay"},
		"200 huge":        {echo(200, `{"upstream":{"user":"`+strings.Repeat("u", 70000)+`"}}`), "larger than"},
		"redirect": {func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://192.0.2.1/steal", http.StatusTemporaryRedirect)
		}, "unexpected status 307"},
		"timeout":          {stall, "timeout"},
		"closed mid-reply": {func(w http.ResponseWriter, r *http.Request) { c, _, _ := w.(http.Hijacker).Hijack(); c.Close() }, "auth hook"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			hk := hookFor(t, c.h, Config{Timeout: 300 * time.Millisecond})
			_, err := hk.Authenticate(context.Background(), req())
			var rej *identity.Rejected
			if err == nil || errors.As(err, &rej) {
				t.Fatalf("%v, want a non-rejection error", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q, want %q", err, c.want)
			}
			noSecret(t, err)
		})
	}
	// Unreachable: a port nothing listens on.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	hk, err := New(Config{URL: "http://" + addr + "/x"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = hk.Authenticate(context.Background(), req())
	var rej *identity.Rejected
	if err == nil || errors.As(err, &rej) || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("unreachable hook: %v", err)
	}
	noSecret(t, err)
}

func TestHTTPSWithCAFile(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"upstream":{"user":"u","password":"p"}}`)
	}))
	defer srv.Close()
	// Without the CA: the certificate is not trusted.
	hk, _ := New(Config{URL: srv.URL})
	if _, err := hk.Authenticate(context.Background(), req()); err == nil {
		t.Fatal("untrusted certificate accepted")
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	hk, err := New(Config{URL: srv.URL, CAFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hk.Authenticate(context.Background(), req()); err != nil {
		t.Fatalf("with ca_file: %v", err)
	}
	_ = tls.VersionTLS12
}

func TestValidate(t *testing.T) {
	bad := map[string]Config{
		"no url":          {},
		"ftp":             {URL: "ftp://x/"},
		"credentials":     {URL: "https://user:" + secret + "@auth.example/"},
		"negative":        {URL: "https://auth.example/", Timeout: -time.Second},
		"header name":     {URL: "https://auth.example/", Headers: map[string]string{"Bad Name": "x"}},
		"missing ca file": {URL: "https://auth.example/", CAFile: "/nonexistent/ca.pem"},
	}
	for name, c := range bad {
		err := c.Validate()
		if err == nil {
			t.Errorf("%s: valid", name)
		}
		noSecret(t, err)
	}
	if err := (Config{URL: "https://auth.example/popgate", Timeout: time.Second}).Validate(); err != nil {
		t.Error(err)
	}
}

// The hook may name an OAuth2 credential or hand a token instead of a
// password; at most one of the three, and a credential the configuration
// does not have is [SYS/TEMP] (not quoted: it might be a token).
func TestAcceptedCredentialOrToken(t *testing.T) {
	known := func(n string) bool { return n == "m365-app" }
	answer := func(body string) (*identity.Identity, error) {
		hk := hookFor(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, body) }, Config{CredentialKnown: known})
		return hk.Authenticate(context.Background(), req())
	}
	id, err := answer(`{"upstream":{"user":"scans@corp.example","credential":"m365-app"}}`)
	if err != nil || id.UpstreamCredential != "m365-app" || id.UpstreamPassword != "" || id.UpstreamToken != "" {
		t.Fatalf("credential: %#v %v", id, err)
	}
	const tok = "hook-issued-access-token-123"
	id, err = answer(`{"upstream":{"user":"scans@corp.example","token":"` + tok + `"}}`)
	if err != nil || id.UpstreamToken != tok || id.UpstreamCredential != "" {
		t.Fatalf("token: %#v %v", id, err)
	}
	if s := id.String() + id.GoString(); strings.Contains(s, tok) {
		t.Errorf("identity text shows the token: %s", s)
	}
	for body, want := range map[string]string{
		`{"upstream":{"user":"u","password":"upstream-pw","credential":"m365-app"}}`: "more than one",
		`{"upstream":{"user":"u","credential":"m365-app","token":"` + tok + `"}}`:    "more than one",
		`{"upstream":{"user":"u","credential":"` + tok + `"}}`:                       "names no credential",
	} {
		_, err := answer(body)
		var rej *identity.Rejected
		if err == nil || errors.As(err, &rej) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error with %q", body, err, want)
			continue
		}
		noSecret(t, err)
		if strings.Contains(err.Error(), tok) {
			t.Errorf("error text holds the token: %v", err)
		}
	}
}
