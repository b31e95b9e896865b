package lock

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// DefaultLease is the lease of a Redis lock when none is configured
// (cluster.lock_lease).
const DefaultLease = 30 * time.Second

// Redis is a Locker shared by every gateway process using the same Redis
// (DESIGN invariant 6 across nodes). A lock is the key PREFIX+"lock:"+KEY
// holding a random token, set with NX and a lease (PX). While the session
// lives the lease is renewed every third of its length, by a script that
// extends it only if the key still holds the session's token. Release
// deletes the key, again only with the token. A process that dies (SIGKILL,
// power loss) leaves its keys to expire after at most one lease.
//
// The guarantee, exactly: Confirm(hold) returns success only after Redis
// answered that the key still held this session's token and its expiry
// was set to at least hold from the moment the script was sent. Until that
// moment + hold (Redis's clock and ours running at the same rate), no other
// session can take the lock. What remains: a process paused (GC, SIGSTOP,
// VM migration) after Confirm longer than hold can still send its upstream
// commit after the lease ran out and another node took the maildrop; popgate
// bounds the commit with a context deadline at the confirmed time, which
// stops it only at its next network operation. Redis itself is one point of
// truth: a Redis that restarts without persistence forgets every lock
// (sessions then fail to Confirm and do not commit, since their tokens are
// gone).
type Redis struct {
	client redis.UniversalClient
	prefix string
	lease  time.Duration
	log    zerolog.Logger
}

// NewRedis returns a Redis locker. prefix is the cluster.redis.key_prefix;
// lease is cluster.lock_lease (DefaultLease when zero). log receives
// renewal failures and lost leases (warn).
func NewRedis(client redis.UniversalClient, prefix string, lease time.Duration, log zerolog.Logger) *Redis {
	if lease <= 0 {
		lease = DefaultLease
	}
	return &Redis{client: client, prefix: prefix, lease: lease, log: log}
}

// Lease returns the lease length.
func (r *Redis) Lease() time.Duration { return r.lease }

// acquireScript sets the key when absent. It also succeeds when the key
// already holds our token: a retried command whose first reply was lost.
var acquireScript = redis.NewScript(`
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0`)

// extendScript extends the key to at least ARGV[2] ms if it holds the
// token ARGV[1]; it never shortens a longer expiry (set by Confirm).
var extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1`)

// releaseScript deletes the key if it holds the token.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// TryLock implements Locker.
func (r *Redis) TryLock(ctx context.Context, key string) (func(), error) {
	h, err := r.Acquire(ctx, key)
	if err != nil {
		return nil, err
	}
	return h.Release, nil
}

// Acquire implements Leaser. Errors: ErrHeld, or the Redis error (wrapped)
// when Redis cannot be reached: never a lock that is not in Redis.
func (r *Redis) Acquire(ctx context.Context, key string) (Held, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	h := &redisHeld{
		r:     r,
		key:   r.prefix + "lock:" + key,
		token: hex.EncodeToString(b[:]),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	ok, err := acquireScript.Run(ctx, r.client, []string{h.key}, h.token, r.lease.Milliseconds()).Int()
	if err != nil {
		return nil, fmt.Errorf("lock: redis: %w", err)
	}
	if ok != 1 {
		return nil, ErrHeld
	}
	go h.renew()
	return h, nil
}

type redisHeld struct {
	r     *Redis
	key   string
	token string

	once sync.Once
	stop chan struct{}
	done chan struct{}

	mu   sync.Mutex
	lost bool
}

// renew extends the lease every third of its length until Release, or
// until Redis says the key is no longer ours.
func (h *redisHeld) renew() {
	defer close(h.done)
	lease := h.r.lease
	t := time.NewTicker(lease / 3)
	defer t.Stop()
	for {
		select {
		case <-h.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), lease/3)
		ok, err := extendScript.Run(ctx, h.r.client, []string{h.key}, h.token, lease.Milliseconds()).Int()
		cancel()
		switch {
		case err != nil:
			// Redis unreachable: try again at the next tick; if it stays
			// away past the lease, Confirm fails and nothing is committed.
			h.r.log.Warn().Err(err).Msg("maildrop lock: lease renewal failed")
		case ok != 1:
			h.mu.Lock()
			h.lost = true
			h.mu.Unlock()
			h.r.log.Warn().Msg("maildrop lock: lease lost (expired or taken over); this session will not commit")
			return
		}
	}
}

// Confirm implements Held.
func (h *redisHeld) Confirm(ctx context.Context, hold time.Duration) (time.Time, error) {
	h.mu.Lock()
	lost := h.lost
	h.mu.Unlock()
	if lost {
		return time.Time{}, ErrLost
	}
	hold = max(hold, h.r.lease)
	sent := time.Now()
	ok, err := extendScript.Run(ctx, h.r.client, []string{h.key}, h.token, hold.Milliseconds()).Int()
	if err != nil {
		return time.Time{}, fmt.Errorf("lock: redis: %w", err)
	}
	if ok != 1 {
		h.mu.Lock()
		h.lost = true
		h.mu.Unlock()
		return time.Time{}, ErrLost
	}
	return sent.Add(hold), nil
}

// Release implements Held: it stops the renewal and deletes the key if it
// is still ours (with a 5-second limit; if Redis is away the lease expires).
func (h *redisHeld) Release() {
	h.once.Do(func() {
		close(h.stop)
		<-h.done
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := releaseScript.Run(ctx, h.r.client, []string{h.key}, h.token).Err(); err != nil && !errors.Is(err, redis.Nil) {
			h.r.log.Warn().Err(err).Msg("maildrop lock: release failed; the lease will expire")
		}
	})
}
