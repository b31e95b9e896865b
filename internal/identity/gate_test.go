package identity

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/throttle"
)

// counting counts every Login call that reaches the store.
type counting struct {
	backends.Backend
	calls atomic.Int32
	mu    sync.Mutex
	last  backends.Credentials // of the last Login
}

func (c *counting) Login(ctx context.Context, cr backends.Credentials) (backends.Mailbox, error) {
	c.calls.Add(1)
	c.mu.Lock()
	c.last = cr
	c.mu.Unlock()
	return c.Backend.Login(ctx, cr)
}

func (c *counting) lastCreds() backends.Credentials {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// fakeSource is a Source with fixed answers.
type fakeSource struct {
	ids     map[string]Identity // user+"\x00"+password -> identity
	err     error               // returned for everything when set
	perUser bool
	calls   atomic.Int32
}

func (f *fakeSource) Authenticate(_ context.Context, r Request) (*Identity, error) {
	f.calls.Add(1)
	if f.err != nil {
		return nil, f.err
	}
	id, ok := f.ids[r.User+"\x00"+r.Password]
	if !ok {
		return nil, &Rejected{Reason: "wrong password"}
	}
	return &id, nil
}
func (f *fakeSource) PerUserLoginDelay() bool { return f.perUser }

type env struct {
	store  *memory.Backend
	up     *counting
	gate   *Gate
	mem    *throttle.Memory
	mu     sync.Mutex
	slept  []time.Duration
	policy throttle.Policy
}

func newEnv(t *testing.T, src Source, loginDelay time.Duration) *env {
	t.Helper()
	e := &env{store: memory.New(), policy: throttle.Policy{Base: 2 * time.Second, Max: 15 * time.Second}}
	e.store.AddUser("alice@corp.example", "alice-pw")
	e.store.AddUser("scans@corp.example", "scans-upstream-pw")
	e.up = &counting{Backend: e.store}
	rt, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": e.up}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	e.mem = throttle.NewMemory(0)
	e.gate = New(Options{Upstream: rt, Source: src, Store: e.mem, Policy: e.policy, LoginDelay: loginDelay, Logger: zerolog.Nop()})
	e.gate.sleep = func(_ context.Context, d time.Duration) bool {
		if d > 0 {
			e.mu.Lock()
			e.slept = append(e.slept, d)
			e.mu.Unlock()
		}
		return true
	}
	return e
}

func (e *env) sleeps() []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := e.slept
	e.slept = nil
	return s
}

var addrA = &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000}
var addrB = &net.TCPAddr{IP: net.IPv4(198, 51, 100, 2), Port: 40000}

func (e *env) login(user, pass string, from net.Addr) (backends.Mailbox, error) {
	return e.gate.Login(context.Background(), backends.Credentials{Username: user, Password: pass, Mechanism: "USER", RemoteAddr: from})
}

func code(err error) backends.Code {
	c, _ := backends.ClientError(err)
	if err == nil {
		return backends.CodeNone
	}
	return c
}

func TestPassThroughDelaysGrow(t *testing.T) {
	e := newEnv(t, nil, 0)
	// Failures answer after 2s, 4s, 8s, then 15s (the cap), counted
	// per address and per user.
	var total []time.Duration
	for i := 0; i < 20; i++ {
		_, err := e.login("alice@corp.example", "guess", addrA)
		if code(err) != backends.CodeAuth {
			t.Fatalf("wrong password: %v", err)
		}
		var sum time.Duration
		for _, d := range e.sleeps() {
			sum += d
		}
		total = append(total, sum)
	}
	// (The first answer subtracts the real time the attempt took.)
	near := func(d, want time.Duration) bool { return d <= want && d > want-time.Second }
	if !near(total[0], 2*time.Second) || total[1] != 4*time.Second || total[2] != 8*time.Second || total[3] != 15*time.Second || total[19] != 15*time.Second {
		t.Fatalf("time spent per failure %v: want 2s, ~4s, … up to ~15s", total)
	}
	// A right password after the failures still works, after the delay.
	mb, err := e.login("alice@corp.example", "alice-pw", addrA)
	if err != nil {
		t.Fatalf("right password after failures: %v", err)
	}
	mb.Close()
	if s := e.sleeps(); len(s) != 1 || s[0] != 15*time.Second {
		t.Errorf("right password waited %v, want the earned 15s", s)
	}
	// The address keeps its record; the user's is cleared.
	if _, err := e.login("bob@corp.example", "x", addrA); code(err) != backends.CodeAuth {
		t.Fatal(err)
	}
	if s := e.sleeps(); len(s) == 0 || s[0] != 15*time.Second {
		t.Errorf("other user from the same address waited %v first, want the address's 15s", s)
	}
	if mb, err := e.login("alice@corp.example", "alice-pw", addrB); err != nil {
		t.Fatal(err)
	} else {
		mb.Close()
	}
	if s := e.sleeps(); len(s) != 0 {
		t.Errorf("alice from another address after her success waited %v, want nothing", s)
	}
}

