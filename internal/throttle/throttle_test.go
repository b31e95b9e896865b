package throttle

import (
	"context"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time          { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func newTestMemory(capacity int) (*Memory, *clock) {
	m := NewMemory(capacity)
	c := &clock{t: time.Unix(1_800_000_000, 0)}
	m.SetClock(c.now)
	return m, c
}

func TestPolicyDelay(t *testing.T) {
	p := Policy{Base: 2 * time.Second, Max: 15 * time.Second}
	want := []time.Duration{0, 2, 4, 8, 15, 15, 15}
	for n, w := range want {
		if got := p.Delay(n); got != w*time.Second {
			t.Errorf("Delay(%d) = %v, want %v", n, got, w*time.Second)
		}
	}
	if got := p.Delay(1 << 30); got != 15*time.Second {
		t.Errorf("Delay(huge) = %v: must stay at the cap without overflow", got)
	}
	if got := (Policy{Base: 0, Max: time.Minute}).Delay(5); got != 0 {
		t.Errorf("Base 0: Delay = %v, want 0 (penalty off)", got)
	}
	if got := (Policy{Base: 3 * time.Second}).Delay(4); got != 3*time.Second {
		t.Errorf("Max below Base: Delay = %v, want Base", got)
	}
}

// TestGrowthToCap: 20 failures from one address grow the delay to the cap;
// another user from that address is slowed by the address part only; the
// same user from elsewhere by the user part; a stranger not at all.
func TestGrowthToCap(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestMemory(0)
	l := &Limiter{Store: m, Policy: Policy{Base: 2 * time.Second, Max: 15 * time.Second}}
	var delays []time.Duration
	for i := 0; i < 20; i++ {
		n, err := l.Fail(ctx, "192.0.2.1", "victim")
		if err != nil {
			t.Fatal(err)
		}
		delays = append(delays, l.Policy.Delay(n))
	}
	for i := 1; i < len(delays); i++ {
		if delays[i] < delays[i-1] {
			t.Fatalf("delays shrink: %v", delays)
		}
	}
	if delays[0] != 2*time.Second || delays[1] != 4*time.Second || delays[19] != 15*time.Second {
		t.Fatalf("delays %v: want 2s, 4s, … up to the 15s cap", delays)
	}

	// Another user from the same address: the address's 20 failures.
	n, _ := l.Failures(ctx, "192.0.2.1", "bystander")
	if n != 20 {
		t.Errorf("other user, same address: %d failures, want the address's 20", n)
	}
	// The same user from elsewhere: the user's 20.
	n, _ = l.Failures(ctx, "198.51.100.7", "victim")
	if n != 20 {
		t.Errorf("same user, other address: %d, want 20", n)
	}
	// Someone else entirely: nothing.
	n, _ = l.Failures(ctx, "198.51.100.7", "bystander")
	if n != 0 {
		t.Errorf("other user, other address: %d, want 0", n)
	}
	// Per-address part only: failures of many names from one address.
	for i := 0; i < 5; i++ {
		l.Fail(ctx, "203.0.113.9", "name"+strconv.Itoa(i))
	}
	if n, _ := l.Failures(ctx, "198.51.100.7", "name1"); n != 1 {
		t.Errorf("name1 from a clean address: %d, want its own 1", n)
	}
	if n, _ := l.Failures(ctx, "203.0.113.9", "fresh"); n != 5 {
		t.Errorf("fresh name from the guessing address: %d, want 5", n)
	}

	// A right password clears the user, not the address.
	l.Succeed(ctx, "victim")
	if n, _ := l.Failures(ctx, "198.51.100.7", "victim"); n != 0 {
		t.Errorf("after success: user count %d, want 0", n)
	}
	if n, _ := l.Failures(ctx, "192.0.2.1", "x"); n != 20 {
		t.Errorf("after success: address count %d, want 20 still", n)
	}
}

func TestQuietTimeForgets(t *testing.T) {
	ctx := context.Background()
	m, c := newTestMemory(0)
	l := &Limiter{Store: m, Policy: Policy{Base: time.Second, Max: 8 * time.Second, Quiet: 10 * time.Minute}}
	for i := 0; i < 3; i++ {
		l.Fail(ctx, "192.0.2.1", "u")
		c.advance(9 * time.Minute) // each failure renews the quiet time
	}
	if n, _ := l.Failures(ctx, "192.0.2.1", "u"); n != 3 {
		t.Fatalf("failures 9 minutes apart: %d, want 3 kept", n)
	}
	c.advance(time.Minute)
	if n, _ := l.Failures(ctx, "192.0.2.1", "u"); n != 0 {
		t.Fatalf("after 10 quiet minutes: %d, want 0", n)
	}
	if n, _ := l.Fail(ctx, "192.0.2.1", "u"); n != 1 {
		t.Fatalf("first failure after the quiet time: count %d, want 1", n)
	}
}

func TestClaimLogin(t *testing.T) {
	ctx := context.Background()
	m, c := newTestMemory(0)
	if left, _ := m.ClaimLogin(ctx, "login:corp/a", 5*time.Minute); left != 0 {
		t.Fatalf("first claim refused (%v)", left)
	}
	c.advance(time.Minute)
	if left, _ := m.ClaimLogin(ctx, "login:corp/a", 5*time.Minute); left != 4*time.Minute {
		t.Fatalf("second claim after 1m: left %v, want 4m", left)
	}
	if left, _ := m.ClaimLogin(ctx, "login:corp/b", 5*time.Minute); left != 0 {
		t.Fatalf("other maildrop refused (%v)", left)
	}
	c.advance(4 * time.Minute)
	if left, _ := m.ClaimLogin(ctx, "login:corp/a", 5*time.Minute); left != 0 {
		t.Fatalf("claim after the delay refused (%v)", left)
	}
	m.ReleaseLogin(ctx, "login:corp/a")
	if left, _ := m.ClaimLogin(ctx, "login:corp/a", 5*time.Minute); left != 0 {
		t.Fatalf("claim after release refused (%v)", left)
	}
}

func TestCapacityEvictsOldest(t *testing.T) {
	ctx := context.Background()
	m, _ := newTestMemory(100)
	m.AddFailure(ctx, "fail:addr:attacker", time.Hour)
	for i := 0; i < 1000; i++ {
		m.AddFailure(ctx, "fail:user:name"+strconv.Itoa(i), time.Hour)
		if i%10 == 0 { // the attacker's own address stays in use
			m.AddFailure(ctx, "fail:addr:attacker", time.Hour)
		}
	}
	if f, _ := m.Len(); f != 100 {
		t.Errorf("%d failure entries, capacity 100", f)
	}
	if n, _ := m.Failures(ctx, "fail:addr:attacker"); n != 101 {
		t.Errorf("attacker's address: %d failures, want 101 (a busy entry is not evicted)", n)
	}
	if n, _ := m.Failures(ctx, "fail:user:name0"); n != 0 {
		t.Errorf("oldest name still held (%d)", n)
	}
}

// TestMemoryBounded measures the heap of a Memory store holding 100,000
// distinct names, then pushes 900,000 more through it. It reports both;
// run with -v to see the figures:
//
//	go test ./internal/throttle -run TestMemoryBounded -v
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("a million inserts")
	}
	ctx := context.Background()
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	m := NewMemory(0)
	long := "-a-rather-long-attacking-user-name-padded-to-some-two-hundred-octets-" +
		"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
	for i := 0; i < 100_000; i++ {
		m.AddFailure(ctx, "fail:user:"+strconv.Itoa(i)+long, time.Hour)
	}
	at100k := heap() - before
	for i := 100_000; i < 1_000_000; i++ {
		m.AddFailure(ctx, "fail:user:"+strconv.Itoa(i)+long, time.Hour)
	}
	at1m := heap() - min(heap(), before)
	f, _ := m.Len()
	runtime.KeepAlive(m)
	t.Logf("failure cache (capacity %d, names of ~200 octets): %d entries; heap %.1f MiB after 100,000 distinct names, %.1f MiB after 1,000,000 (%.0f octets an entry)",
		DefaultCapacity, f, float64(at100k)/(1<<20), float64(at1m)/(1<<20), float64(at100k)/100_000)
	if f != DefaultCapacity {
		t.Errorf("%d entries, want the capacity %d", f, DefaultCapacity)
	}
	// Go's map keeps deleted slots for a while, so its table may double
	// once under churn (measured: 12.5 MiB at 100,000, 15.8 MiB at
	// 1,000,000, a plateau of 22.5 MiB from 4,000,000 to 10,000,000).
	if at1m > 2*at100k {
		t.Errorf("heap grew from %d to %d octets between 100,000 and 1,000,000 names: not bounded", at100k, at1m)
	}
	if at100k > 64<<20 {
		t.Errorf("100,000 entries take %d octets, more than 64 MiB", at100k)
	}
}
