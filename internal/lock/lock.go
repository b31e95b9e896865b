// Package lock provides the maildrop lock that keeps one POP3 session per
// maildrop at a time (RFC 1939 §8, DESIGN invariant 6).
package lock

import (
	"context"
	"errors"
	"sync"
)

// ErrHeld is returned by TryLock when another session holds the key.
var ErrHeld = errors.New("lock: maildrop already locked")

// Locker takes exclusive, non-blocking locks on maildrop keys.
type Locker interface {
	// TryLock takes the lock on key or fails at once with ErrHeld. On success
	// the returned release function frees it; calling release more than once
	// is harmless.
	TryLock(ctx context.Context, key string) (release func(), err error)
}

// Local is an in-process Locker. The zero value is ready to use.
type Local struct {
	mu   sync.Mutex
	held map[string]struct{}
}

// NewLocal returns an empty in-process Locker.
func NewLocal() *Local { return &Local{} }

// TryLock implements Locker.
func (l *Local) TryLock(_ context.Context, key string) (func(), error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = make(map[string]struct{})
	}
	if _, ok := l.held[key]; ok {
		return nil, ErrHeld
	}
	l.held[key] = struct{}{}
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			delete(l.held, key)
			l.mu.Unlock()
		})
	}, nil
}

// Held reports whether key is locked (for tests and diagnostics).
func (l *Local) Held(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.held[key]
	return ok
}
