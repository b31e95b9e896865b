package imap

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/internal/testserver/dovecot"
)

// cacheCase drives one maildrop through a cached backend and checks every
// snapshot against one taken by a backend without cache.
type cacheCase struct {
	t       *testing.T
	md      *maildrop
	cached  *Backend
	fresh   *Backend
	lastHit int64
	lastUpd int64
}

func newCacheCase(t *testing.T, st store, cfg func(*Config)) *cacheCase {
	md := seedMaildrop(t, st, backendtest.Messages()[:4])
	md.tweak = cfg
	c := md.config(backendtest.Policy{})
	cached, err := New(c, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	c.SnapshotCache = 0
	fresh, err := New(c, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if fresh.cache != nil {
		t.Fatal("SnapshotCache 0 did not disable the cache")
	}
	return &cacheCase{t: t, md: md, cached: cached, fresh: fresh}
}

// snapshotSeen logs in through b and returns the snapshot, with each
// message's \Seen as the snapshot recorded it (what decides whether a RETR
// sets \Seen).
func snapshotSeen(t testing.TB, b *Backend, md *maildrop) ([]backends.Message, []bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mb, err := b.Login(ctx, md.Credentials())
	if err != nil {
		t.Fatal(err)
	}
	defer mb.Close()
	msgs, err := mb.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := make([]bool, len(msgs))
	for i, m := range msgs {
		uid, err := parseRef(m.Ref)
		if err != nil {
			t.Fatal(err)
		}
		seen[i] = mb.(*Mailbox).snap.isSeen(uint32(uid))
	}
	return msgs, seen
}

// check takes a snapshot through the cached backend, wants it served from
// the cache or not as hit says, and equal to the uncached snapshot.
func (cc *cacheCase) check(step string, hit bool, wantLen int) []backends.Message {
	t := cc.t
	t.Helper()
	got, gotSeen := snapshotSeen(t, cc.cached, cc.md)
	hits := cc.cached.cache.hits.Load()
	if gotHit := hits > cc.lastHit; gotHit != hit {
		t.Errorf("%s: served from cache = %v, want %v", step, gotHit, hit)
	}
	cc.lastHit = hits
	want, wantSeen := snapshotSeen(t, cc.fresh, cc.md)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: cached snapshot\n%v\nwant (uncached)\n%v", step, got, want)
	}
	if !reflect.DeepEqual(gotSeen, wantSeen) {
		t.Fatalf("%s: \\Seen of the cached snapshot %v, want (uncached) %v", step, gotSeen, wantSeen)
	}
	if len(got) != wantLen {
		t.Fatalf("%s: %d messages, want %d", step, len(got), wantLen)
	}
	return got
}

// updated wants the last check's snapshot to have been (or not) the
// cached entry brought up to date by listing only what changed.
func (cc *cacheCase) updated(step string, want bool) {
	cc.t.Helper()
	n := cc.cached.cache.updates.Load()
	if got := n > cc.lastUpd; got != want {
		cc.t.Errorf("%s: cached listing brought up to date = %v, want %v", step, got, want)
	}
	cc.lastUpd = n
}

// other runs f on a second IMAP session with the mailbox selected.
func (cc *cacheCase) other(f func(c *imapclient.Client)) {
	c := cc.md.st.dial(cc.t, cc.md.user, cc.md.pass)
	defer c.Close()
	if _, err := c.Select(cc.md.config(backendtest.Policy{}).Mailbox, nil).Wait(); err != nil {
		cc.t.Fatal(err)
	}
	f(c)
	c.Logout().Wait()
}

func (cc *cacheCase) store(uid imap.UID, op imap.StoreFlagsOp, flag imap.Flag) {
	cc.other(func(c *imapclient.Client) {
		if err := c.Store(imap.UIDSetNum(uid), &imap.StoreFlags{Op: op, Silent: true, Flags: []imap.Flag{flag}}, nil).Close(); err != nil {
			cc.t.Fatal(err)
		}
	})
}

// TestSnapshotCacheDovecot: every change another client can make to the
// listing invalidates the cached entry.
func TestSnapshotCacheDovecot(t *testing.T) {
	st := sharedDovecot(t)
	cc := newCacheCase(t, st, nil)
	uids := cc.md.uids

	cc.check("first login", false, 4)
	cc.updated("first login", false)
	cc.check("unchanged", true, 4)
	cc.check("unchanged again", true, 4)

	cc.other(func(c *imapclient.Client) {
		if _, err := dovecot.AppendWith(c, "INBOX", backendtest.Messages()[4]); err != nil {
			t.Fatal(err)
		}
	})
	cc.check("after an append", false, 5)
	cc.updated("after an append", true)
	cc.check("unchanged after the append", true, 5)

	cc.store(uids[1], imap.StoreFlagsAdd, imap.FlagDeleted)
	cc.check("after \\Deleted by another client", false, 4)
	cc.updated("after \\Deleted", true)
	cc.check("unchanged after \\Deleted", true, 4)
	cc.store(uids[1], imap.StoreFlagsDel, imap.FlagDeleted)
	cc.check("after \\Deleted removed", false, 5)
	cc.updated("after \\Deleted removed", true)

	cc.store(uids[3], imap.StoreFlagsAdd, imap.FlagSeen)
	cc.check("after \\Seen by another client", false, 5)
	cc.updated("after \\Seen", true)

	cc.store(uids[2], imap.StoreFlagsAdd, imap.FlagFlagged) // does not change the listing
	cc.check("after \\Flagged", false, 5)
	cc.updated("after \\Flagged", true)
	cc.check("unchanged after \\Flagged", true, 5)

	cc.other(func(c *imapclient.Client) {
		set := imap.UIDSetNum(uids[0])
		if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.UIDExpunge(set).Close(); err != nil {
			t.Fatal(err)
		}
	})
	got := cc.check("after an expunge by another client", false, 4)
	cc.updated("after an expunge", true)
	if got[0].Ref == "1" {
		t.Fatalf("expunged UID still listed: %v", got)
	}

	// An expunge and an append together keep EXISTS; UIDNEXT still moves.
	cc.other(func(c *imapclient.Client) {
		set := imap.UIDSetNum(uids[3])
		if err := c.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.UIDExpunge(set).Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := dovecot.AppendWith(c, "INBOX", backendtest.Messages()[5]); err != nil {
			t.Fatal(err)
		}
	})
	cc.check("after expunge plus append", false, 4)
	cc.updated("after expunge plus append", true)

	// Our own session: RETR sets \Seen, QUIT expunges one message.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mb, err := cc.cached.Login(ctx, cc.md.Credentials())
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := mb.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 {
		t.Fatalf("snapshot before own expunge: %d messages, want 4", len(msgs))
	}
	cc.lastHit = cc.cached.cache.hits.Load()
	r, err := mb.Open(ctx, msgs[0], -1)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	if err := mb.Commit(ctx, msgs[1:2]); err != nil {
		t.Fatal(err)
	}
	mb.Close()
	cc.check("after our own RETR and expunge", false, 3)
	cc.updated("after our own session", true)
	cc.check("unchanged after our own session", true, 3)
}

// TestSnapshotCacheKeyword: with policy flag, the keyword set by another
// popgate (or any client) hides the message at once.
func TestSnapshotCacheKeyword(t *testing.T) {
	cc := newCacheCase(t, sharedDovecot(t), func(c *Config) { c.Delete.Policy = backends.PolicyFlag })
	cc.check("first login", false, 4)
	cc.check("unchanged", true, 4)
	cc.store(cc.md.uids[2], imap.StoreFlagsAdd, backends.DefaultDeleteKeyword)
	cc.check("after the keyword", false, 3)
	cc.check("unchanged after the keyword", true, 3)
}

// TestSnapshotCacheUIDValidity: a mailbox deleted and created again with as
// many messages gets a new UIDVALIDITY, and new UIDLs.
func TestSnapshotCacheUIDValidity(t *testing.T) {
	st := sharedDovecot(t)
	cc := newCacheCase(t, st, func(c *Config) { c.Mailbox = "Box" })
	seed := func() {
		cc.other0(func(c *imapclient.Client) {
			for _, raw := range backendtest.Messages()[:2] {
				if _, err := dovecot.AppendWith(c, "Box", raw); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
	seed()
	first := cc.check("first login", false, 2)
	cc.check("unchanged", true, 2)
	time.Sleep(1100 * time.Millisecond) // Dovecot derives UIDVALIDITY from the clock
	cc.other0(func(c *imapclient.Client) {
		if err := c.Delete("Box").Wait(); err != nil {
			t.Fatal(err)
		}
	})
	seed()
	got := cc.check("after delete and create", false, 2)
	if got[0].UIDL == first[0].UIDL || got[0].Ref != first[0].Ref {
		t.Fatalf("UIDLs before %v and after %v the new UIDVALIDITY", first, got)
	}
	if !strings.HasPrefix(got[0].UIDL, first[0].UIDL[:8]) {
		t.Fatalf("UIDL %q: want the same UID part as %q", got[0].UIDL, first[0].UIDL)
	}
}

// other0 runs f on a second IMAP session, nothing selected.
func (cc *cacheCase) other0(f func(c *imapclient.Client)) {
	c := cc.md.st.dial(cc.t, cc.md.user, cc.md.pass)
	defer c.Close()
	f(c)
	c.Logout().Wait()
}

// TestSnapshotCacheWithoutCondStore: a server without CONDSTORE never
// serves a login from the cache.
func TestSnapshotCacheWithoutCondStore(t *testing.T) {
	cc := newCacheCase(t, newMemStore(t, nil), nil)
	cc.check("first login", false, 4)
	cc.check("second login", false, 4)
	if n := cc.cached.cache.c.Len(); n != 0 {
		t.Fatalf("%d cache entries without CONDSTORE", n)
	}
}

func TestUIDLTemplateAppend(t *testing.T) {
	for _, tmpl := range []string{DefaultUIDLTemplate, "%08XUu%08XUv", "%u", "x%%%010u-%Xv", "%XLu.%v"} {
		p, err := parseUIDLTemplate(tmpl)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range [][2]uint32{{1, 1}, {0xabcdef, 0x5f3e1a2b}, {0xffffffff, 0xffffffff}} {
			got := p.format(c[0], c[1])
			if len(got) > p.maxLen() {
				t.Errorf("%q: %q longer than maxLen %d", tmpl, got, p.maxLen())
			}
			e := &snapEntry{uidValidity: c[1]}
			e.pack([]uint32{c[0]}, []uint32{7}, []bool{false})
			m := e.messages(p)
			if m[0].UIDL != got || m[0].Size != 7 {
				t.Errorf("%q: messages gives %+v, format %q", tmpl, m[0], got)
			}
		}
	}
	p, _ := parseUIDLTemplate("%08XUu%08XUv")
	if got := p.format(0xabcdef, 0x5f3e1a2b); got != "00ABCDEF5F3E1A2B" {
		t.Errorf("upper: %q", got)
	}
	p, _ = parseUIDLTemplate(DefaultUIDLTemplate)
	if got := p.format(0xabcdef, 0x5f3e1a2b); got != "00abcdef5f3e1a2b" {
		t.Errorf("default: %q", got)
	}
}

// BenchmarkLoginSnapshot measures Login + Snapshot + Close of a 10- and a
// 1000-message mailbox on Dovecot, with and without the snapshot cache
// (allocations and time per login, both processes on this machine).
func BenchmarkLoginSnapshot(b *testing.B) {
	st := sharedDovecot(b)
	for _, n := range []int{10, 1000} {
		msgs := make([][]byte, n)
		for i := range msgs {
			msgs[i] = []byte("Subject: m\r\n\r\nbody\r\n")
		}
		md := seedMaildrop(b, st, msgs)
		for _, tc := range []struct {
			name  string
			cache int
		}{{"cache", backends.DefaultSnapshotCache}, {"nocache", 0}} {
			b.Run(fmt.Sprintf("%d/%s", n, tc.name), func(b *testing.B) {
				c := md.config(backendtest.Policy{})
				c.SnapshotCache = tc.cache
				be, err := New(c, testLogger(b))
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					mb, err := be.Login(ctx, md.Credentials())
					if err != nil {
						b.Fatal(err)
					}
					s, err := mb.Snapshot(ctx)
					if err != nil || len(s) != len(msgs) {
						b.Fatal(len(s), err)
					}
					mb.Close()
				}
			})
		}
	}
}

// BenchmarkRetrAll measures one session retrieving every message of a
// 200-message mailbox (100 KB each, mark_seen on), as the retrieval
// benchmark of bench/compare.sh does: "seen" with every message \Seen
// already, "unseen" with \Seen cleared before each session.
func BenchmarkRetrAll(b *testing.B) {
	st := sharedDovecot(b)
	msgs := make([][]byte, 200)
	for i := range msgs {
		msgs[i] = bigMessage(100 << 10)
	}
	md := seedMaildrop(b, st, msgs)
	be, err := New(md.config(backendtest.Policy{}), testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for _, unseen := range []bool{false, true} {
		name := "seen"
		if unseen {
			name = "unseen"
		}
		b.Run(name, func(b *testing.B) {
			var total int64
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if unseen {
					b.StopTimer()
					c := md.client(b)
					if err := c.Store(imap.UIDSet{imap.UIDRange{Start: 1, Stop: 0}}, &imap.StoreFlags{Op: imap.StoreFlagsDel, Silent: true, Flags: []imap.Flag{imap.FlagSeen}}, nil).Close(); err != nil {
						b.Fatal(err)
					}
					c.Logout().Wait()
					c.Close()
					b.StartTimer()
				}
				mb, err := be.Login(ctx, md.Credentials())
				if err != nil {
					b.Fatal(err)
				}
				s, err := mb.Snapshot(ctx)
				if err != nil {
					b.Fatal(err)
				}
				total = 0
				for _, m := range s {
					r, err := mb.Open(ctx, m, -1)
					if err != nil {
						b.Fatal(err)
					}
					n, err := io.Copy(io.Discard, r)
					if err != nil || n != m.Size {
						b.Fatal(n, err)
					}
					total += n
					r.Close()
				}
				if err := mb.Commit(ctx, nil); err != nil {
					b.Fatal(err)
				}
				mb.Close()
			}
			b.SetBytes(total)
		})
	}
}

func TestSnapEntryPack(t *testing.T) {
	var uids, sizes []uint32
	var seen []bool
	uid := uint32(0)
	for i := 0; i < 300; i++ {
		uid += uint32(1 + i%7*1000)
		if i == 299 {
			uid = 0xffffffff
		}
		uids = append(uids, uid)
		sizes = append(sizes, uint32(i*i*977)|uint32(i%2)<<31)
		seen = append(seen, i%3 == 0)
	}
	e := &snapEntry{uidValidity: 42}
	e.pack(uids, sizes, seen)
	// Usual maildrops: consecutive UIDs, messages under 2 MB: 4 octets.
	usual := &snapEntry{}
	usual.pack([]uint32{5, 6, 7, 9}, []uint32{100, 20000, 2<<20 - 1, 300}, make([]bool, 4))
	if len(usual.data) > 4*4 {
		t.Errorf("%d octets for 4 usual messages", len(usual.data))
	}
	p, _ := parseUIDLTemplate(DefaultUIDLTemplate)
	msgs := e.messages(p)
	if len(msgs) != len(uids) {
		t.Fatalf("%d messages, want %d", len(msgs), len(uids))
	}
	for i, m := range msgs {
		if m.Ref != strconv.FormatUint(uint64(uids[i]), 10) || m.Size != int64(sizes[i]) || m.UIDL != p.format(uids[i], 42) {
			t.Fatalf("message %d: %+v, want uid %d size %d", i, m, uids[i], sizes[i])
		}
		if e.isSeen(uids[i]) != seen[i] {
			t.Fatalf("message %d: isSeen %v", i, !seen[i])
		}
		if e.isSeen(uids[i]-1) && (i == 0 || uids[i-1] != uids[i]-1) {
			t.Fatalf("isSeen(%d) for a UID not listed", uids[i]-1)
		}
	}
	var nilEntry *snapEntry
	if nilEntry.isSeen(1) {
		t.Fatal("nil entry: seen")
	}
}

// TestUIDRanges: a SEARCH answer is clipped to what was asked, merged and
// never expanded, whatever the server sends.
func TestUIDRanges(t *testing.T) {
	within := imap.UIDRange{Start: 1, Stop: 100}
	cases := []struct {
		set   imap.UIDSet
		count int64
		in    []uint32
		out   []uint32
	}{
		{nil, 0, nil, []uint32{1, 100}},
		{imap.UIDSet{{Start: 5, Stop: 7}, {Start: 1, Stop: 2}, {Start: 3, Stop: 3}}, 6, []uint32{1, 2, 3, 5, 6, 7}, []uint32{4, 8, 100}},
		{imap.UIDSet{{Start: 10, Stop: 20}, {Start: 15, Stop: 25}, {Start: 26, Stop: 26}}, 17, []uint32{10, 20, 25, 26}, []uint32{9, 27}},
		{imap.UIDSet{{Start: 30, Stop: 20}}, 11, []uint32{20, 30}, []uint32{19, 31}},  // reversed
		{imap.UIDSet{{Start: 90, Stop: 0}}, 11, []uint32{90, 100}, []uint32{89, 101}}, // 90:*
		{imap.UIDSet{{Start: 1, Stop: 4294967295}}, 100, []uint32{1, 100}, []uint32{101, 4294967295}},
		{imap.UIDSet{{Start: 200, Stop: 300}}, 0, nil, []uint32{100, 200}},
	}
	for i, c := range cases {
		rs := newUIDRanges(c.set, within)
		if got := rs.count(); got != c.count {
			t.Errorf("case %d (%v): count %d, want %d (ranges %v)", i, c.set, got, c.count, rs)
		}
		for _, u := range c.in {
			if !rs.contains(u) {
				t.Errorf("case %d (%v): %d not contained", i, c.set, u)
			}
		}
		for _, u := range c.out {
			if rs.contains(u) {
				t.Errorf("case %d (%v): %d contained", i, c.set, u)
			}
		}
	}
}

// BenchmarkPollSnapshot is a login of a device polling a 1,000-message
// maildrop where, since its last login, one message arrived ("append"),
// or one arrived and the one it fetched last time was deleted ("churn",
// fetchmail's default). With the cache the listing is brought up to date
// (listSince); without it, what every changed mailbox cost before: the
// whole UID FETCH 1:*. The change is made by another client, untimed.
func BenchmarkPollSnapshot(b *testing.B) {
	st := sharedDovecot(b)
	const n = 1000
	msg := []byte("Subject: m\r\n\r\nbody\r\n")
	for _, churn := range []bool{false, true} {
		for _, tc := range []struct {
			name  string
			cache int
		}{{"cache", backends.DefaultSnapshotCache}, {"nocache", 0}} {
			name := "append/" + tc.name
			if churn {
				name = "churn/" + tc.name
			}
			b.Run(name, func(b *testing.B) {
				msgs := make([][]byte, n)
				for i := range msgs {
					msgs[i] = msg
				}
				md := seedMaildrop(b, st, msgs)
				c := md.config(backendtest.Policy{})
				c.SnapshotCache = tc.cache
				be, err := New(c, testLogger(b))
				if err != nil {
					b.Fatal(err)
				}
				other := md.client(b)
				defer other.Close()
				ctx := context.Background()
				poll := func() []backends.Message {
					mb, err := be.Login(ctx, md.Credentials())
					if err != nil {
						b.Fatal(err)
					}
					s, err := mb.Snapshot(ctx)
					if err != nil {
						b.Fatal(err)
					}
					mb.Close()
					return s
				}
				s := poll()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					if churn {
						uid, _ := parseRef(s[0].Ref)
						set := imap.UIDSetNum(uid)
						if err := other.Store(set, &imap.StoreFlags{Op: imap.StoreFlagsAdd, Silent: true, Flags: []imap.Flag{imap.FlagDeleted}}, nil).Close(); err != nil {
							b.Fatal(err)
						}
						if err := other.UIDExpunge(set).Close(); err != nil {
							b.Fatal(err)
						}
					}
					if _, err := dovecot.AppendWith(other, "INBOX", msg); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					s = poll()
				}
				b.StopTimer()
				if tc.cache != 0 && be.cache.updates.Load() < int64(b.N) {
					b.Fatalf("%d of %d polls brought the cached listing up to date", be.cache.updates.Load(), b.N)
				}
			})
		}
	}
}

// TestSnapshotCacheRandomChanges: after random rounds of appends, flag
// changes (\Deleted set and removed, \Seen) and expunges by another client,
// the cached listing brought up to date always equals a fresh one.
func TestSnapshotCacheRandomChanges(t *testing.T) {
	cc := newCacheCase(t, sharedDovecot(t), nil)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	cc.check("first login", false, 4)
	other := cc.md.client(t)
	defer other.Close()
	store := func(uids []imap.UID, op imap.StoreFlagsOp, flag imap.Flag) {
		if len(uids) == 0 {
			return
		}
		if err := other.Store(imap.UIDSetNum(uids...), &imap.StoreFlags{Op: op, Silent: true, Flags: []imap.Flag{flag}}, nil).Close(); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 30 {
		data, err := other.UIDSearch(&imap.SearchCriteria{}, nil).Wait()
		if err != nil {
			t.Fatal(err)
		}
		all := data.AllUIDs()
		pick := func(p float64) []imap.UID {
			var out []imap.UID
			for _, u := range all {
				if rng.Float64() < p {
					out = append(out, u)
				}
			}
			return out
		}
		store(pick(0.15), imap.StoreFlagsAdd, imap.FlagDeleted)
		store(pick(0.15), imap.StoreFlagsDel, imap.FlagDeleted)
		store(pick(0.2), imap.StoreFlagsAdd, imap.FlagSeen)
		store(pick(0.1), imap.StoreFlagsDel, imap.FlagSeen)
		if gone := pick(0.1); len(gone) > 0 {
			store(gone, imap.StoreFlagsAdd, imap.FlagDeleted)
			if err := other.UIDExpunge(imap.UIDSetNum(gone...)).Close(); err != nil {
				t.Fatal(err)
			}
		}
		for range rng.IntN(4) {
			if _, err := dovecot.AppendWith(other, "INBOX", backendtest.Messages()[rng.IntN(4)]); err != nil {
				t.Fatal(err)
			}
		}
		if err := other.Noop().Wait(); err != nil {
			t.Fatal(err)
		}
		cc.compare(fmt.Sprintf("round %d", round))
	}
	t.Logf("%d of 30 listings brought up to date", cc.cached.cache.updates.Load())
	if cc.cached.cache.updates.Load() == 0 {
		t.Error("no listing was brought up to date")
	}
}

// compare is check without a word on how the cached snapshot was made.
func (cc *cacheCase) compare(step string) {
	t := cc.t
	t.Helper()
	got, gotSeen := snapshotSeen(t, cc.cached, cc.md)
	want, wantSeen := snapshotSeen(t, cc.fresh, cc.md)
	if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotSeen, wantSeen) {
		t.Fatalf("%s: cached snapshot\n%v %v\nwant (uncached)\n%v %v", step, got, gotSeen, want, wantSeen)
	}
}
