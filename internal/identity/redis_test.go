package identity

// The gate on the shared login state of a cluster (issue 12): two gates
// ("nodes") on one private Redis through internal/cluster.Store.

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/cluster"
	"github.com/popgate/popgate/internal/testserver/redis"
	"github.com/popgate/popgate/internal/throttle"
)

// countObserver counts Throttled events by reason.
type countObserver struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *countObserver) Throttled(reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.n == nil {
		o.n = map[string]int{}
	}
	o.n[reason]++
}

func (o *countObserver) get(reason string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n[reason]
}

// syncBuf is a log sink safe for concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is one gateway's gate on the shared Redis, in front of the shared
// in-memory store.
type node struct {
	gate  *Gate
	obs   *countObserver
	log   *syncBuf
	clu   *cluster.Cluster
	mu    sync.Mutex
	slept []time.Duration
}

func (n *node) sleeps() []time.Duration {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.slept
	n.slept = nil
	return s
}

func newRedisNode(t testing.TB, srv *redis.Server, store backends.Backend, policy throttle.Policy, loginDelay time.Duration) *node {
	t.Helper()
	c, err := cluster.New(cluster.Options{Address: srv.Addr(), Password: "pw", KeyPrefix: "pg:", LockLease: 30 * time.Second, Timeout: 2 * time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rt, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": store}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	n := &node{obs: &countObserver{}, log: &syncBuf{}, clu: c}
	n.gate = New(Options{Upstream: rt, Store: c.Store(), Policy: policy, LoginDelay: loginDelay,
		Logger: zerolog.New(n.log), Observer: n.obs})
	n.gate.sleep = func(_ context.Context, d time.Duration) bool {
		if d > 0 {
			n.mu.Lock()
			n.slept = append(n.slept, d)
			n.mu.Unlock()
		}
		return true
	}
	return n
}

func (n *node) login(user, pass string, from string) (backends.Mailbox, error) {
	addr := addrA
	if from == "B" {
		addr = addrB
	}
	mb, err := n.gate.Login(context.Background(), backends.Credentials{Username: user, Password: pass, Mechanism: "USER", RemoteAddr: addr})
	if mb != nil {
		mb.Close()
	}
	return mb, err
}

// TestRedisSharedPenaltyAndLoginDelay: failures counted through node A
// delay the next login of that name through node B (from another
// address); a login through A claims LOGIN-DELAY, which refuses an early
// login through B; the state keys expire.
func TestRedisSharedPenaltyAndLoginDelay(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	store := memory.New()
	store.AddUser("alice", "alice-pw")
	store.AddUser("bob", "bob-pw")
	policy := throttle.Policy{Base: 2 * time.Second, Max: 15 * time.Second}
	a := newRedisNode(t, srv, store, policy, 0)
	b := newRedisNode(t, srv, store, policy, 0)

	for range 2 {
		if _, err := a.login("alice", "wrong", "A"); code(err) != backends.CodeAuth {
			t.Fatalf("wrong password on A: %v", err)
		}
	}
	if s := a.sleeps(); len(s) != 3 { // answer 1; delay before 2, answer 2
		t.Fatalf("sleeps on A: %v", s)
	}
	// B, another address: alice's two failures (from A) earn 4s before
	// the password is checked; the right one then works.
	if _, err := b.login("alice", "alice-pw", "B"); err != nil {
		t.Fatalf("right password on B: %v", err)
	}
	if s := b.sleeps(); len(s) != 1 || s[0] != 4*time.Second {
		t.Fatalf("B waited %v, want [4s] (the failures of node A)", s)
	}
	if got := b.obs.get(ThrottledFailures); got != 1 {
		t.Fatalf("B counted %d throttled logins, want 1", got)
	}
	// The success on B cleared alice's count for A too.
	if _, err := a.login("alice", "alice-pw", "B"); err != nil {
		t.Fatal(err)
	}
	if s := a.sleeps(); len(s) != 0 {
		t.Fatalf("A waited %v after the success on B, want nothing", s)
	}
	// Expiry: every failure key carries a TTL of the quiet time.
	rc := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "pw"})
	defer rc.Close()
	ttl, err := rc.PTTL(context.Background(), "pg:throttle:fail:addr:"+addrA.IP.String()).Result()
	if err != nil || ttl <= 0 || ttl > throttle.DefaultQuiet {
		t.Fatalf("TTL of the address's failure key: %v %v", ttl, err)
	}

	// LOGIN-DELAY across nodes.
	la := newRedisNode(t, srv, store, policy, time.Hour)
	lb := newRedisNode(t, srv, store, policy, time.Hour)
	if _, err := la.login("bob", "bob-pw", "A"); err != nil {
		t.Fatal(err)
	}
	_, err = lb.login("bob", "bob-pw", "B")
	if code(err) != backends.CodeLoginDelay {
		t.Fatalf("early login on the other node: %v, want [LOGIN-DELAY]", err)
	}
	if got := lb.obs.get(ThrottledLoginDelay); got != 1 {
		t.Fatalf("login_delay counted %d, want 1", got)
	}
	ttl, err = rc.PTTL(context.Background(), "pg:throttle:login:corp/bob").Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("TTL of the LOGIN-DELAY key: %v %v", ttl, err)
	}
}

// TestRedisDownFailsClosed: with Redis stopped, a login is refused with
// [SYS/TEMP] before its credentials are checked or the upstream is asked,
// the log names the problem, and nothing crashes; with LOGIN-DELAY on,
// the same. When Redis is back logins work again.
func TestRedisDownFailsClosed(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	store := memory.New()
	store.AddUser("alice", "alice-pw")
	up := &counting{Backend: store}
	policy := throttle.Policy{Base: 2 * time.Second, Max: 15 * time.Second}
	a := newRedisNode(t, srv, up, policy, 0)
	ld := newRedisNode(t, srv, up, throttle.Policy{}, time.Hour) // penalty off, LOGIN-DELAY on
	if _, err := a.login("alice", "alice-pw", "A"); err != nil {
		t.Fatal(err)
	}
	before := up.calls.Load()
	srv.Stop()
	for _, pw := range []string{"alice-pw", "wrong"} {
		_, err := a.login("alice", pw, "A")
		if c, text := backends.ClientError(err); c != backends.CodeSysTemp || strings.Contains(text, "pw") {
			t.Fatalf("login with Redis down: %v, want [SYS/TEMP]", err)
		}
	}
	if _, err := ld.login("alice", "alice-pw", "A"); code(err) != backends.CodeSysTemp {
		t.Fatalf("login with LOGIN-DELAY and Redis down: %v, want [SYS/TEMP]", err)
	}
	if n := up.calls.Load() - before; n != 0 {
		t.Fatalf("the upstream was asked %d times with Redis down", n)
	}
	for _, want := range []string{"login state unavailable (failure counts): login refused"} {
		if !strings.Contains(a.log.String(), want) {
			t.Fatalf("log of A lacks %q:\n%s", want, a.log.String())
		}
	}
	if !strings.Contains(ld.log.String(), "login state unavailable (LOGIN-DELAY): login refused") {
		t.Fatalf("log lacks the LOGIN-DELAY problem:\n%s", ld.log.String())
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.login("alice", "alice-pw", "A"); err != nil {
		t.Fatalf("login with Redis back: %v", err)
	}
}
