package migration

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2/imapclient"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/imap"
	"github.com/popgate/popgate/internal/pop3client"
	"github.com/popgate/popgate/internal/testserver/dovecot"
)

const benchMessages = 10000

var (
	benchOnce sync.Once
	benchSrv  *dovecot.Server
	benchErr  error
)

// benchServer is one Dovecot holding benchMessages small messages for
// user "old" (read over POP3, UIDL format %v.%u) and the same messages for
// user "new" (read over IMAP by popgate's backend).
func benchServer(b *testing.B) *dovecot.Server {
	b.Helper()
	dovecot.Require(b)
	benchOnce.Do(func() {
		benchSrv, benchErr = dovecot.New(dovecot.Options{
			Users: map[string]string{"old": "pw", "new": "pw"},
			POP3:  true,
			Extra: "pop3_uidl_format = %v.%u\n",
		})
		if benchErr != nil {
			return
		}
		for _, user := range []string{"old", "new"} {
			var c *imapclient.Client
			if c, benchErr = benchSrv.Dial(user); benchErr != nil {
				return
			}
			for i := 1; i <= benchMessages && benchErr == nil; i++ {
				msg := fmt.Appendf(nil, "Message-ID: <bench.%d@example.com>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nFrom: a@example.com\r\nSubject: message %d\r\n\r\nbody %d\r\n", i, i, i)
				_, benchErr = dovecot.AppendWith(c, "INBOX", msg)
			}
			c.Logout().Wait()
		}
	})
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchSrv
}

// BenchmarkCapture10k: popgate uidl capture of a 10,000-message maildrop
// (UIDL, then TOP n 0 of each, pipelined), Dovecot on the same machine.
//
//	go test -run '^$' -bench Capture10k -benchtime 3x ./internal/migration
func BenchmarkCapture10k(b *testing.B) {
	srv := benchServer(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := pop3client.Dial(srv.POP3Addr(), pop3client.Options{Timeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		res, err := Capture(c, "old", "pw")
		c.Close()
		if err != nil || len(res.Entries) != benchMessages {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstLogin10k: the first login through popgate after a capture
// of 10,000 messages (IMAP login, snapshot, header fetch of every message,
// match) and a later login of the unchanged mailbox (no header fetch).
// heap-MB is the live heap after the first login, the map and the key
// cache included.
//
//	go test -run '^$' -bench FirstLogin10k -benchtime 3x ./internal/migration
func BenchmarkFirstLogin10k(b *testing.B) {
	srv := benchServer(b)
	c, err := pop3client.Dial(srv.POP3Addr(), pop3client.Options{Timeout: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	res, err := Capture(c, "old", "pw")
	c.Close()
	if err != nil {
		b.Fatal(err)
	}
	store := Store{Dir: b.TempDir()}
	const maildrop = "bench/new"
	if err := store.Save(NewMap(maildrop, "old", "bench", res)); err != nil {
		b.Fatal(err)
	}
	cfg := imap.DefaultConfig()
	cfg.Address = srv.Addr()
	cfg.TLS = "none"
	be, err := imap.New(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	ctx := context.Background()
	login := func(mp *Mapper) Stats {
		mb, err := be.Login(ctx, backends.Credentials{Username: "new", Password: "pw"})
		if err != nil {
			b.Fatal(err)
		}
		defer mb.Close()
		msgs, err := mb.Snapshot(ctx)
		if err != nil {
			b.Fatal(err)
		}
		_, st, err := mp.MapWithStats(ctx, maildrop, mb, msgs)
		if err != nil || st.Matched != benchMessages {
			b.Fatalf("%+v %v", st, err)
		}
		return st
	}
	b.Run("first", func(b *testing.B) {
		b.ReportAllocs()
		var heap uint64
		for i := 0; i < b.N; i++ {
			mp := NewMapper(store, nil, 0, zerolog.Nop())
			runtime.GC()
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			login(mp)
			runtime.GC()
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			heap = after.HeapAlloc - min(after.HeapAlloc, before.HeapAlloc)
			runtime.KeepAlive(mp)
		}
		b.ReportMetric(float64(heap)/1e6, "heap-MB")
	})
	b.Run("unchanged", func(b *testing.B) {
		mp := NewMapper(store, nil, 0, zerolog.Nop())
		login(mp)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			login(mp)
		}
	})
}
