package rest_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"runtime"
	"testing"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/backends/rest"
	"github.com/popgate/popgate/examples/maildir-store/store"
	"github.com/popgate/popgate/examples/maildir-store/store/storetest"
)

// BenchmarkSnapshot100k lists a 100,000-message maildrop (one page, as a
// store may send it) and reports the heap allocated per message, and the
// heap the snapshot keeps per message (its []backends.Message and ids).
//
//	go test ./backends/rest -run '^$' -bench Snapshot100k -benchmem
func BenchmarkSnapshot100k(b *testing.B) {
	const n = 100000
	var page bytes.Buffer
	page.WriteString(`{"messages":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			page.WriteByte(',')
		}
		fmt.Fprintf(&page, `{"id":"1700000000.M%06dP1.host","size":%d}`, i, 2000+i%50000)
	}
	page.WriteString(`],"next":null,"state":"s1"}`)
	f := &fake{}
	f.on("GET /messages", func(w http.ResponseWriter, r *http.Request) { w.Write(page.Bytes()) })
	u := serveFake(b, f)
	be, err := rest.New(cfg(u, func(c *rest.Config) { c.SnapshotCache = 0 }), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	ctx := context.Background()
	var before, after runtime.MemStats
	var kept []backends.Message
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		mb, err := be.Login(ctx, creds)
		if err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&before)
		kept, err = mb.Snapshot(ctx)
		if err != nil || len(kept) != n {
			b.Fatal(err, len(kept))
		}
		runtime.ReadMemStats(&after)
		runtime.GC()
		var live runtime.MemStats
		runtime.ReadMemStats(&live)
		b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/n, "alloc-B/msg")
		b.ReportMetric(float64(int64(live.HeapAlloc)-int64(before.HeapAlloc))/n, "kept-B/msg")
		mb.Close()
		runtime.KeepAlive(kept)
	}
}

// BenchmarkIdleSessionHeap opens sessions on a 1000-message maildrop of the
// reference store (the second and later served from the snapshot cache
// after a 304) and reports the heap each open Mailbox keeps, without the
// snapshot slice, which the proxy compacts and drops.
//
//	go test ./backends/rest -run '^$' -bench IdleSessionHeap
func BenchmarkIdleSessionHeap(b *testing.B) {
	root := storetest.NewRoot(b)
	root.AddUser(b, "u", "pw")
	for i := 0; i < 1000; i++ {
		root.Deliver(b, "u", []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i)))
	}
	u := root.Serve(b, store.Options{}, nil)
	be, err := rest.New(cfg(u), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	ctx := context.Background()
	c := backends.Credentials{Username: "u", Password: "pw", Mechanism: "USER"}
	const sessions = 200
	for i := 0; i < b.N; i++ {
		var mbs []backends.Mailbox
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for j := 0; j < sessions; j++ {
			mb, err := be.Login(ctx, c)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := mb.Snapshot(ctx); err != nil {
				b.Fatal(err)
			}
			mbs = append(mbs, mb)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/sessions, "heap-B/session")
		for _, mb := range mbs {
			mb.Close()
		}
	}
}
