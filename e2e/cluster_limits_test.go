package e2e

// The login state shared through Redis (issue 12): failure counts and
// LOGIN-DELAY claims made on one node hold on the others; Redis
// unreachable refuses logins before their password is checked.

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// clusterLimitsShared: a failure delay (1s, doubling up to 2s) and a login
// delay of an hour, so that a second login to one maildrop is refused
// during the test.
const clusterLimitsShared = `auth:
  allow_plaintext: true
  failure_delay: 1s
  failure_max_delay: 2s
session:
  command_timeout: 120s
  login_timeout: 5m
  login_delay: 1h
`

// TestClusterSharedLimits: three nodes behind HAProxy on one Redis.
//   - a wrong password through node A makes the next login of that name
//     through node B (from another address) wait the failure delay before
//     its password is checked; B counts it in
//     popgate_throttled_logins_total{reason="auth_failures"};
//   - a login through node A claims LOGIN-DELAY: an early login through
//     node B, and through HAProxy to any node, gets -ERR [LOGIN-DELAY],
//     counted as login_delay in both metrics;
//   - the Redis keys expire;
//   - Redis stopped: a login gets -ERR [SYS/TEMP] before its password is
//     checked, and the node logs why.
func TestClusterSharedLimits(t *testing.T) {
	c := startClusterWith(t, 3, "30s", clusterLimitsShared)
	a, b := c.nodes[0], c.nodes[1]
	rc := goredis.NewClient(&goredis.Options{Addr: c.redis.Addr(), Password: clusterRedisPassword})
	defer rc.Close()
	ctx := context.Background()

	// Failure penalty across nodes.
	pass := newUser(t, "penalty")
	appendAll(t, "penalty", [][]byte{[]byte("Subject: p\r\n\r\npenalty\r\n")})
	p := dialNode(t, a, "203.0.113.1")
	p.cmd("USER penalty")
	if l := p.cmd("PASS wrong-password"); !strings.HasPrefix(l, "-ERR [AUTH]") {
		t.Fatalf("wrong password through A: %q", l)
	}
	p.cmd("QUIT")
	for _, k := range []string{"e2e:throttle:fail:user:penalty", "e2e:throttle:fail:addr:203.0.113.1"} {
		n, err := rc.Get(ctx, k).Int()
		ttl, err2 := rc.PTTL(ctx, k).Result()
		if err != nil || err2 != nil || n != 1 || ttl <= 0 || ttl > 15*time.Minute {
			t.Fatalf("Redis %s = %d (%v), TTL %v (%v): want 1 with an expiry", k, n, err, ttl, err2)
		}
	}
	q := dialNode(t, b, "203.0.113.2")
	q.cmd("USER penalty")
	if l := q.cmd("PASS %s", pass); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("right password through B after a failure through A: %q", l)
	}
	q.cmd("QUIT")
	if v := b.metric(t, `popgate_throttled_logins_total{reason="auth_failures"}`); v != 1 {
		t.Fatalf("B: throttled auth_failures = %v, want 1 (the failure counted on A)", v)
	}
	if !regexp.MustCompile(`"failures":1,[^\n]*"message":"failure delay before the credentials are checked"`).MatchString(b.log(t)) {
		t.Fatalf("B's log does not show the 1s failure delay")
	}
	if v := a.metric(t, `popgate_throttled_logins_total{reason="auth_failures"}`); v != 0 {
		t.Fatalf("A: throttled auth_failures = %v, want 0", v)
	}
	if v := a.metric(t, `popgate_logins_total{result="auth"}`); v != 1 {
		t.Fatalf("A: auth = %v, want 1", v)
	}
	// The success on B cleared the name's count for every node; the
	// address's count stays (an address guessing names stays slowed).
	if n, err := rc.Exists(ctx, "e2e:throttle:fail:user:penalty").Result(); err != nil || n != 0 {
		t.Fatalf("the name's failure count after the success: %d %v", n, err)
	}

	// LOGIN-DELAY across nodes.
	pass = newUser(t, "logindelay")
	appendAll(t, "logindelay", [][]byte{[]byte("Subject: l\r\n\r\nlogin delay\r\n")})
	p = dialNode(t, a, "203.0.113.3")
	p.cmd("USER logindelay")
	if l := p.cmd("PASS %s", pass); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("first login through A: %q", l)
	}
	if l := p.cmd("QUIT"); !strings.HasPrefix(l, "+OK") {
		t.Fatal(l)
	}
	ttl, err := rc.PTTL(ctx, "e2e:throttle:login:dovecot/logindelay").Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("LOGIN-DELAY key TTL %v %v, want within 1h", ttl, err)
	}
	q = dialNode(t, b, "203.0.113.4")
	q.cmd("USER logindelay")
	if l := q.cmd("PASS %s", pass); !strings.HasPrefix(l, "-ERR [LOGIN-DELAY]") {
		t.Fatalf("early login through B: %q, want -ERR [LOGIN-DELAY]", l)
	}
	q.cmd("QUIT")
	const viaLB = 6
	for i := range viaLB {
		r := dialPOP3(t, fmt.Sprintf("127.0.7.%d", i+1), c.hap.Addr())
		r.cmd("USER logindelay")
		if l := r.cmd("PASS %s", pass); !strings.HasPrefix(l, "-ERR [LOGIN-DELAY]") {
			t.Fatalf("early login through HAProxy: %q, want -ERR [LOGIN-DELAY]", l)
		}
		r.cmd("QUIT")
	}
	var refused, throttled float64
	for _, nd := range c.nodes {
		refused += nd.metric(t, `popgate_logins_total{result="login_delay"}`)
		throttled += nd.metric(t, `popgate_throttled_logins_total{reason="login_delay"}`)
	}
	if refused != viaLB+1 || throttled != viaLB+1 {
		t.Fatalf("login_delay counted %v (logins) and %v (throttled) over the nodes, want %d", refused, throttled, viaLB+1)
	}
	if v := b.metric(t, `popgate_logins_total{result="login_delay"}`); v < 1 {
		t.Fatalf("B: login_delay = %v", v)
	}
	if v := a.metric(t, `popgate_logins_total{result="ok"}`); v != 1 {
		t.Fatalf("A: ok = %v, want 1", v)
	}

	// Redis unreachable: refused before the password is checked.
	c.redis.Stop()
	q = dialNode(t, b, "203.0.113.5")
	q.cmd("USER penalty")
	if l := q.cmd("PASS %s", pass); !strings.HasPrefix(l, "-ERR [SYS/TEMP]") {
		t.Fatalf("login with Redis down: %q, want -ERR [SYS/TEMP]", l)
	}
	eventually(t, "B logs why", func() bool {
		return strings.Contains(b.log(t), "login state unavailable (failure counts): login refused")
	})
	if err := c.redis.Resume(); err != nil {
		t.Fatal(err)
	}
	c.waitUp(t, len(c.nodes))
}
