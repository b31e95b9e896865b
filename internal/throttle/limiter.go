package throttle

import (
	"context"
	"errors"
	"time"
)

// DefaultQuiet is how long failures are remembered after the last one.
const DefaultQuiet = 15 * time.Minute

// Policy turns a failure count into a delay: the first failure waits Base,
// each further one twice the one before, up to Max.
type Policy struct {
	Base  time.Duration // auth.failure_delay; 0 turns the penalty off
	Max   time.Duration // auth.failure_max_delay; below Base: Base
	Quiet time.Duration // failures are forgotten after this long without one; 0: DefaultQuiet
}

// Delay is the delay n failures earn: 0 for n <= 0 or Base 0, else
// min(Base × 2^(n-1), Max).
func (p Policy) Delay(n int) time.Duration {
	if n <= 0 || p.Base <= 0 {
		return 0
	}
	limit := max(p.Max, p.Base)
	d := p.Base
	for i := 1; i < n; i++ {
		if d >= limit/2 {
			return limit
		}
		d *= 2
	}
	return min(d, limit)
}

func (p Policy) quiet() time.Duration {
	if p.Quiet > 0 {
		return p.Quiet
	}
	return DefaultQuiet
}

// Limiter counts login failures per client address and per user name in a
// Store. The delay of a login attempt is the one the larger of the two
// counts earns, so a user name under attack from many addresses is slowed
// down, and an address guessing many names is slowed down for every name;
// other users from other addresses are not.
type Limiter struct {
	Store  Store
	Policy Policy
}

func addrKey(addr string) string { return "fail:addr:" + addr }
func userKey(user string) string { return "fail:user:" + user }

// Counts are the failure counts of one login attempt: of its client
// address and of its user name.
type Counts struct{ Addr, User int }

// Max is the larger of the two: the count the delay is computed from.
func (c Counts) Max() int { return max(c.Addr, c.User) }

// MultiReader is a Store that reads several failure counts in one round
// trip (Redis: MGET). The Limiter uses it when its Store has it.
type MultiReader interface {
	// FailuresOf returns the count under each key, 0 for an absent or
	// expired one.
	FailuresOf(ctx context.Context, keys ...string) ([]int, error)
}

// MultiAdder is a Store that adds a failure under several keys in one
// round trip (Redis: one script of INCR and PEXPIRE per key). The Limiter
// uses it when its Store has it.
type MultiAdder interface {
	// AddFailuresOf adds one failure under each key, makes each expire
	// ttl from now, and returns the new counts.
	AddFailuresOf(ctx context.Context, ttl time.Duration, keys ...string) ([]int, error)
}

// Counts returns the failure counts of addr and user (either may be "" to
// leave it out): one Store read per name, or one in all when the Store is
// a MultiReader. On error the counts are not known.
func (l *Limiter) Counts(ctx context.Context, addr, user string) (Counts, error) {
	var c Counts
	if mr, ok := l.Store.(MultiReader); ok && addr != "" && user != "" {
		ns, err := mr.FailuresOf(ctx, addrKey(addr), userKey(user))
		if err != nil {
			return Counts{}, err
		}
		if len(ns) != 2 {
			return Counts{}, errors.New("throttle: store returned a wrong number of counts")
		}
		return Counts{Addr: ns[0], User: ns[1]}, nil
	}
	var errs []error
	if addr != "" {
		n, err := l.Store.Failures(ctx, addrKey(addr))
		c.Addr, errs = n, append(errs, err)
	}
	if user != "" {
		n, err := l.Store.Failures(ctx, userKey(user))
		c.User, errs = n, append(errs, err)
	}
	return c, errors.Join(errs...)
}

// Failures returns the larger of the failure counts of addr and user
// (either may be "" to leave it out).
func (l *Limiter) Failures(ctx context.Context, addr, user string) (int, error) {
	c, err := l.Counts(ctx, addr, user)
	return c.Max(), err
}

// Fail records a failure of user from addr and returns the larger of the
// two new counts.
func (l *Limiter) Fail(ctx context.Context, addr, user string) (int, error) {
	var n int
	var errs []error
	q := l.Policy.quiet()
	if ma, ok := l.Store.(MultiAdder); ok && addr != "" && user != "" {
		ns, err := ma.AddFailuresOf(ctx, q, addrKey(addr), userKey(user))
		if err != nil {
			return 0, err
		}
		if len(ns) != 2 {
			return 0, errors.New("throttle: store returned a wrong number of counts")
		}
		return max(ns[0], ns[1]), nil
	}
	if addr != "" {
		a, err := l.Store.AddFailure(ctx, addrKey(addr), q)
		n, errs = max(n, a), append(errs, err)
	}
	if user != "" {
		u, err := l.Store.AddFailure(ctx, userKey(user), q)
		n, errs = max(n, u), append(errs, err)
	}
	return n, errors.Join(errs...)
}

// Succeed forgets the failures of user (the password was right). Those of
// the address stay: one valid account must not reset an address that
// guesses others.
func (l *Limiter) Succeed(ctx context.Context, user string) error {
	if user == "" {
		return nil
	}
	return l.Store.ClearFailures(ctx, userKey(user))
}

// Sleep waits d or until ctx is done; it reports whether the whole delay
// passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