func TestSourceRejectsBeforeUpstream(t *testing.T) {
	src := &fakeSource{ids: map[string]Identity{
		"scanner-3@corp.example\x00device-pw": {UpstreamUser: "scans@corp.example", UpstreamPassword: "scans-upstream-pw"},
	}}
	e := newEnv(t, src, 0)
	_, err := e.login("scanner-3@corp.example", "wrong", addrA)
	if code(err) != backends.CodeAuth {
		t.Fatalf("wrong device password: %v", err)
	}
	// The upstream's own credentials are no device login.
	_, err = e.login("scans@corp.example", "scans-upstream-pw", addrB)
	if code(err) != backends.CodeAuth {
		t.Fatalf("upstream credentials as a device login: %v", err)
	}
	if n := e.up.calls.Load(); n != 0 {
		t.Fatalf("the upstream saw %d logins for refused device logins", n)
	}
	mb, err := e.login("scanner-3@corp.example", "device-pw", addrB)
	if err != nil {
		t.Fatalf("device login: %v", err)
	}
	if id := backends.MaildropID(mb, backends.Credentials{}); id != "corp/memory:scans@corp.example" {
		t.Errorf("maildrop id %q", id)
	}
	mb.Close()
	if n := e.up.calls.Load(); n != 1 {
		t.Fatalf("upstream logins %d, want 1", n)
	}

	// The source cannot decide: [SYS/TEMP], not counted as a failure.
	src.err = errors.New("hook unreachable")
	_, err = e.login("scanner-3@corp.example", "device-pw", addrB)
	if code(err) != backends.CodeSysTemp {
		t.Fatalf("source error: %v", err)
	}
	if n, _ := e.gate.limiter.Failures(context.Background(), "", "scanner-3@corp.example"); n != 0 {
		t.Errorf("a source error counted as %d failures", n)
	}
}

func TestAccountUpstreamRefused(t *testing.T) {
	src := &fakeSource{ids: map[string]Identity{
		"dev\x00pw": {Backend: "corp", UpstreamUser: "scans@corp.example", UpstreamPassword: "stale"},
		"bad\x00pw": {Backend: "nosuch", UpstreamUser: "scans@corp.example", UpstreamPassword: "x"},
	}}
	e := newEnv(t, src, 0)
	_, err := e.login("dev", "pw", addrA)
	if code(err) != backends.CodeSysTemp {
		t.Fatalf("account with stale upstream password: %v, want [SYS/TEMP]", err)
	}
	if n, _ := e.gate.limiter.Failures(context.Background(), addrA.IP.String(), "dev"); n != 0 {
		t.Errorf("the device is penalised (%d) for the account's upstream password", n)
	}
	_, err = e.login("bad", "pw", addrA)
	if code(err) != backends.CodeSysTemp {
		t.Fatalf("unknown backend: %v", err)
	}
}

func TestLoginDelay(t *testing.T) {
	e := newEnv(t, nil, 5*time.Minute)
	mb, err := e.login("alice@corp.example", "alice-pw", addrA)
	if err != nil {
		t.Fatal(err)
	}
	if ld, ok := mb.(backends.LoginDelayer); !ok || ld.LoginDelay() != 5*time.Minute {
		t.Errorf("mailbox login delay: %v", mb)
	}
	mb.Close()
	before := e.up.calls.Load()
	_, err = e.login("alice@corp.example", "alice-pw", addrB)
	if code(err) != backends.CodeLoginDelay {
		t.Fatalf("second login inside the window: %v", err)
	}
	if e.up.calls.Load() != before {
		t.Fatal("the upstream saw the refused login")
	}
	// A failed upstream login does not hold the window.
	e2 := newEnv(t, nil, 5*time.Minute)
	if _, err := e2.login("alice@corp.example", "wrong", addrA); code(err) != backends.CodeAuth {
		t.Fatal(err)
	}
	if mb, err := e2.login("alice@corp.example", "alice-pw", addrA); err != nil {
		t.Fatalf("login after a failed one: %v", err)
	} else {
		mb.Close()
	}
}

