package identity_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/accounts"
	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/internal/throttle"
	"github.com/popgate/popgate/proxy"
)

// capa runs CAPA on c (not cached) and returns its LOGIN-DELAY line.
func capaLoginDelay(t *testing.T, c *pop3client.Client) string {
	t.Helper()
	if _, err := c.Cmd("CAPA"); err != nil {
		t.Fatal(err)
	}
	got := ""
	c.Lines(func(l []byte) error {
		if strings.HasPrefix(string(l), "LOGIN-DELAY") {
			got = string(l)
		}
		return nil
	})
	return got
}

// TestLoginDelayPOP3: CAPA announces the global LOGIN-DELAY with USER
// before login and the account's own after it (RFC 2449 §6.5); a login
// inside the window gets -ERR [LOGIN-DELAY] (RFC 2449 §8.1.2) and the
// upstream sees nothing of it; pass-through logins are keyed by the routed
// upstream user.
func TestLoginDelayPOP3(t *testing.T) {
	store := memory.New()
	store.AddUser("scans@corp.example", "up-pw")
	store.AddUser("alice@corp.example", "alice-pw")
	up := &countingBackend{Backend: store}
	router, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": up}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "accounts.yaml")
	writeFile(t, path, "scanner@corp.example:\n  password: '"+hash(t, "dev-pw")+"'\n  upstream: {user: scans@corp.example, password: up-pw}\n  login_delay: 1h\n"+
		"printer@corp.example:\n  password: '"+hash(t, "dev-pw")+"'\n  upstream: {user: alice@corp.example, password: alice-pw}\n")
	file, err := accounts.Open(path, accounts.Options{})
	if err != nil {
		t.Fatal(err)
	}
	state := throttle.NewMemory(0)
	serve := func(src identity.Source) string {
		gate := identity.New(identity.Options{Upstream: router, Source: src, Store: state, LoginDelay: 5 * time.Minute,
			Policy: throttle.Policy{Base: time.Millisecond, Max: time.Millisecond}})
		srv := proxy.New(proxy.Options{Backend: gate, AllowPlaintext: true, AuthFailureDelay: -1,
			LoginDelay: gate.LoginDelay(), LoginDelayVaries: gate.PerUserLoginDelay})
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l, proxy.ListenerConfig{Name: "pop3", TLS: proxy.TLSNone})
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
		return l.Addr().String()
	}
	addr := serve(file)
	dial := func(addr string) *pop3client.Client {
		c, err := pop3client.Dial(addr, pop3client.Options{Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	loginDelayErr := func(err error) bool {
		var er *pop3client.ErrResponse
		return errors.As(err, &er) && strings.HasPrefix(er.Text, "[LOGIN-DELAY] ")
	}

	c := dial(addr)
	if got := capaLoginDelay(t, c); got != "LOGIN-DELAY 300 USER" {
		t.Errorf("CAPA before login: %q, want LOGIN-DELAY 300 USER", got)
	}
	if err := c.Login("scanner@corp.example", "dev-pw"); err != nil {
		t.Fatal(err)
	}
	if got := capaLoginDelay(t, c); got != "LOGIN-DELAY 3600" {
		t.Errorf("CAPA after login: %q, want the account's LOGIN-DELAY 3600", got)
	}
	c.Quit()

	c = dial(addr)
	if err := c.Login("printer@corp.example", "dev-pw"); err != nil {
		t.Fatal(err)
	}
	if got := capaLoginDelay(t, c); got != "LOGIN-DELAY 300" {
		t.Errorf("CAPA after login without an own delay: %q, want the global LOGIN-DELAY 300", got)
	}
	c.Quit()

	before := up.n.Load()
	err = dial(addr).Login("scanner@corp.example", "dev-pw")
	if !loginDelayErr(err) {
		t.Fatalf("second login inside the window: %v, want -ERR [LOGIN-DELAY]", err)
	}
	if up.n.Load() != before {
		t.Fatal("the upstream saw the login refused by LOGIN-DELAY")
	}

	// Pass-through (no accounts): keyed by the routed upstream user, checked
	// before the upstream login; CAPA has no USER.
	pass := serve(nil)
	c = dial(pass)
	if got := capaLoginDelay(t, c); got != "LOGIN-DELAY 300" {
		t.Errorf("pass-through CAPA: %q", got)
	}
	if err := c.Login("scans@corp.example", "up-pw"); !loginDelayErr(err) {
		t.Errorf("pass-through login to the maildrop the account used within the hour: %v", err)
	}
	c = dial(pass)
	if err := c.Login("newbie@corp.example", "x"); err == nil || loginDelayErr(err) {
		t.Errorf("unknown user: %v, want [AUTH]", err)
	}
	store.AddUser("bob@corp.example", "bob-pw")
	c = dial(pass)
	if err := c.Login("bob@corp.example", "bob-pw"); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	before = up.n.Load()
	if err := dial(pass).Login("bob@corp.example", "bob-pw"); !loginDelayErr(err) {
		t.Fatalf("pass-through second login: %v", err)
	}
	if up.n.Load() != before {
		t.Fatal("the upstream saw the pass-through login refused by LOGIN-DELAY")
	}
}
