// Package cluster is what several popgate nodes share through one Redis
// (the cluster section of the configuration): the maildrop lock
// (lock.Redis), the login state of the failure penalty and LOGIN-DELAY
// (Store), and the Redis readiness check of /readyz. Without a cluster
// section none of this exists and everything stays in-process.
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/lock"
	"github.com/popgate/popgate/internal/throttle"
)

// Options are the cluster section's values.
type Options struct {
	Address    string // cluster.redis.address, host:port
	Password   string // cluster.redis.password; "" none
	DB         int    // cluster.redis.db
	TLS        bool   // cluster.redis.tls
	CAFile     string // cluster.redis.ca_file: PEM roots for TLS; "" the system's
	ServerName string // cluster.redis.server_name: TLS name; "" the address's host
	KeyPrefix  string // cluster.redis.key_prefix, before every key
	LockLease  time.Duration
	// Timeout bounds each Redis command (dial, read, write); default 2s.
	// A login costs a few commands, so Redis unreachable answers
	// [SYS/TEMP] within a few Timeouts.
	Timeout time.Duration
}

// DefaultTimeout bounds each Redis command when Options.Timeout is 0.
const DefaultTimeout = 2 * time.Second

// Cluster is the shared state of one node.
type Cluster struct {
	client  *redis.Client
	locker  *lock.Redis
	refresh *lock.Redis
	store   *Store
}

// New connects lazily (the first command dials): a node starts even when
// Redis is away, answers logins with [SYS/TEMP] and reports not ready until
// Redis is back. Errors are configuration errors (a CA file that cannot be
// read).
func New(o Options, log zerolog.Logger) (*Cluster, error) {
	to := o.Timeout
	if to <= 0 {
		to = DefaultTimeout
	}
	ro := &redis.Options{
		Addr:         o.Address,
		Password:     o.Password,
		DB:           o.DB,
		DialTimeout:  to,
		ReadTimeout:  to,
		WriteTimeout: to,
		// One attempt per command: a retried lock command is harmless
		// (the acquire script accepts its own token) but doubles the time
		// a login waits for an unreachable Redis.
		MaxRetries: -1,
		// The client's own identification (CLIENT SETINFO) is not needed.
		DisableIdentity: true,
	}
	if o.TLS {
		name := o.ServerName
		if name == "" {
			name, _, _ = net.SplitHostPort(o.Address)
		}
		tc := &tls.Config{ServerName: name, MinVersion: tls.VersionTLS12}
		if o.CAFile != "" {
			pem, err := os.ReadFile(o.CAFile)
			if err != nil {
				return nil, fmt.Errorf("cluster.redis.ca_file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("cluster.redis.ca_file: %s holds no PEM certificate", o.CAFile)
			}
			tc.RootCAs = pool
		}
		ro.TLSConfig = tc
	}
	c := redis.NewClient(ro)
	return &Cluster{
		client: c,
		locker: lock.NewRedis(c, o.KeyPrefix, o.LockLease, log),
		// OAuth refresh locks: PREFIX + "oauth:lock:" + credential name,
		// apart from the maildrop locks.
		refresh: lock.NewRedis(c, o.KeyPrefix+"oauth:", o.LockLease, log),
		store:   &Store{c: c, prefix: o.KeyPrefix + "throttle:"},
	}, nil
}

// Locker is the maildrop lock shared by every node.
func (c *Cluster) Locker() *lock.Redis { return c.locker }

// RefreshLocker is the lock every node takes before it refreshes an
// OAuth2 credential's token (keys PREFIX + "oauth:lock:" + name), so that
// two nodes never spend one refresh token against each other.
func (c *Cluster) RefreshLocker() *lock.Redis { return c.refresh }

// Store is the failure-penalty and LOGIN-DELAY state shared by every node.
func (c *Cluster) Store() *Store { return c.store }

// Check pings Redis (the /readyz check).
func (c *Cluster) Check(ctx context.Context) error {
	if err := c.client.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis unreachable: %w", err)
	}
	return nil
}

// Close closes the Redis connections.
func (c *Cluster) Close() error { return c.client.Close() }

