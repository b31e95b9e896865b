package lock_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/lock"
	"github.com/popgate/popgate/internal/testserver/redis"
)

// node is one gateway process's view: its own client and locker.
func node(t *testing.T, srv *redis.Server, lease time.Duration) *lock.Redis {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "pw", MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	return lock.NewRedis(c, "test:", lease, zerolog.Nop())
}

func TestRedisExclusiveAcrossNodes(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	a, b := node(t, srv, 3*time.Second), node(t, srv, 3*time.Second)
	ctx := context.Background()

	// 50 racing attempts from two nodes: exactly one wins.
	var wins atomic.Int32
	var mu sync.Mutex
	var held []func()
	var wg sync.WaitGroup
	for i := range 50 {
		l := a
		if i%2 == 1 {
			l = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rel, err := l.TryLock(ctx, "alice")
			if errors.Is(err, lock.ErrHeld) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			wins.Add(1)
			mu.Lock()
			held = append(held, rel)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d winners, want 1", wins.Load())
	}
	if _, err := a.TryLock(ctx, "bob"); err != nil {
		t.Fatalf("another key: %v", err)
	}
	held[0]()
	held[0]() // twice is harmless
	rel, err := b.TryLock(ctx, "alice")
	if err != nil {
		t.Fatalf("after release: %v", err)
	}
	rel()
}

// TestRedisRenewal: a held lock outlives its lease while the holder lives.
func TestRedisRenewal(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	lease := 300 * time.Millisecond
	a, b := node(t, srv, lease), node(t, srv, lease)
	h, err := a.Acquire(context.Background(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Release()
	time.Sleep(4 * lease) // several leases: the renewal keeps it
	if _, err := b.TryLock(context.Background(), "alice"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("other node after 4 leases: %v, want ErrHeld", err)
	}
	if _, err := h.Confirm(context.Background(), time.Second); err != nil {
		t.Fatalf("Confirm: %v", err)
	}
}

// TestRedisDeadHolderExpires: a holder that disappears without releasing
// (its process killed) frees the key after the lease.
func TestRedisDeadHolderExpires(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	lease := 300 * time.Millisecond
	dead := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "pw"})
	if err := dead.Set(context.Background(), "test:lock:alice", "token-of-a-dead-process", lease).Err(); err != nil {
		t.Fatal(err)
	}
	dead.Close()
	b := node(t, srv, lease)
	if _, err := b.TryLock(context.Background(), "alice"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("before the lease ran out: %v, want ErrHeld", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rel, err := b.TryLock(context.Background(), "alice")
		if err == nil {
			rel()
			return
		}
		if !errors.Is(err, lock.ErrHeld) || time.Now().After(deadline) {
			t.Fatalf("after the lease: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestRedisConfirmAfterTakeover: a session whose key was taken over (its
// lease expired while it was paused) cannot confirm, and its Release does
// not free the new holder's lock.
func TestRedisConfirmAfterTakeover(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	a, b := node(t, srv, 3*time.Second), node(t, srv, 3*time.Second)
	ctx := context.Background()
	h, err := a.Acquire(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	// The lease "expires" (as after a long pause) and b takes the key.
	raw := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "pw"})
	defer raw.Close()
	raw.Del(ctx, "test:lock:alice")
	hb, err := b.Acquire(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.Confirm(ctx, time.Second); !errors.Is(err, lock.ErrLost) {
		t.Fatalf("Confirm of the old holder: %v, want ErrLost", err)
	}
	h.Release()
	if _, err := a.TryLock(ctx, "alice"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("the old holder's Release freed the new holder's lock: %v", err)
	}
	until, err := hb.Confirm(ctx, 10*time.Second)
	if err != nil || until.IsZero() {
		t.Fatalf("new holder Confirm: %v %v", until, err)
	}
	if ttl := raw.PTTL(ctx, "test:lock:alice").Val(); ttl <= 3*time.Second {
		t.Fatalf("Confirm(10s) left a TTL of %v", ttl)
	}
	hb.Release()
}

// TestRedisUnreachable: with Redis down there is no lock (an error that is
// not ErrHeld) and a held lock cannot be confirmed; after Redis is back
// locks work again.
func TestRedisUnreachable(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	a := node(t, srv, 3*time.Second)
	ctx := context.Background()
	h, err := a.Acquire(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if _, err := h.Confirm(ctx, time.Second); err == nil {
		t.Fatal("Confirm succeeded with Redis down")
	}
	if _, err := a.TryLock(ctx, "bob"); err == nil || errors.Is(err, lock.ErrHeld) {
		t.Fatalf("TryLock with Redis down: %v, want a Redis error", err)
	}
	h.Release() // must not hang
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	rel, err := a.TryLock(ctx, "bob")
	if err != nil {
		t.Fatalf("after Redis is back: %v", err)
	}
	rel()
}

func TestAcquireLocal(t *testing.T) {
	l := lock.NewLocal()
	h, err := lock.Acquire(context.Background(), l, "k")
	if err != nil {
		t.Fatal(err)
	}
	if until, err := h.Confirm(context.Background(), time.Second); err != nil || !until.IsZero() {
		t.Fatalf("Confirm of a local lock: %v %v", until, err)
	}
	if _, err := lock.Acquire(context.Background(), l, "k"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("second Acquire: %v", err)
	}
	h.Release()
	if l.Held("k") {
		t.Fatal("still held after Release")
	}
}

// BenchmarkRedisLogin measures what the shared lock adds to one POP3
// session on a loopback Redis: Acquire at login, Confirm before the commit,
// Release at the end, and reports the round trips per session: every lock
// operation is one script call (EVALSHA), counted by Redis's own INFO
// commandstats.
//
//	go test -run '^$' -bench Login -benchtime 2000x ./internal/lock
func BenchmarkRedisLogin(b *testing.B) {
	srv, err := redis.New(redis.Options{Password: "pw"})
	if errors.Is(err, redis.ErrNotInstalled) {
		b.Skip(err)
	}
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr(), Password: "pw"})
	defer c.Close()
	l := lock.NewRedis(c, "bench:", 30*time.Second, zerolog.Nop())
	ctx := context.Background()
	for _, commit := range []bool{false, true} {
		name := "login-quit"
		if commit {
			name = "login-dele-quit"
		}
		b.Run(name, func(b *testing.B) {
			h, _ := l.Acquire(ctx, "warm") // loads the scripts
			h.Release()
			before := redisCalls(b, c)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				h, err := l.Acquire(ctx, "alice")
				if err != nil {
					b.Fatal(err)
				}
				if commit {
					if _, err := h.Confirm(ctx, time.Minute); err != nil {
						b.Fatal(err)
					}
				}
				h.Release()
			}
			b.StopTimer()
			b.ReportMetric(float64(redisCalls(b, c)-before)/float64(b.N), "round-trips/op")
		})
	}
}

// redisCalls is the number of script calls (EVAL, EVALSHA) Redis counted.
func redisCalls(b *testing.B, c *goredis.Client) int64 {
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_evalsha:") && !strings.HasPrefix(line, "cmdstat_eval:") {
			continue
		}
		_, rest, _ := strings.Cut(line, ":calls=")
		n, _, _ := strings.Cut(rest, ",")
		v, _ := strconv.ParseInt(n, 10, 64)
		total += v
	}
	return total
}

func BenchmarkLocalLogin(b *testing.B) {
	l := lock.NewLocal()
	ctx := context.Background()
	for i := 0; i < b.N; i++ {
		h, err := lock.Acquire(ctx, l, "alice")
		if err != nil {
			b.Fatal(err)
		}
		h.Release()
	}
}