func TestPerAccountLoginDelay(t *testing.T) {
	src := &fakeSource{perUser: true, ids: map[string]Identity{
		"slow\x00pw": {UpstreamUser: "alice@corp.example", UpstreamPassword: "alice-pw", LoginDelay: time.Hour, HasLoginDelay: true},
		"free\x00pw": {UpstreamUser: "scans@corp.example", UpstreamPassword: "scans-upstream-pw", LoginDelay: 0, HasLoginDelay: true},
		"hook\x00pw": {UpstreamUser: "scans@corp.example", UpstreamPassword: "scans-upstream-pw", Maildrop: "isp:42"},
	}}
	e := newEnv(t, src, 10*time.Minute)
	if !e.gate.PerUserLoginDelay() || e.gate.LoginDelay() != 10*time.Minute {
		t.Error("gate does not report per-user login delays")
	}
	for i := 0; i < 2; i++ {
		mb, err := e.login("free", "pw", addrA)
		if err != nil {
			t.Fatalf("account with login_delay 0s, login %d: %v", i+1, err)
		}
		if ld := mb.(backends.LoginDelayer).LoginDelay(); ld != 0 {
			t.Errorf("free: LoginDelay %v", ld)
		}
		mb.Close()
	}
	mb, err := e.login("slow", "pw", addrA)
	if err != nil {
		t.Fatal(err)
	}
	if ld := mb.(backends.LoginDelayer).LoginDelay(); ld != time.Hour {
		t.Errorf("slow: LoginDelay %v", ld)
	}
	mb.Close()
	if _, err := e.login("slow", "pw", addrA); code(err) != backends.CodeLoginDelay {
		t.Fatalf("slow again: %v", err)
	}
	mb, err = e.login("hook", "pw", addrA)
	if err != nil {
		t.Fatal(err)
	}
	if id := backends.MaildropID(mb, backends.Credentials{}); id != "isp:42" {
		t.Errorf("hook maildrop: id %q", id)
	}
	mb.Close()
	if _, err := e.login("hook", "pw", addrB); code(err) != backends.CodeLoginDelay {
		t.Fatalf("hook maildrop again: %v", err)
	}
}

func TestRetryAfterCapped(t *testing.T) {
	src := &fakeSource{err: &Rejected{Reason: "hook answered 401", RetryAfter: time.Hour}}
	e := newEnv(t, src, 0)
	if _, err := e.login("x", "y", addrA); code(err) != backends.CodeAuth {
		t.Fatal(err)
	}
	s := e.sleeps()
	if len(s) != 1 || s[0] > 15*time.Second || s[0] < 14*time.Second {
		t.Errorf("retry_after 1h waited %v, want the 15s cap", s)
	}
}

func TestIdentityHidesSecret(t *testing.T) {
	id := Identity{UpstreamUser: "u", UpstreamPassword: "hunter2"}
	for _, s := range []string{id.String(), id.GoString()} {
		if contains(s, "hunter2") {
			t.Errorf("%q shows the password", s)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// An identity naming an OAuth2 credential or carrying a hook's token logs
// in upstream with that (and no password); what the device sent never goes
// upstream. Pass-through keeps a client's own token.
func TestUpstreamCredentialAndToken(t *testing.T) {
	src := &fakeSource{ids: map[string]Identity{
		"cred\x00pw": {UpstreamUser: "scans@corp.example", UpstreamCredential: "m365-app"},
		"tok\x00pw":  {UpstreamUser: "scans@corp.example", UpstreamToken: "hook-token"},
	}}
	e := newEnv(t, src, 0)
	e.login("cred", "pw", addrA) // the memory store knows no token: refused, fine
	if c := e.up.lastCreds(); c.Credential != "m365-app" || c.Token != "" || c.Password != "" || c.Username != "scans@corp.example" {
		t.Errorf("credential login went upstream as %#v", c)
	}
	e.gate.Login(context.Background(), backends.Credentials{Username: "tok", Password: "pw", Mechanism: "USER", Token: "device-sent", RemoteAddr: addrA})
	if c := e.up.lastCreds(); c.Token != "hook-token" || c.Credential != "" || c.Password != "" {
		t.Errorf("token login went upstream as %#v", c)
	}

	pt := newEnv(t, nil, 0)
	pt.gate.Login(context.Background(), backends.Credentials{Username: "alice@corp.example", Mechanism: "XOAUTH2", Token: "client-token", RemoteAddr: addrA})
	if c := pt.up.lastCreds(); c.Token != "client-token" || c.Credential != "" {
		t.Errorf("pass-through token went upstream as %#v", c)
	}
}
