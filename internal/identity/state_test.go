package identity

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/throttle"
)

// faultyStore is a throttle.Store whose operations fail on demand and
// are counted.
type faultyStore struct {
	throttle.Store
	failReads, failWrites, failClaims atomic.Bool
	calls                             atomic.Int32
}

var errDown = errors.New("dial tcp 127.0.0.1:6379: connect: connection refused")

func (f *faultyStore) Failures(ctx context.Context, key string) (int, error) {
	f.calls.Add(1)
	if f.failReads.Load() {
		return 0, errDown
	}
	return f.Store.Failures(ctx, key)
}

func (f *faultyStore) AddFailure(ctx context.Context, key string, ttl time.Duration) (int, error) {
	f.calls.Add(1)
	if f.failWrites.Load() {
		return 0, errDown
	}
	return f.Store.AddFailure(ctx, key, ttl)
}

func (f *faultyStore) ClearFailures(ctx context.Context, key string) error {
	f.calls.Add(1)
	if f.failWrites.Load() {
		return errDown
	}
	return f.Store.ClearFailures(ctx, key)
}

func (f *faultyStore) ClaimLogin(ctx context.Context, key string, ttl time.Duration) (time.Duration, error) {
	f.calls.Add(1)
	if f.failClaims.Load() {
		return 0, errDown
	}
	return f.Store.ClaimLogin(ctx, key, ttl)
}

func (f *faultyStore) ReleaseLogin(ctx context.Context, key string) error {
	f.calls.Add(1)
	return f.Store.ReleaseLogin(ctx, key)
}

func newFaultyEnv(t *testing.T, policy throttle.Policy, loginDelay time.Duration) (*env, *faultyStore, *countObserver, *syncBuf) {
	t.Helper()
	e := &env{store: memory.New(), policy: policy}
	e.store.AddUser("alice", "alice-pw")
	e.store.AddUser("bob", "bob-pw")
	e.up = &counting{Backend: e.store}
	rt, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": e.up}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	fs := &faultyStore{Store: throttle.NewMemory(0)}
	obs := &countObserver{}
	log := &syncBuf{}
	e.gate = New(Options{Upstream: rt, Store: fs, Policy: policy, LoginDelay: loginDelay, Logger: zerolog.New(log), Observer: obs})
	e.gate.sleep = func(_ context.Context, d time.Duration) bool {
		if d > 0 {
			e.mu.Lock()
			e.slept = append(e.slept, d)
			e.mu.Unlock()
		}
		return true
	}
	return e, fs, obs, log
}

// TestStateUnreadableRefuses: failure counts that cannot be read refuse
// the login with [SYS/TEMP] before the credentials are checked: never a
// login without its penalty.
func TestStateUnreadableRefuses(t *testing.T) {
	e, fs, _, log := newFaultyEnv(t, throttle.Policy{Base: 2 * time.Second, Max: 15 * time.Second}, 0)
	fs.failReads.Store(true)
	_, err := e.login("alice", "alice-pw", addrA)
	if c, text := backends.ClientError(err); c != backends.CodeSysTemp || text != errStateUnavailable.Text {
		t.Fatalf("login with the state unreadable: %v", err)
	}
	if n := e.up.calls.Load(); n != 0 {
		t.Fatalf("the upstream was asked %d times", n)
	}
	if !containsLine(log.String(), "login state unavailable (failure counts): login refused") {
		t.Fatalf("log: %s", log.String())
	}
}

// TestClaimFailureRefuses: a LOGIN-DELAY claim that cannot be made refuses
// the login with [SYS/TEMP] before the upstream login.
func TestClaimFailureRefuses(t *testing.T) {
	e, fs, _, log := newFaultyEnv(t, throttle.Policy{Base: 2 * time.Second}, time.Minute)
	fs.failClaims.Store(true)
	if _, err := e.login("alice", "alice-pw", addrA); code(err) != backends.CodeSysTemp {
		t.Fatalf("login with the claim failing: %v", err)
	}
	if n := e.up.calls.Load(); n != 0 {
		t.Fatalf("the upstream was asked %d times", n)
	}
	if !containsLine(log.String(), "login state unavailable (LOGIN-DELAY): login refused") {
		t.Fatalf("log: %s", log.String())
	}
}

