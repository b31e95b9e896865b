package proxy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/lock"
)

// leaser is a lock.Leaser whose Confirm answer the test sets, and which
// records what was asked of it.
type leaser struct {
	mu         sync.Mutex
	local      *lock.Local
	confirmErr error
	holds      []time.Duration
}

func (l *leaser) TryLock(ctx context.Context, key string) (func(), error) {
	return l.local.TryLock(ctx, key)
}

func (l *leaser) Acquire(ctx context.Context, key string) (lock.Held, error) {
	rel, err := l.local.TryLock(ctx, key)
	if err != nil {
		return nil, err
	}
	return &leased{l: l, release: rel}, nil
}

type leased struct {
	l       *leaser
	release func()
}

func (h *leased) Release() { h.release() }

func (h *leased) Confirm(_ context.Context, hold time.Duration) (time.Time, error) {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	h.l.holds = append(h.l.holds, hold)
	if h.l.confirmErr != nil {
		return time.Time{}, h.l.confirmErr
	}
	return time.Now().Add(hold), nil
}

// TestCommitNeedsConfirmedLock: a session whose lease cannot be confirmed
// at QUIT deletes nothing, answers -ERR [SYS/TEMP] and logs why; with the
// lease confirmed (for longer than the command timeout) the commit happens.
func TestCommitNeedsConfirmedLock(t *testing.T) {
	l := &leaser{local: lock.NewLocal(), confirmErr: lock.ErrLost}
	e := newEnv(t, envConfig{opts: func(o *Options) {
		o.Locker = l
		o.CommandTimeout = 7 * time.Second
	}})
	e.be.Append("alice", []byte("Subject: one\r\n\r\nbody\r\n"))
	e.be.Append("alice", []byte("Subject: two\r\n\r\nbody\r\n"))

	c := e.login("alice", "secret pw")
	c.CmdPrefix("DELE 1", "+OK")
	c.CmdPrefix("QUIT", "-ERR [SYS/TEMP]")
	c.ExpectClosed()
	if n := e.be.CommitCalls(); n != 0 {
		t.Fatalf("%d commits after a lost lease, want 0", n)
	}
	if len(e.be.UIDLs("alice")) != 2 {
		t.Fatal("a message was deleted")
	}
	eventually(t, "the log says why", func() bool {
		return strings.Contains(e.logs.String(), "maildrop lock could not be confirmed: nothing committed")
	})
	eventually(t, "the lock is free again", func() bool { return !l.local.Held("memory:alice") })

	l.mu.Lock()
	l.confirmErr = nil
	l.mu.Unlock()
	c = e.login("alice", "secret pw")
	c.CmdPrefix("DELE 1", "+OK")
	c.CmdPrefix("QUIT", "+OK")
	if len(e.be.UIDLs("alice")) != 1 {
		t.Fatal("the confirmed commit did not delete")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.holds) != 2 || l.holds[1] <= 7*time.Second {
		t.Fatalf("Confirm holds %v, want more than the command timeout", l.holds)
	}
}

// TestLockStoreDownAtLogin: a lock store that cannot be reached gives
// -ERR [SYS/TEMP], never an unlocked session.
func TestLockStoreDownAtLogin(t *testing.T) {
	e := newEnv(t, envConfig{opts: func(o *Options) { o.Locker = failingLocker{} }})
	c := e.dialReady()
	c.CmdPrefix("USER alice", "+OK")
	c.CmdPrefix("PASS secret pw", "-ERR [SYS/TEMP]")
	if e.be.OpenMailboxes() != 0 {
		t.Fatal("the upstream mailbox stayed open")
	}
}

type failingLocker struct{}

func (failingLocker) TryLock(context.Context, string) (func(), error) {
	return nil, errors.New("lock: redis: dial tcp 127.0.0.1:1: connection refused")
}