// Store keeps the login state of the failure penalty and LOGIN-DELAY
// (RFC 2449 §8.1.2) in Redis, each key with its own expiry, so that every
// node sees the same counts. It is a throttle.Store (and a
// throttle.MultiReader and MultiAdder); each method is one Redis round
// trip.
type Store struct {
	c      redis.UniversalClient
	prefix string
}

var (
	_ throttle.Store       = (*Store)(nil)
	_ throttle.MultiReader = (*Store)(nil)
	_ throttle.MultiAdder  = (*Store)(nil)
)

// Failures returns the failure count under key (0 when absent). GET.
func (s *Store) Failures(ctx context.Context, key string) (int, error) {
	n, err := s.c.Get(ctx, s.prefix+key).Int()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return n, err
}

// FailuresOf returns the failure counts under keys (0 when absent) in one
// round trip: MGET. It makes Store a throttle.MultiReader.
func (s *Store) FailuresOf(ctx context.Context, keys ...string) ([]int, error) {
	ks := make([]string, len(keys))
	for i, k := range keys {
		ks[i] = s.prefix + k
	}
	vs, err := s.c.MGet(ctx, ks...).Result()
	if err != nil {
		return nil, err
	}
	ns := make([]int, len(keys))
	for i, v := range vs {
		if v == nil {
			continue
		}
		str, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("failure count %q: unexpected value", keys[i])
		}
		n, err := strconv.Atoi(str)
		if err != nil {
			return nil, fmt.Errorf("failure count %q: %v", keys[i], err)
		}
		ns[i] = n
	}
	return ns, nil
}

// addFailure increments and sets the expiry in one script (one round trip,
// atomic: a key never stays without expiry).
var addFailure = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n`)

// AddFailure adds one failure under key, expiring ttl from now, and
// returns the new count. INCR + PEXPIRE in one script.
func (s *Store) AddFailure(ctx context.Context, key string, ttl time.Duration) (int, error) {
	return addFailure.Run(ctx, s.c, []string{s.prefix + key}, ttl.Milliseconds()).Int()
}

// addFailures is addFailure for every key, in one script.
var addFailures = redis.NewScript(`
local r = {}
for i, k in ipairs(KEYS) do
  r[i] = redis.call('INCR', k)
  redis.call('PEXPIRE', k, ARGV[1])
end
return r`)

// AddFailuresOf adds one failure under each key, expiring ttl from now,
// and returns the new counts, in one round trip (one script). It makes
// Store a throttle.MultiAdder.
func (s *Store) AddFailuresOf(ctx context.Context, ttl time.Duration, keys ...string) ([]int, error) {
	ks := make([]string, len(keys))
	for i, k := range keys {
		ks[i] = s.prefix + k
	}
	vs, err := addFailures.Run(ctx, s.c, ks, ttl.Milliseconds()).Int64Slice()
	if err != nil {
		return nil, err
	}
	ns := make([]int, len(vs))
	for i, v := range vs {
		ns[i] = int(v)
	}
	return ns, nil
}

// ClearFailures forgets the failures under key. DEL.
func (s *Store) ClearFailures(ctx context.Context, key string) error {
	return s.c.Del(ctx, s.prefix+key).Err()
}

// claimLogin sets the key unless present; else returns its remaining time.
var claimLogin = redis.NewScript(`
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return 0 end
local t = redis.call('PTTL', KEYS[1])
if t < 1 then return 1 end
return t`)

// ClaimLogin records a login under key for ttl unless one is recorded; then
// it returns the time the recorded one has left (> 0), else 0.
// SET NX PX, PTTL, in one script.
func (s *Store) ClaimLogin(ctx context.Context, key string, ttl time.Duration) (time.Duration, error) {
	ms, err := claimLogin.Run(ctx, s.c, []string{s.prefix + key}, max(ttl.Milliseconds(), 1)).Int64()
	if err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// ReleaseLogin removes the login recorded under key. DEL.
func (s *Store) ReleaseLogin(ctx context.Context, key string) error {
	return s.c.Del(ctx, s.prefix+key).Err()
}