// TestUnrecordedFailureWaitsLongest: a wrong password whose failure cannot
// be recorded is answered [AUTH] after failure_max_delay.
func TestUnrecordedFailureWaitsLongest(t *testing.T) {
	e, fs, _, log := newFaultyEnv(t, throttle.Policy{Base: 2 * time.Second, Max: 15 * time.Second}, 0)
	fs.failWrites.Store(true)
	if _, err := e.login("alice", "wrong", addrA); code(err) != backends.CodeAuth {
		t.Fatalf("wrong password: %v", err)
	}
	if s := e.sleeps(); len(s) != 1 || s[0] < 14*time.Second {
		t.Fatalf("slept %v, want about 15s (failure_max_delay)", s)
	}
	if !containsLine(log.String(), "login state unavailable: failure not recorded, the longest failure delay applies") {
		t.Fatalf("log: %s", log.String())
	}
}

// TestPenaltyOffNoState: failure_delay 0 reads and writes no failure
// state (no Redis round trip for it).
func TestPenaltyOffNoState(t *testing.T) {
	e, fs, _, _ := newFaultyEnv(t, throttle.Policy{}, 0)
	e.login("alice", "wrong", addrA)
	if _, err := e.login("alice", "alice-pw", addrA); err != nil {
		t.Fatal(err)
	}
	if n := fs.calls.Load(); n != 0 {
		t.Fatalf("%d state calls with the penalty off", n)
	}
}

// TestSuccessWritesOnlyAfterFailures: a right password clears the user's
// failures only when there are some: a plain login reads the state once
// per name and writes nothing.
func TestSuccessWritesOnlyAfterFailures(t *testing.T) {
	e, fs, _, _ := newFaultyEnv(t, throttle.Policy{Base: 2 * time.Second}, 0)
	if _, err := e.login("alice", "alice-pw", addrA); err != nil {
		t.Fatal(err)
	}
	if n := fs.calls.Load(); n != 2 { // Failures of the address and of the user
		t.Fatalf("%d state calls for a login without failures, want 2 reads", n)
	}
	e.login("alice", "wrong", addrA)
	fs.calls.Store(0)
	if _, err := e.login("alice", "alice-pw", addrA); err != nil {
		t.Fatal(err)
	}
	if n := fs.calls.Load(); n != 3 {
		t.Fatalf("%d state calls after a failure, want 2 reads and the clear", n)
	}
	if n, _ := e.gate.limiter.Failures(context.Background(), "", "alice"); n != 0 {
		t.Fatalf("user count after success: %d", n)
	}
}

// TestObserverAndCutDelay: the observer counts a delayed login
// (auth_failures) and a LOGIN-DELAY refusal (login_delay); a login whose
// delay is cut names the result "throttled".
func TestObserverAndCutDelay(t *testing.T) {
	e, _, obs, _ := newFaultyEnv(t, throttle.Policy{Base: 2 * time.Second}, time.Hour)
	if _, err := e.login("alice", "alice-pw", addrA); err != nil {
		t.Fatal(err)
	}
	if _, err := e.login("alice", "alice-pw", addrB); code(err) != backends.CodeLoginDelay {
		t.Fatalf("early login: %v", err)
	}
	if obs.get(ThrottledLoginDelay) != 1 || obs.get(ThrottledFailures) != 0 {
		t.Fatalf("observer: %v", obs.n)
	}
	// bob: the upstream judges the password (pass-through), so only a
	// maildrop without a LOGIN-DELAY claim reaches it.
	e.login("bob", "wrong", addrB) // counted for addrB and bob
	e.login("bob", "wrong", addrB) // waited first: 1 throttled
	if got := obs.get(ThrottledFailures); got != 1 {
		t.Fatalf("auth_failures counted %d, want 1", got)
	}
	e.gate.sleep = func(context.Context, time.Duration) bool { return false }
	_, err := e.login("bob", "bob-pw", addrB)
	var named interface{ LoginResult() string }
	if code(err) != backends.CodeSysTemp || !errors.As(err, &named) || named.LoginResult() != "throttled" {
		t.Fatalf("cut delay: %v", err)
	}
}

func containsLine(log, msg string) bool {
	return strings.Contains(log, `"message":"`+msg+`"`)
}
