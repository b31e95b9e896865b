package passwd

import (
	"context"
	"errors"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// cheapArgon2 is an argon2id hash with small parameters, for fast tests.
func cheapArgon2(t testing.TB, password string) string {
	t.Helper()
	salt := []byte("0123456789abcdef")
	key := argon2.IDKey([]byte(password), salt, 1, 64, 1, 32)
	return encodeArgon2(argon2Params{memory: 64, time: 1, threads: 1, salt: salt, key: key})
}

func TestHashVerify(t *testing.T) {
	h, err := Hash("correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=65536,t=3,p=2$") {
		t.Fatalf("hash %q: want argon2id with m=65536,t=3,p=2", h)
	}
	if err := Check(h); err != nil {
		t.Fatalf("Check(Hash()) = %v", err)
	}
	if MemoryKiB(h) != 65536 {
		t.Errorf("MemoryKiB = %d", MemoryKiB(h))
	}
	h2, _ := Hash("correct horse")
	if h2 == h {
		t.Error("two hashes of one password are equal: the salt is not random")
	}
	v := NewVerifier(0)
	if v.Concurrency() != DefaultConcurrency {
		t.Errorf("Concurrency = %d", v.Concurrency())
	}
	ctx := context.Background()
	if ok, err := v.Verify(ctx, h, "correct horse"); !ok || err != nil {
		t.Errorf("right password: %v %v", ok, err)
	}
	if ok, err := v.Verify(ctx, h, "correct horsf"); ok || err != nil {
		t.Errorf("wrong password: %v %v", ok, err)
	}
}

func TestBcrypt(t *testing.T) {
	b, err := bcrypt.GenerateFromPassword([]byte("s3cret pass"), 4)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(1)
	for _, prefix := range []string{"$2a$", "$2b$", "$2y$"} {
		h := prefix + string(b[4:])
		if err := Check(h); err != nil {
			t.Errorf("%s: Check = %v", prefix, err)
		}
		if ok, err := v.Verify(context.Background(), h, "s3cret pass"); !ok || err != nil {
			t.Errorf("%s right password: %v %v", prefix, ok, err)
		}
		if ok, err := v.Verify(context.Background(), h, "s3cret pasS"); ok || err != nil {
			t.Errorf("%s wrong password: %v %v", prefix, ok, err)
		}
	}
}

func TestBadHashes(t *testing.T) {
	good := cheapArgon2(t, "pw")
	bad := []string{
		"", "plain text password", "{PLAIN}secret", "$1$abc$def",
		strings.Replace(good, "argon2id", "argon2i", 1),
		strings.Replace(good, "v=19", "v=16", 1),
		strings.Replace(good, "m=64", "m=999999999", 1), // above MaxMemoryKiB
		strings.Replace(good, "t=1", "t=0", 1),
		strings.Replace(good, "p=1", "p=0", 1),
		strings.Replace(good, ",p=1", "", 1),
		strings.Replace(good, "m=64", "x=64", 1),
		good + "$",
		good[:len(good)-30], // key shorter than 16 octets
		"$2a$99$" + strings.Repeat("a", 53),
		"$2x$10$" + strings.Repeat("a", 53),
	}
	v := NewVerifier(1)
	for _, h := range bad {
		if err := Check(h); !errors.Is(err, ErrFormat) {
			t.Errorf("Check(%q) = %v, want ErrFormat", h, err)
		}
		ok, err := v.Verify(context.Background(), h, "pw")
		if ok || !errors.Is(err, ErrFormat) {
			t.Errorf("Verify(%q) = %v, %v", h, ok, err)
		}
		if err != nil && h != "" && strings.Contains(err.Error(), h) {
			t.Errorf("error text holds the hash: %v", err)
		}
	}
}

// TestConcurrencyCap: never more verifications at once than the cap, and a
// caller waiting for a slot gives up with its context.
func TestConcurrencyCap(t *testing.T) {
	h := cheapArgon2(t, "pw")
	v := NewVerifier(2)
	// Hold both slots: a further Verify waits until its context ends.
	v.slots <- struct{}{}
	v.slots <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := v.Verify(ctx, h, "pw"); done <- err }()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Verify with full slots and a cancelled context = %v", err)
	}
	<-v.slots
	<-v.slots

	// Many concurrent callers: count the slots in use from inside.
	var maxSeen atomic.Int32
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if n := int32(len(v.slots)); n > maxSeen.Load() {
				maxSeen.Store(n)
			}
			runtime.Gosched()
		}
	}()
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, err := v.Verify(context.Background(), h, "pw"); !ok || err != nil {
				t.Errorf("Verify: %v %v", ok, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	if maxSeen.Load() > 2 {
		t.Errorf("%d verifications ran at once, cap is 2", maxSeen.Load())
	}
}

// TestFloodMemory: 16 concurrent wrong-password logins against a default
// (64 MiB) argon2id hash keep the Go heap near Concurrency × 64 MiB. It
// reports the peak; run with -v to see it:
//
//	go test ./internal/passwd -run TestFloodMemory -v
func TestFloodMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 16 argon2id hashes")
	}
	h, err := Hash("the right one")
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(0)
	// What is measured is live memory: with the default GOGC the
	// collector may let finished verifications' 64 MiB blocks pile up to
	// twice the live heap before it runs (384 MiB seen with cap 2 on a
	// loaded machine), which says nothing about the cap. A collection at
	// 10 % growth keeps the heap close to what is live.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if ok, err := v.Verify(context.Background(), h, "wrong"); ok || err != nil {
				t.Errorf("Verify: %v %v", ok, err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	grown := (peak.Load() - min(peak.Load(), base.HeapInuse)) >> 20
	t.Logf("16 concurrent argon2id (m=64 MiB) verifications, cap %d: peak heap in use %d MiB above the start", v.Concurrency(), grown)
	// The cap bounds live argon2 memory to Concurrency × 64 MiB; the
	// collector may keep up to as much again (blocks of verifications that
	// just ended) before it has run. Without the cap it would be 16 × 64.
	if limit := uint64(2*v.Concurrency()*64 + 32); grown > limit {
		t.Errorf("peak heap grew by %d MiB, above %d MiB: the cap does not bound memory", grown, limit)
	}
}
