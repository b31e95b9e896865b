package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends/memory"
)

// Benchmarks against backends/memory over loopback TCP:
//
//	go test -run '^$' -bench . -benchmem -count 5 ./proxy/

func benchServer(b *testing.B, be *memory.Backend) string {
	b.Helper()
	srv := New(Options{Backend: be, AllowPlaintext: true, Logger: zerolog.Nop()})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l, ListenerConfig{Name: "bench"})
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return l.Addr().String()
}

// expectOK reads one line and fails unless it is +OK.
func expectOK(b *testing.B, r *bufio.Reader) {
	l, err := r.ReadSlice('\n')
	if err != nil || !bytes.HasPrefix(l, []byte("+OK")) {
		b.Fatalf("got %q, %v", l, err)
	}
}

// BenchmarkSessions measures connect, USER, PASS, STAT, QUIT, one command
// at a time, from parallel clients (each with its own maildrop).
func BenchmarkSessions(b *testing.B) {
	be := memory.New()
	const users = 256
	for i := 0; i < users; i++ {
		be.AddUser(fmt.Sprintf("u%d", i), "pw")
		for j := 0; j < 10; j++ {
			be.Append(fmt.Sprintf("u%d", i), []byte("Subject: x\r\n\r\nbody\r\n"))
		}
	}
	addr := benchServer(b, be)
	var next atomic.Int64
	b.ReportAllocs()
	b.SetParallelism(4)
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		user := fmt.Sprintf("u%d", next.Add(1)%users)
		cmds := []string{"USER " + user + "\r\n", "PASS pw\r\n", "STAT\r\n", "QUIT\r\n"}
		for pb.Next() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			r := bufio.NewReader(c)
			expectOK(b, r)
			for _, cmd := range cmds {
				io.WriteString(c, cmd)
				expectOK(b, r)
			}
			c.Close()
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "sessions/s")
}

// benchMessage is a message of about size octets, CRLF lines of 76 octets,
// one line in eight starting with a dot.
func benchMessage(size int) []byte {
	var buf bytes.Buffer
	buf.WriteString("Subject: bench\r\n\r\n")
	for i := 0; buf.Len() < size; i++ {
		if i%8 == 0 {
			buf.WriteString(".")
		} else {
			buf.WriteString("x")
		}
		buf.WriteString(strings.Repeat("abcdefghij", 7) + "abcde\r\n")
	}
	return buf.Bytes()
}

