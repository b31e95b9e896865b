package imap

import (
	"bytes"
	"context"
	"fmt"
	"github.com/popgate/popgate/backends"
	"hash/crc32"
	"io"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/popgate/popgate/backends/backendtest"
)

// bigMessage returns a message of about size octets with CRLF lines.
func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 200)
	b.WriteString("Subject: big\r\nFrom: a@example.org\r\nMessage-ID: <big@example.org>\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%08d ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 .......\r\n", i)
	}
	return b.Bytes()
}

// heapWatch samples the live heap until stopped and reports the peak
// growth over the starting point.
type heapWatch struct {
	base uint64
	peak atomic.Uint64
	stop chan struct{}
	done chan struct{}
}

func watchHeap() *heapWatch {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	w := &heapWatch{base: ms.HeapAlloc, stop: make(chan struct{}), done: make(chan struct{})}
	w.peak.Store(ms.HeapAlloc)
	go func() {
		defer close(w.done)
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-w.stop:
				return
			case <-t.C:
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				if ms.HeapAlloc > w.peak.Load() {
					w.peak.Store(ms.HeapAlloc)
				}
			}
		}
	}()
	return w
}

func (w *heapWatch) growth() uint64 {
	close(w.stop)
	<-w.done
	if p := w.peak.Load(); p > w.base {
		return p - w.base
	}
	return 0
}

// retrieveBig logs in, RETRs the one message through io.Discard (computing
// a checksum) and returns octets, checksum and the peak heap growth.
func retrieveBig(tb testing.TB, md *maildrop, p backendtest.Policy) (int64, uint32, uint64, int64) {
	b, err := New(md.config(p), testLogger(tb))
	if err != nil {
		tb.Fatal(err)
	}
	ctx := context.Background()
	mb, err := b.Login(ctx, md.Credentials())
	if err != nil {
		tb.Fatal(err)
	}
	defer mb.Close()
	snap, err := mb.Snapshot(ctx)
	if err != nil || len(snap) != 1 {
		tb.Fatalf("snapshot %v, %v", snap, err)
	}
	w := watchHeap()
	r, err := mb.Open(ctx, snap[0], -1)
	if err != nil {
		tb.Fatal(err)
	}
	h := crc32.NewIEEE()
	n, err := io.Copy(io.Discard, io.TeeReader(r, h))
	r.Close()
	growth := w.growth()
	if err != nil {
		tb.Fatal(err)
	}
	return n, h.Sum32(), growth, snap[0].Size
}

// TestRetr50MBMemoryFlat pins DESIGN invariant 7 (issue 3 item 3): a 50 MB
// message streams with the heap growing by less than 8 MB, byte-exact and
// of exactly the snapshot size. Dovecot runs out of process, so the
// measured heap is the gateway's alone.
func TestRetr50MBMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("50 MB message")
	}
	st := sharedDovecot(t)
	raw := bigMessage(50 << 20)
	md := seedMaildrop(t, st, [][]byte{raw})
	n, sum, growth, size := retrieveBig(t, md, backendtest.Policy{})
	if n != size || n != int64(len(raw)) {
		t.Fatalf("RETR delivered %d octets, snapshot size %d, appended %d", n, size, len(raw))
	}
	if sum != crc32.ChecksumIEEE(raw) {
		t.Fatal("content differs from what was appended")
	}
	t.Logf("50 MB RETR: peak heap growth %.2f MB", float64(growth)/(1<<20))
	if growth >= 8<<20 {
		t.Fatalf("heap grew by %d octets while streaming 50 MB; want < 8 MB", growth)
	}
}

// BenchmarkRetr50MB reports throughput and the peak heap growth of a RETR
// of a 50 MB message from Dovecot.
func BenchmarkRetr50MB(b *testing.B) {
	st := sharedDovecot(b)
	raw := bigMessage(50 << 20)
	md := seedMaildrop(b, st, [][]byte{raw})
	b.SetBytes(int64(len(raw)))
	b.ResetTimer()
	var peak uint64
	for i := 0; i < b.N; i++ {
		_, _, growth, _ := retrieveBig(b, md, backendtest.Policy{})
		peak = max(peak, growth)
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
}

// BenchmarkIdleSessions reports the gateway heap held per logged-in, idle
// upstream session (Login + Snapshot of a 20-message mailbox, Dovecot).
func BenchmarkIdleSessions(b *testing.B) {
	st := sharedDovecot(b)
	msgs := make([][]byte, 20)
	for i := range msgs {
		msgs[i] = bigMessage(2 << 10)
	}
	md := seedMaildrop(b, st, msgs)
	be, err := New(md.config(backendtest.Policy{}), testLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	const n = 200
	var perSession float64
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		var open []backends.Mailbox
		var snaps [][]backends.Message
		for j := 0; j < n; j++ {
			mb, err := be.Login(context.Background(), md.Credentials())
			if err != nil {
				b.Fatal(err)
			}
			s, err := mb.Snapshot(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			open = append(open, mb)
			snaps = append(snaps, s)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		perSession = float64(after.HeapAlloc-before.HeapAlloc) / n / 1024
		for _, mb := range open {
			mb.Close()
		}
		runtime.KeepAlive(snaps)
	}
	b.ReportMetric(perSession, "heap-KB/session")
}
