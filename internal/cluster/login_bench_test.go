package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/cluster"
	"github.com/popgate/popgate/internal/identity"
	"github.com/popgate/popgate/internal/lock"
	"github.com/popgate/popgate/internal/testserver/redis"
	"github.com/popgate/popgate/internal/throttle"
)

// roundTrips counts the requests a client sends: one per command, one per
// pipeline.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (r *roundTrips) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmd)
	}
}
func (r *roundTrips) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		r.n.Add(1)
		return next(ctx, cmds)
	}
}

var benchRun atomic.Int64

// BenchmarkLogin measures what the login state and the maildrop lock add
// to a successful login, as proxy.login runs it: identity.Gate.Login
// (failure counts with auth.failure_delay 2s, the LOGIN-DELAY claim when
// session.login_delay is set, the upstream login on an in-memory store),
// then lock.Acquire, and Release as at the end of the session. "memory" is
// a node without a cluster section; "redis" the cluster's shared state on
// a private Redis over loopback, reporting the Redis round trips per
// login.
func BenchmarkLogin(b *testing.B) {
	srv, err := redis.New(redis.Options{Password: "pw"})
	if errors.Is(err, redis.ErrNotInstalled) {
		b.Skip(err)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	policy := throttle.Policy{Base: 2 * time.Second, Max: 15 * time.Second}
	from := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000}
	for _, st := range []string{"memory", "redis"} {
		for _, ld := range []time.Duration{0, time.Hour} {
			b.Run(fmt.Sprintf("%s/login_delay=%v", st, ld), func(b *testing.B) {
				store := memory.New()
				users := make([]string, b.N+1)
				for i := range users {
					users[i] = "user" + strconv.Itoa(i)
					store.AddUser(users[i], "pw-"+users[i])
				}
				rt, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": store}, zerolog.Nop())
				if err != nil {
					b.Fatal(err)
				}
				var locker lock.Locker = lock.NewLocal()
				var state throttle.Store = throttle.NewMemory(0)
				rts := &roundTrips{}
				if st == "redis" {
					c, err := cluster.New(cluster.Options{Address: srv.Addr(), Password: "pw",
						KeyPrefix: fmt.Sprintf("bench%d:", benchRun.Add(1)), LockLease: 30 * time.Second}, zerolog.Nop())
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					c.AddHook(rts)
					locker, state = c.Locker(), c.Store()
				}
				g := identity.New(identity.Options{Upstream: rt, Store: state, Policy: policy, LoginDelay: ld, Logger: zerolog.Nop()})
				ctx := context.Background()
				login := func(user string) {
					mb, err := g.Login(ctx, backends.Credentials{Username: user, Password: "pw-" + user, Mechanism: "USER", RemoteAddr: from})
					if err != nil {
						b.Fatal(err)
					}
					h, err := lock.Acquire(ctx, locker, backends.MaildropID(mb, backends.Credentials{Username: user}))
					if err != nil {
						b.Fatal(err)
					}
					h.Release()
					mb.Close()
				}
				login(users[b.N]) // warm: connection, scripts loaded
				before := rts.n.Load()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					login(users[i]) // a user each: LOGIN-DELAY never refuses
				}
				b.StopTimer()
				b.ReportMetric(float64(rts.n.Load()-before)/float64(b.N), "round-trips/op")
			})
		}
	}
}

// TestLoginRoundTrips pins the Redis round trips of the README's table
// "What a login costs": a plain login 3 (failure counts, lock, release),
// with a login delay 4, a wrong password 2 (counts, one INCR+PEXPIRE
// script for the address and the name), a right password after
// failures 4 (the clear added), and with the penalty off 2 (the lock).
func TestLoginRoundTrips(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	from := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000}
	store := memory.New()
	for _, u := range []string{"plain", "delayed", "failing", "nopenalty"} {
		store.AddUser(u, "pw-"+u)
	}
	rt, err := backends.NewRouter([]backends.Route{{Match: "*", Backend: "corp"}}, map[string]backends.Backend{"corp": store}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	c := newNode(t, srv)
	rts := &roundTrips{}
	c.AddHook(rts)
	ctx := context.Background()
	// A failure delay of 1ms: counted like the default, hardly waited.
	on := throttle.Policy{Base: time.Millisecond, Max: time.Millisecond}
	count := func(policy throttle.Policy, loginDelay time.Duration, user, pass string, wantErr bool) int64 {
		t.Helper()
		g := identity.New(identity.Options{Upstream: rt, Store: c.Store(), Policy: policy, LoginDelay: loginDelay, Logger: zerolog.Nop()})
		before := rts.n.Load()
		mb, err := g.Login(ctx, backends.Credentials{Username: user, Password: pass, Mechanism: "USER", RemoteAddr: from})
		if wantErr {
			if err == nil {
				t.Fatalf("%s: login succeeded", user)
			}
			return rts.n.Load() - before
		}
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		h, err := lock.Acquire(ctx, c.Locker(), backends.MaildropID(mb, backends.Credentials{Username: user}))
		if err != nil {
			t.Fatal(err)
		}
		h.Release()
		mb.Close()
		return rts.n.Load() - before
	}
	// Load the scripts (a script's first run costs a NOSCRIPT round trip
	// more, once per Redis).
	count(on, 0, "plain", "pw-plain", false)
	c.Store().AddFailuresOf(ctx, time.Second, "warm")
	c.Store().ClaimLogin(ctx, "warm", time.Second)
	for _, k := range []string{"fail:addr:192.0.2.1", "fail:user:plain"} {
		c.Store().ClearFailures(ctx, k)
	}
	for _, tc := range []struct {
		name       string
		policy     throttle.Policy
		loginDelay time.Duration
		user, pass string
		wantErr    bool
		want       int64
	}{
		{"plain login", on, 0, "plain", "pw-plain", false, 3},
		{"login with a login delay", on, time.Hour, "delayed", "pw-delayed", false, 4},
		{"wrong password", on, 0, "failing", "wrong", true, 2},
		{"right password after a failure", on, 0, "failing", "pw-failing", false, 4},
		{"penalty off", throttle.Policy{}, 0, "nopenalty", "pw-nopenalty", false, 2},
	} {
		if got := count(tc.policy, tc.loginDelay, tc.user, tc.pass, tc.wantErr); got != tc.want {
			t.Errorf("%s: %d round trips, want %d", tc.name, got, tc.want)
		}
	}
}
