package cluster_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/cluster"
	"github.com/popgate/popgate/internal/lock"
	"github.com/popgate/popgate/internal/testserver/redis"
	"github.com/popgate/popgate/internal/testutil"
)

func newNode(t *testing.T, srv *redis.Server) *cluster.Cluster {
	t.Helper()
	c, err := cluster.New(cluster.Options{Address: srv.Addr(), Password: "pw", DB: 3, KeyPrefix: "pg:", LockLease: 3 * time.Second, Timeout: time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestSharedState: two nodes see one another's failure counts, LOGIN-DELAY
// claims and locks.
func TestSharedState(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	a, b := newNode(t, srv), newNode(t, srv)
	ctx := context.Background()
	if err := a.Check(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		n, err := a.Store().AddFailure(ctx, "fail:user:alice", time.Minute)
		if err != nil || n != i {
			t.Fatalf("AddFailure #%d: %d %v", i, n, err)
		}
	}
	if n, err := b.Store().Failures(ctx, "fail:user:alice"); err != nil || n != 3 {
		t.Fatalf("the other node sees %d %v, want 3", n, err)
	}
	if n, err := b.Store().Failures(ctx, "fail:user:bob"); err != nil || n != 0 {
		t.Fatalf("unknown key: %d %v", n, err)
	}
	// Several failures in one script, each key with its expiry.
	if ns, err := a.Store().AddFailuresOf(ctx, time.Minute, "fail:addr:192.0.2.8", "fail:user:carol"); err != nil || len(ns) != 2 || ns[0] != 1 || ns[1] != 1 {
		t.Fatalf("AddFailuresOf: %v %v, want [1 1]", ns, err)
	}
	if ns, err := b.Store().AddFailuresOf(ctx, time.Minute, "fail:addr:192.0.2.8", "fail:user:carol"); err != nil || len(ns) != 2 || ns[0] != 2 || ns[1] != 2 {
		t.Fatalf("AddFailuresOf on the other node: %v %v, want [2 2]", ns, err)
	}
	// One round trip for several counts (MGET), absent keys 0.
	if ns, err := b.Store().FailuresOf(ctx, "fail:addr:192.0.2.9", "fail:user:alice"); err != nil || len(ns) != 2 || ns[0] != 0 || ns[1] != 3 {
		t.Fatalf("FailuresOf: %v %v, want [0 3]", ns, err)
	}
	if err := b.Store().ClearFailures(ctx, "fail:user:alice"); err != nil {
		t.Fatal(err)
	}
	if n, _ := a.Store().Failures(ctx, "fail:user:alice"); n != 0 {
		t.Fatalf("after ClearFailures: %d", n)
	}

	if left, err := a.Store().ClaimLogin(ctx, "login:alice", time.Minute); err != nil || left != 0 {
		t.Fatalf("first claim: %v %v", left, err)
	}
	left, err := b.Store().ClaimLogin(ctx, "login:alice", time.Minute)
	if err != nil || left <= 0 || left > time.Minute {
		t.Fatalf("second claim on the other node: %v %v, want the time left", left, err)
	}
	if err := b.Store().ReleaseLogin(ctx, "login:alice"); err != nil {
		t.Fatal(err)
	}
	if left, err := a.Store().ClaimLogin(ctx, "login:alice", time.Minute); err != nil || left != 0 {
		t.Fatalf("claim after release: %v %v", left, err)
	}

	rel, err := a.Locker().TryLock(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Locker().TryLock(ctx, "alice"); !errors.Is(err, lock.ErrHeld) {
		t.Fatalf("lock on the other node: %v", err)
	}
	rel()
}

// TestFailuresExpire: failure counts have an expiry (no key lives forever).
func TestFailuresExpire(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	a := newNode(t, srv)
	ctx := context.Background()
	if _, err := a.Store().AddFailure(ctx, "fail:addr:192.0.2.1", 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Store().AddFailuresOf(ctx, 100*time.Millisecond, "fail:addr:192.0.2.2", "fail:user:dave"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ns, err := a.Store().FailuresOf(ctx, "fail:addr:192.0.2.1", "fail:addr:192.0.2.2", "fail:user:dave")
		if err != nil {
			t.Fatal(err)
		}
		if ns[0] == 0 && ns[1] == 0 && ns[2] == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the failure count never expired")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestUnreachable: with Redis down, Check and the state report errors
// (the caller answers [SYS/TEMP]) and recover when Redis is back.
func TestUnreachable(t *testing.T) {
	srv := redis.Start(t, redis.Options{Password: "pw"})
	a := newNode(t, srv)
	ctx := context.Background()
	srv.Stop()
	if err := a.Check(ctx); err == nil || !strings.Contains(err.Error(), "redis unreachable") {
		t.Fatalf("Check with Redis down: %v", err)
	}
	if _, err := a.Store().Failures(ctx, "k"); err == nil {
		t.Fatal("Failures with Redis down: no error")
	}
	if _, err := a.Locker().TryLock(ctx, "alice"); err == nil || errors.Is(err, lock.ErrHeld) {
		t.Fatalf("TryLock with Redis down: %v", err)
	}
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := a.Check(ctx); err != nil {
		t.Fatalf("Check after Redis is back: %v", err)
	}
}

func TestBadCAFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(f, []byte("not a certificate"), 0o600)
	if _, err := cluster.New(cluster.Options{Address: "127.0.0.1:1", TLS: true, CAFile: f}, zerolog.Nop()); err == nil || !strings.Contains(err.Error(), "cluster.redis.ca_file") {
		t.Fatalf("New with a bad CA file: %v", err)
	}
}

// TestTLS: cluster.redis.tls with ca_file and server_name reaches a Redis
// that only speaks TLS; a wrong server_name is refused.
func TestTLS(t *testing.T) {
	cert, err := testutil.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := cert.WriteFiles(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := redis.Start(t, redis.Options{Password: "pw", CertFile: certFile, KeyFile: keyFile})
	ctx := context.Background()
	c, err := cluster.New(cluster.Options{Address: srv.Addr(), Password: "pw", TLS: true, CAFile: certFile, ServerName: "localhost", KeyPrefix: "pg:", Timeout: 2 * time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Check(ctx); err != nil {
		t.Fatalf("TLS: %v", err)
	}
	// Without server_name the host of the address (127.0.0.1) is verified.
	byAddr, err := cluster.New(cluster.Options{Address: srv.Addr(), Password: "pw", TLS: true, CAFile: certFile}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer byAddr.Close()
	if err := byAddr.Check(ctx); err != nil {
		t.Fatalf("TLS verified against the address: %v", err)
	}
	rel, err := c.Locker().TryLock(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	rel()
	bad, err := cluster.New(cluster.Options{Address: srv.Addr(), Password: "pw", TLS: true, CAFile: certFile, ServerName: "redis.example.com", Timeout: 2 * time.Second}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	if err := bad.Check(ctx); err == nil {
		t.Fatal("a certificate for another name was accepted")
	}
}
