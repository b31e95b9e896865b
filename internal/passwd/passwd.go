// Package passwd hashes and verifies device passwords: argon2id (RFC 9106)
// in the PHC string format "$argon2id$v=19$m=…,t=…,p=…$salt$hash", and
// bcrypt ("$2a$", "$2b$", "$2y$"). Verification is bounded: a Verifier lets
// at most a few hashes run at once, so that a flood of logins with wrong
// passwords cannot take the memory of many argon2id runs (64 MiB each with
// the parameters Hash uses).
//
// No function of this package puts a password or a hash into an error text.
package passwd

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// The argon2id parameters of Hash: 64 MiB, 3 passes, 2 lanes, a 16-octet
// salt and a 32-octet key (RFC 9106 §4, second recommended option).
const (
	HashMemoryKiB = 64 * 1024
	HashTime      = 3
	HashThreads   = 2
	hashSaltLen   = 16
	hashKeyLen    = 32
)

// Bounds a hash must keep to be accepted: a hash from the accounts file
// decides how much memory each verification takes.
const (
	MaxMemoryKiB  = 256 * 1024 // 256 MiB per argon2id run
	MaxTime       = 16
	MaxThreads    = 16
	minSaltLen    = 8
	minKeyLen     = 16
	maxKeyLen     = 64
	maxSaltLen    = 64
	minBcryptCost = 4
	maxBcryptCost = 16
)

// DefaultConcurrency is how many verifications a Verifier from
// NewVerifier(0) runs at once. With Hash's parameters that is at most
// 2 × 64 MiB = 128 MiB of argon2id memory, whatever the number of logins.
const DefaultConcurrency = 2

// ErrFormat is returned for a hash that is neither a valid argon2id PHC
// string nor a bcrypt hash, or whose parameters are out of bounds.
var ErrFormat = errors.New("passwd: not an argon2id or bcrypt hash, or parameters out of bounds")

// Hash returns an argon2id PHC string for password with a fresh random salt.
func Hash(password string) (string, error) {
	salt := make([]byte, hashSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("passwd: random salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, HashTime, HashMemoryKiB, HashThreads, hashKeyLen)
	return encodeArgon2(argon2Params{memory: HashMemoryKiB, time: HashTime, threads: HashThreads, salt: salt, key: key}), nil
}

type argon2Params struct {
	memory  uint32
	time    uint32
	threads uint8
	salt    []byte
	key     []byte
}

var b64 = base64.RawStdEncoding

func encodeArgon2(p argon2Params) string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.memory, p.time, p.threads, b64.EncodeToString(p.salt), b64.EncodeToString(p.key))
}

// parseArgon2 parses "$argon2id$v=19$m=M,t=T,p=P$salt$key".
func parseArgon2(h string) (argon2Params, error) {
	var p argon2Params
	parts := strings.Split(h, "$")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return p, ErrFormat
	}
	seen := 0
	for _, kv := range strings.Split(parts[3], ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return p, ErrFormat
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return p, ErrFormat
		}
		switch k {
		case "m":
			p.memory, seen = uint32(n), seen|1
		case "t":
			p.time, seen = uint32(n), seen|2
		case "p":
			if n > 255 {
				return p, ErrFormat
			}
			p.threads, seen = uint8(n), seen|4
		default:
			return p, ErrFormat
		}
	}
	var err error
	if p.salt, err = b64.DecodeString(parts[4]); err != nil {
		return p, ErrFormat
	}
	if p.key, err = b64.DecodeString(parts[5]); err != nil {
		return p, ErrFormat
	}
	switch {
	case seen != 7,
		p.threads < 1 || p.threads > MaxThreads,
		p.time < 1 || p.time > MaxTime,
		p.memory < 8*uint32(p.threads) || p.memory > MaxMemoryKiB,
		len(p.salt) < minSaltLen || len(p.salt) > maxSaltLen,
		len(p.key) < minKeyLen || len(p.key) > maxKeyLen:
		return p, ErrFormat
	}
	return p, nil
}

// isBcrypt reports whether h looks like a bcrypt hash: $2a$, $2b$ or $2y$,
// a two-digit cost in bounds, and 53 characters of salt and hash.
func isBcrypt(h string) bool {
	if len(h) != 60 || h[0] != '$' || h[1] != '2' || h[3] != '$' || h[6] != '$' {
		return false
	}
	switch h[2] {
	case 'a', 'b', 'y':
	default:
		return false
	}
	cost, err := strconv.Atoi(h[4:6])
	return err == nil && cost >= minBcryptCost && cost <= maxBcryptCost
}

// Check reports whether hash is an accepted argon2id or bcrypt hash
// (ErrFormat otherwise). It runs no hash function.
func Check(hash string) error {
	if isBcrypt(hash) {
		return nil
	}
	_, err := parseArgon2(hash)
	return err
}

// MemoryKiB is the memory one verification against hash takes (argon2id's
// m parameter; a few KiB for bcrypt), 0 for an invalid hash.
func MemoryKiB(hash string) uint32 {
	if isBcrypt(hash) {
		return 4
	}
	p, err := parseArgon2(hash)
	if err != nil {
		return 0
	}
	return p.memory
}

// Verifier compares passwords with hashes, at most a fixed number at once.
// Its methods are safe for concurrent use.
type Verifier struct {
	slots chan struct{}
}

// NewVerifier returns a Verifier running at most n verifications at once
// (n <= 0: DefaultConcurrency).
func NewVerifier(n int) *Verifier {
	if n <= 0 {
		n = DefaultConcurrency
	}
	return &Verifier{slots: make(chan struct{}, n)}
}

// Concurrency is the number of verifications v runs at once.
func (v *Verifier) Concurrency() int { return cap(v.slots) }

// Verify reports whether password matches hash. It waits for a free slot
// until ctx is done (then it returns ctx's error). An invalid hash is
// ErrFormat. The comparison is in constant time.
func (v *Verifier) Verify(ctx context.Context, hash, password string) (bool, error) {
	bc := isBcrypt(hash)
	var p argon2Params
	if !bc {
		var err error
		if p, err = parseArgon2(hash); err != nil {
			return false, err
		}
	}
	select {
	case v.slots <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	defer func() { <-v.slots }()
	if bc {
		// x/crypto/bcrypt reads $2y$ like $2b$ (the same algorithm).
		h := hash
		if h[2] == 'y' {
			h = "$2b" + h[3:]
		}
		err := bcrypt.CompareHashAndPassword([]byte(h), []byte(password))
		switch {
		case err == nil:
			return true, nil
		case errors.Is(err, bcrypt.ErrMismatchedHashAndPassword):
			return false, nil
		default:
			return false, ErrFormat
		}
	}
	key := argon2.IDKey([]byte(password), p.salt, p.time, p.memory, p.threads, uint32(len(p.key)))
	return subtle.ConstantTimeCompare(key, p.key) == 1, nil
}
