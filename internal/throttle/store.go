// Package throttle holds the login state that POP3 sessions share: failure
// counters per client address and per user name, from which the growing
// failure delays are computed, and the last login of each maildrop, which
// LOGIN-DELAY (RFC 2449 §8.1.2) is enforced on.
//
// The state lives behind Store, a narrow interface whose every operation is
// one or two Redis commands (named at each method), so that several
// gateway processes can share it later. Memory is the in-process Store: two
// bounded LRU caches, so that any number of distinct attacking names or
// addresses cannot grow memory beyond a fixed figure.
package throttle

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// Store is the shared login state. Keys are opaque strings chosen by the
// caller; every entry expires on its own, so a Store never needs a sweep.
// Implementations are safe for concurrent use; an error means the state
// could not be read or written (the caller decides whether to go on).
type Store interface {
	// Failures returns the failure count under key: 0 when there is none
	// or it has expired. Redis: GET key.
	Failures(ctx context.Context, key string) (int, error)
	// AddFailure adds one failure under key, makes the key expire ttl from
	// now (quiet time forgets failures), and returns the new count.
	// Redis: INCR key, PEXPIRE key ttl (in one MULTI).
	AddFailure(ctx context.Context, key string, ttl time.Duration) (int, error)
	// ClearFailures forgets the failures under key. Redis: DEL key.
	ClearFailures(ctx context.Context, key string) error
	// ClaimLogin records a login under key for ttl, unless one is recorded
	// already: then it records nothing and returns the time the recorded
	// one has left (> 0). It returns 0 when the claim is made.
	// Redis: SET key 1 NX PX ttl; PTTL key when SET did not set it.
	ClaimLogin(ctx context.Context, key string, ttl time.Duration) (time.Duration, error)
	// ReleaseLogin removes the login recorded under key, for a claimed
	// login that did not happen after all. Redis: DEL key.
	ReleaseLogin(ctx context.Context, key string) error
}

// DefaultCapacity is the number of entries each of Memory's two caches
// (failures, logins) holds when NewMemory is given 0.
const DefaultCapacity = 100_000

// Memory is a Store in this process's memory: failures and logins in two
// LRU caches of fixed capacity. Keys are kept as 128-bit hashes with a
// per-process random seed, so an entry's size does not depend on the
// length of the name. When a cache is full the least recently used entry
// goes: under a flood of distinct names the oldest, quietest state is
// forgotten first, and a client that keeps failing keeps its own entry
// fresh.
type Memory struct {
	seed1, seed2 maphash.Seed
	now          func() time.Time

	fails  *lru.Cache[key128, entry]
	mu     sync.Mutex // makes read-modify-write of one entry atomic
	logins *lru.Cache[key128, int64]
}

type key128 [2]uint64

type entry struct {
	n       int64
	expires int64 // unix nanoseconds
}

// NewMemory returns a Memory whose caches hold capacity entries each
// (capacity <= 0: DefaultCapacity).
func NewMemory(capacity int) *Memory {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	f, _ := lru.New[key128, entry](capacity)
	l, _ := lru.New[key128, int64](capacity)
	return &Memory{seed1: maphash.MakeSeed(), seed2: maphash.MakeSeed(), now: time.Now, fails: f, logins: l}
}

// SetClock replaces the clock (tests).
func (m *Memory) SetClock(now func() time.Time) { m.now = now }

// Len returns the number of entries held (failures, logins), expired ones
// included until they are touched or pushed out.
func (m *Memory) Len() (failures, logins int) { return m.fails.Len(), m.logins.Len() }

func (m *Memory) key(s string) key128 {
	return key128{maphash.String(m.seed1, s), maphash.String(m.seed2, s)}
}

// Failures implements Store.
func (m *Memory) Failures(_ context.Context, key string) (int, error) {
	k := m.key(key)
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.fails.Get(k)
	if !ok {
		return 0, nil
	}
	if m.now().UnixNano() >= e.expires {
		m.fails.Remove(k)
		return 0, nil
	}
	return int(e.n), nil
}

// AddFailure implements Store.
func (m *Memory) AddFailure(_ context.Context, key string, ttl time.Duration) (int, error) {
	k := m.key(key)
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.fails.Get(k)
	if !ok || now >= e.expires {
		e = entry{}
	}
	e.n++
	e.expires = now + int64(ttl)
	m.fails.Add(k, e)
	return int(e.n), nil
}

// ClearFailures implements Store.
func (m *Memory) ClearFailures(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fails.Remove(m.key(key))
	return nil
}

// ClaimLogin implements Store.
func (m *Memory) ClaimLogin(_ context.Context, key string, ttl time.Duration) (time.Duration, error) {
	k := m.key(key)
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	if exp, ok := m.logins.Get(k); ok && now < exp {
		return time.Duration(exp - now), nil
	}
	m.logins.Add(k, now+int64(ttl))
	return 0, nil
}

// ReleaseLogin implements Store.
func (m *Memory) ReleaseLogin(_ context.Context, key string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.logins.Remove(m.key(key))
	return nil
}
