package lock

import (
	"context"
	"errors"
	"time"
)

// ErrLost is returned by Held.Confirm when the lock is no longer this
// holder's: its lease ran out (the process or the store was unreachable
// longer than the lease) and another session may have taken it.
var ErrLost = errors.New("lock: maildrop lock lost (lease expired or taken over)")

// Held is one held lock. Lockers whose locks can be lost before they are
// released (leases in a shared store) hand these out through Leaser, so that
// a session can confirm the lock before it commits (RFC 1939 §8: the
// maildrop must stay exclusive until the UPDATE state is done).
type Held interface {
	// Release frees the lock; calling it more than once is harmless.
	Release()
	// Confirm checks that the lock is still this holder's (the token it was
	// taken with) and extends it so that it stays held for at least hold,
	// counted from the moment the check was sent. It returns the local
	// time until which the lock is held for certain (send time + hold), or
	// the zero time for locks that cannot be lost. A nil error with a
	// non-zero time means: until that time, no other session can take the
	// lock. Errors: ErrLost, or the store's error (unreachable, timeout).
	Confirm(ctx context.Context, hold time.Duration) (until time.Time, err error)
}

// Leaser is an optional interface of a Locker whose locks are leases.
type Leaser interface {
	Locker
	// Acquire is TryLock returning the held lock (ErrHeld when another
	// session holds key).
	Acquire(ctx context.Context, key string) (Held, error)
}

// Acquire takes key with l: through Leaser when l implements it, else
// through TryLock, in which case Confirm always succeeds with the zero time
// (an in-process lock cannot be lost while the process lives).
func Acquire(ctx context.Context, l Locker, key string) (Held, error) {
	if ll, ok := l.(Leaser); ok {
		return ll.Acquire(ctx, key)
	}
	release, err := l.TryLock(ctx, key)
	if err != nil {
		return nil, err
	}
	return releaseOnly(release), nil
}

// releaseOnly is the Held of a lock that cannot be lost.
type releaseOnly func()

func (r releaseOnly) Release() { r() }

func (releaseOnly) Confirm(context.Context, time.Duration) (time.Time, error) {
	return time.Time{}, nil
}