// readBody reads a non-empty multi-line body up to CRLF.CRLF with a fixed
// buffer and returns the octets read. Stuffed data never holds CRLF.CRLF,
// and nothing follows the terminator, so it ends the last read.
func readBody(r *bufio.Reader, buf []byte) (int64, error) {
	var n int64
	var tail []byte
	for {
		k, err := r.Read(buf)
		n += int64(k)
		if k >= 5 {
			tail = append(tail[:0], buf[k-5:k]...)
		} else {
			tail = append(tail, buf[:k]...)
			if len(tail) > 5 {
				tail = tail[len(tail)-5:]
			}
		}
		if string(tail) == "\r\n.\r\n" {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// BenchmarkRETR measures RETR throughput (MB/s of message octets) and the
// bytes allocated per RETR, which must not grow with the message size
// (DESIGN invariant 7): compare B/op of size=1MB and size=10MB.
func BenchmarkRETR(b *testing.B) {
	for _, size := range []int{1 << 20, 10 << 20} {
		b.Run(fmt.Sprintf("size=%dMB", size>>20), func(b *testing.B) {
			be := memory.New()
			be.AddUser("u", "pw")
			msg := benchMessage(size)
			be.Append("u", msg)
			addr := benchServer(b, be)
			c, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReaderSize(c, 64*1024)
			expectOK(b, r)
			io.WriteString(c, "USER u\r\nPASS pw\r\n")
			expectOK(b, r)
			expectOK(b, r)
			buf := make([]byte, 64*1024)
			if n, err := func() (int64, error) {
				io.WriteString(c, "RETR 1\r\n")
				expectOK(b, r)
				return readBody(r, buf)
			}(); err != nil || n < int64(len(msg)) {
				b.Fatalf("RETR read %d octets, %v", n, err)
			}
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				io.WriteString(c, "RETR 1\r\n")
				expectOK(b, r)
				if _, err := readBody(r, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkLongLine reads a 1 MB command line: it is discarded in buffer-
// sized chunks, so B/op stays at the reader's own buffers whatever the
// length (compare with size=1KB).
func BenchmarkLongLine(b *testing.B) {
	for _, size := range []int{1 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("size=%dKB", size>>10), func(b *testing.B) {
			input := []byte(strings.Repeat("x", size) + "\r\nNOOP\r\n")
			src := bytes.NewReader(input)
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				src.Reset(input)
				lr := lineReader{r: bufio.NewReaderSize(src, readBufSize)}
				if _, err := lr.readLine(maxCommandLine, nil); err != errLineTooLong {
					b.Fatal(err)
				}
				if l, err := lr.readLine(maxCommandLine, nil); err != nil || string(l) != "NOOP" {
					b.Fatal(l, err)
				}
			}
		})
	}
}

// BenchmarkIdleSessions measures what one idle logged-in session keeps in
// memory: it opens idleSessions sessions on maildrops of idleMessages
// messages (each its own user), waits until all are in TRANSACTION and
// idle, and reports the growth of HeapInuse and StackInuse per session
// after runtime.GC(). The client ends of the connections live in the same
// process and are counted too (a few hundred octets each). Run it once:
//
//	go test -run '^$' -bench IdleSessions -benchtime 1x ./proxy/
func BenchmarkIdleSessions(b *testing.B) {
	for _, msgs := range []int{10, 1000} {
		b.Run(fmt.Sprintf("messages=%d", msgs), func(b *testing.B) {
			const sessions = 200
			be := memory.New()
			body := []byte("Subject: x\r\n\r\nbody\r\n")
			for i := 0; i < sessions; i++ {
				u := fmt.Sprintf("u%d", i)
				be.AddUser(u, "pw")
				for j := 0; j < msgs; j++ {
					be.Append(u, body)
				}
			}
			addr := benchServer(b, be)
			var conns []net.Conn
			b.Cleanup(func() {
				for _, c := range conns {
					c.Close()
				}
			})
			// Warm the pools and the server with one session that ends.
			readOK := func(c net.Conn, n int) {
				var buf [512]byte
				got := 0
				for got < n {
					k, err := c.Read(buf[:])
					if err != nil {
						b.Fatal(err)
					}
					got += bytes.Count(buf[:k], []byte("\r\n"))
				}
			}
			login := func(i int) net.Conn {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Fatal(err)
				}
				readOK(c, 1)
				io.WriteString(c, fmt.Sprintf("USER u%d\r\nPASS pw\r\nNOOP\r\n", i))
				readOK(c, 3)
				return c
			}
			c := login(0)
			io.WriteString(c, "QUIT\r\n")
			readOK(c, 1)
			c.Close()
			var before, after runtime.MemStats
			time.Sleep(100 * time.Millisecond)
			runtime.GC()
			runtime.ReadMemStats(&before)
			b.ResetTimer()
			for i := 0; i < sessions; i++ {
				conns = append(conns, login(i))
			}
			b.StopTimer()
			time.Sleep(100 * time.Millisecond)
			runtime.GC()
			runtime.GC()
			runtime.ReadMemStats(&after)
			heap := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / sessions
			stack := float64(int64(after.StackInuse)-int64(before.StackInuse)) / sessions
			b.ReportMetric(heap, "heap-B/session")
			b.ReportMetric(stack, "stack-B/session")
			b.ReportMetric(heap+stack, "B/session")
		})
	}
}
