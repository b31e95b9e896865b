package oauth

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/lock"
	"github.com/popgate/popgate/internal/testserver/idp"
	"github.com/popgate/popgate/internal/testserver/redis"
)

// redisLock is a cluster's refresh lock on a real Redis (as
// cluster.RefreshLocker builds it).
func redisLock(t *testing.T, rs *redis.Server) *lock.Redis {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{Addr: rs.Addr(), MaxRetries: -1, DisableIdentity: true,
		DialTimeout: time.Second, ReadTimeout: time.Second, WriteTimeout: time.Second})
	t.Cleanup(func() { c.Close() })
	return lock.NewRedis(c, "popgate-test:oauth:", 5*time.Second, zerolog.Nop())
}

func isHeld(err error) bool { return errors.Is(err, lock.ErrHeld) }

// node is a second gateway process: its own custodian and store handle on
// the same (shared-volume) file, the shared Redis lock.
func (f *fixture) node(t *testing.T, l Locker, refreshes *atomic.Int32) *Custodian {
	t.Helper()
	st, err := OpenStore(f.path, f.key)
	if err != nil {
		t.Fatal(err)
	}
	cu, err := New(f.creds, st, Options{Log: zerolog.New(f.log), Now: f.clock.now, RefreshLock: l, LockHeld: isHeld,
		OnRefresh: func(ok bool) {
			if ok {
				refreshes.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	return cu
}

// With a cluster, a refresh waits for the Redis lock of its credential:
// while another node holds it no token request goes out; once it is free,
// the node reads the store again and takes the token the other node
// stored instead of refreshing (one rotation of the refresh token in all).
func TestClusterRefreshLock(t *testing.T) {
	rs := redis.Start(t, redis.Options{})
	f := setup(t, idp.Options{RotateRefresh: true})
	f.enroll(t)
	var refreshes atomic.Int32
	l := redisLock(t, rs)
	a := f.node(t, l, &refreshes)
	b := f.node(t, redisLock(t, rs), &refreshes)
	f.clock.advance(2 * time.Hour) // the enrolled access token has expired

	// "Another node" holds the lock: a's refresh waits, asking nothing.
	release, err := l.TryLock(context.Background(), "gmail-jane")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	var got Token
	go func() {
		var err error
		got, err = a.Token(context.Background(), "gmail-jane")
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the refresh did not wait for the cluster lock: %v", err)
	default:
	}
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 0 {
		t.Fatalf("%d refresh requests while another node held the lock", n)
	}
	// Meanwhile node b (behind the same lock) cannot refresh either; free
	// the lock and let both race: one refresh request, both get its token.
	bdone := make(chan error, 1)
	var gotB Token
	go func() {
		var err error
		gotB, err = b.Token(context.Background(), "gmail-jane")
		bdone <- err
	}()
	release()
	for _, ch := range []chan error{done, bdone} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("no token within 60s after the lock was freed")
		}
	}
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 1 {
		t.Fatalf("two nodes made %d refresh requests, want 1", n)
	}
	if got.AccessToken == "" || got.AccessToken != gotB.AccessToken {
		t.Fatal("the nodes hold different tokens: one did not take the stored one")
	}
	if refreshes.Load() != 1 {
		t.Fatalf("OnRefresh(ok) called %d times, want 1", refreshes.Load())
	}
	assertNoSecrets(t, f.idp.Secrets(), f.log.String())
}

// Many logins on two nodes at once, token expired: one refresh request.
func TestClusterTwoNodesConcurrent(t *testing.T) {
	rs := redis.Start(t, redis.Options{})
	f := setup(t, idp.Options{RotateRefresh: true})
	f.enroll(t)
	var refreshes atomic.Int32
	nodes := []*Custodian{f.node(t, redisLock(t, rs), &refreshes), f.node(t, redisLock(t, rs), &refreshes)}
	f.clock.advance(2 * time.Hour)
	var wg sync.WaitGroup
	errs := make([]error, 40)
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = nodes[i%2].Token(context.Background(), "gmail-jane")
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 1 {
		t.Fatalf("40 logins on two nodes: %d refresh requests, want 1", n)
	}
}

// Redis unreachable: no refresh without the lock. The login gets an error
// (the gateway answers [SYS/TEMP]), the store keeps its token, the log
// says why, and the failure is counted.
func TestClusterRedisDownNoRefresh(t *testing.T) {
	rs := redis.Start(t, redis.Options{})
	f := setup(t, idp.Options{RotateRefresh: true})
	f.enroll(t)
	before, _, err := f.store.Get("gmail-jane")
	if err != nil {
		t.Fatal(err)
	}
	var failed atomic.Int32
	st, err := OpenStore(f.path, f.key)
	if err != nil {
		t.Fatal(err)
	}
	cu, err := New(f.creds, st, Options{Log: zerolog.New(f.log), Now: f.clock.now, RefreshLock: redisLock(t, rs), LockHeld: isHeld,
		LockWait: 5 * time.Second, OnRefresh: func(ok bool) {
			if !ok {
				failed.Add(1)
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	rs.Stop()
	f.clock.advance(2 * time.Hour)
	_, err = cu.Token(context.Background(), "gmail-jane")
	if err == nil || !strings.Contains(err.Error(), "refresh lock") {
		t.Fatalf("Token with Redis down: %v, want a refresh lock error", err)
	}
	if n := f.idp.Requests(idp.GrantRefreshToken); n != 0 {
		t.Fatalf("%d refresh requests without the cluster lock", n)
	}
	after, _, _ := f.store.Get("gmail-jane")
	if after.RefreshToken != before.RefreshToken || after.AccessToken != before.AccessToken {
		t.Fatal("the stored token changed")
	}
	if failed.Load() != 1 || !strings.Contains(f.log.String(), "oauth token refresh failed") {
		t.Fatalf("failed refreshes counted %d; log:\n%s", failed.Load(), f.log.String())
	}
	assertNoSecrets(t, f.idp.Secrets(), f.log.String(), err.Error())
}
