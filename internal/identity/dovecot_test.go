package identity_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/internal/accounts"
	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/internal/testserver/dovecot"
	"github.com/popgate/popgate/internal/testutil"
	"github.com/popgate/popgate/internal/throttle"
	"github.com/popgate/popgate/proxy"
)

// countingBackend counts the logins that reach the upstream store.
type countingBackend struct {
	backends.Backend
	n atomic.Int32
}

func (c *countingBackend) Login(ctx context.Context, cr backends.Credentials) (backends.Mailbox, error) {
	c.n.Add(1)
	return c.Backend.Login(ctx, cr)
}

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), 4)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path+".new", []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// imapLogins counts the lines of Dovecot's login process: every
// connection, logged in or not, leaves at least one.
func imapLogins(dc *dovecot.Server) int {
	return strings.Count(dc.Log(), "imap-login: ")
}

// TestAccountsFileDovecot: a device account maps to an upstream user with
// its own password on a real Dovecot; a wrong device password and the
// upstream's own credentials never reach Dovecot; a changed file takes
// effect on Reload (what SIGHUP calls).
func TestAccountsFileDovecot(t *testing.T) {
	dc := dovecot.Start(t, dovecot.Options{Users: map[string]string{"scans@corp.example": "Upstream-Pw-77"}})
	if _, err := dc.Append("scans@corp.example", "INBOX", []byte("Subject: scan 1\r\n\r\nhello\r\n")); err != nil {
		t.Fatal(err)
	}
	cfg := imap.DefaultConfig()
	cfg.Name, cfg.Address, cfg.TLS = "corp", dc.Addr(), "none"
	var logs testutil.SyncBuffer
	log := zerolog.New(&logs)
	ib, err := imap.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer ib.Close()
	up := &countingBackend{Backend: ib}
	router, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": up}, log)
	if err != nil {
		t.Fatal(err)
	}

	t.Setenv("SCANS_PW", "Upstream-Pw-77")
	path := filepath.Join(t.TempDir(), "accounts.yaml")
	writeFile(t, path, "scanner-3@corp.example:\n  password: '"+hash(t, "Device-Pw-1")+"'\n  backend: corp\n  upstream: {user: scans@corp.example, password: \"${SCANS_PW}\"}\n")
	file, err := accounts.Open(path, accounts.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	gate := identity.New(identity.Options{
		Upstream: router, Source: file, Store: throttle.NewMemory(0),
		Policy: throttle.Policy{Base: time.Millisecond, Max: 4 * time.Millisecond}, Logger: log,
	})
	srv := proxy.New(proxy.Options{Backend: gate, AllowPlaintext: true, AuthFailureDelay: -1, MaxAuthFailures: 10, Logger: log})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l, proxy.ListenerConfig{Name: "pop3", TLS: proxy.TLSNone})
	defer srv.Shutdown(context.Background())

	login := func(user, pass string) (*pop3client.Client, error) {
		c, err := pop3client.Dial(l.Addr().String(), pop3client.Options{Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Login(user, pass); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	wantAuthErr := func(err error, what string) {
		t.Helper()
		var er *pop3client.ErrResponse
		if !errors.As(err, &er) || !strings.HasPrefix(er.Text, "[AUTH]") {
			t.Fatalf("%s: %v, want -ERR [AUTH]", what, err)
		}
	}

	c, err := login("scanner-3@corp.example", "Device-Pw-1")
	if err != nil {
		t.Fatalf("device login: %v", err)
	}
	var body strings.Builder
	if _, err := c.Retr(1, &body); err != nil || !strings.Contains(body.String(), "scan 1") {
		t.Fatalf("RETR through the account: %v %q", err, body.String())
	}
	c.Quit()
	if up.n.Load() != 1 {
		t.Fatalf("upstream logins %d, want 1", up.n.Load())
	}

	before := imapLogins(dc)
	if before == 0 {
		t.Fatalf("Dovecot logged no login for the device's session: the log check below is blind\n%s", dc.Log())
	}
	_, err = login("scanner-3@corp.example", "Device-Pw-2")
	wantAuthErr(err, "wrong device password")
	_, err = login("scans@corp.example", "Upstream-Pw-77")
	wantAuthErr(err, "the upstream's own credentials")
	if up.n.Load() != 1 || imapLogins(dc) != before {
		t.Fatalf("refused device logins reached the upstream: %d gateway logins, Dovecot logins %d -> %d", up.n.Load(), before, imapLogins(dc))
	}

	// The operator changes the device password; SIGHUP calls Reload.
	writeFile(t, path, "scanner-3@corp.example:\n  password: '"+hash(t, "Device-Pw-2")+"'\n  upstream: {user: scans@corp.example, password: \"${SCANS_PW}\"}\n")
	if err := file.Reload(); err != nil {
		t.Fatal(err)
	}
	_, err = login("scanner-3@corp.example", "Device-Pw-1")
	wantAuthErr(err, "old device password after reload")
	c, err = login("scanner-3@corp.example", "Device-Pw-2")
	if err != nil {
		t.Fatalf("new device password after reload: %v", err)
	}
	c.Quit()

	for _, secret := range []string{"Device-Pw-1", "Device-Pw-2", "Upstream-Pw-77", "$2a$"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
}
