package imap

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends/backendtest"
	"github.com/popgate/popgate/proxy"
)

// BenchmarkPOP3RetrDovecot measures the whole RETR path: a POP3 client
// over loopback, proxy.Server, this backend, a real Dovecot upstream. One
// op is one session (USER, PASS, STAT, RETR 1..n, QUIT) on a maildrop of
// 100 messages of 2–200 KB (uniform, fixed seed, like bench/compare.sh);
// c=1 runs one client, c=8 eight at once, each on its own maildrop. Besides
// MB/s it reports this process's CPU time per GB retrieved (user+system,
// from getrusage: popgate and the benchmark's own POP3 client, not Dovecot),
// which the machine's load changes far less than MB/s:
//
//	go test -run '^$' -bench POP3RetrDovecot -benchtime 20x ./backends/imap/
func BenchmarkPOP3RetrDovecot(b *testing.B) {
	st := sharedDovecot(b)
	rng := rand.New(rand.NewPCG(1, 2))
	msgs := make([][]byte, 100)
	var total int64
	for i := range msgs {
		msgs[i] = bigMessage(2048 + rng.IntN(200<<10-2048))
		total += int64(len(msgs[i]))
	}
	const maxConc = 8
	mds := make([]*maildrop, maxConc)
	for i := range mds {
		mds[i] = seedMaildrop(b, st, msgs)
	}
	cfg := mds[0].config(backendtest.Policy{})
	be, err := New(cfg, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	defer be.Close()
	srv := proxy.New(proxy.Options{Backend: be, AllowPlaintext: true, Logger: zerolog.Nop()})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l, proxy.ListenerConfig{Name: "bench"})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	addr := l.Addr().String()
	for _, md := range mds { // warm Dovecot's indexes and the page cache
		if err := pop3RetrAll(addr, md, len(msgs)); err != nil {
			b.Fatal(err)
		}
	}
	for _, conc := range []int{1, maxConc} {
		b.Run(fmt.Sprintf("c=%d", conc), func(b *testing.B) {
			var ru0, ru1 syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			b.SetBytes(total)
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			var mu sync.Mutex
			var firstErr error
			next := make(chan struct{})
			for w := 0; w < conc; w++ {
				wg.Add(1)
				go func(md *maildrop) {
					defer wg.Done()
					for range next {
						if err := pop3RetrAll(addr, md, len(msgs)); err != nil {
							mu.Lock()
							firstErr = err
							mu.Unlock()
						}
					}
				}(mds[w])
			}
			for i := 0; i < b.N; i++ {
				next <- struct{}{}
			}
			close(next)
			wg.Wait()
			b.StopTimer()
			if firstErr != nil {
				b.Fatal(firstErr)
			}
			syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
			gb := float64(total) * float64(b.N) / 1e9
			b.ReportMetric(cpu.Seconds()/gb, "cpu-s/GB")
			b.ReportMetric(float64(time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano()).Seconds())/gb, "sys-s/GB")
		})
	}
}

// pop3RetrAll runs one POP3 session retrieving messages 1..n of md.
func pop3RetrAll(addr string, md *maildrop, n int) error {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Minute))
	r := bufio.NewReaderSize(c, 64<<10)
	ok := func() error {
		l, err := r.ReadSlice('\n')
		if err != nil || !bytes.HasPrefix(l, []byte("+OK")) {
			return fmt.Errorf("got %q, %v", l, err)
		}
		return nil
	}
	if err := ok(); err != nil {
		return err
	}
	io.WriteString(c, "USER "+md.user+"\r\nPASS "+md.pass+"\r\n")
	if err := ok(); err != nil {
		return err
	}
	if err := ok(); err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for i := 1; i <= n; i++ {
		io.WriteString(c, "RETR "+strconv.Itoa(i)+"\r\n")
		if err := ok(); err != nil {
			return err
		}
		if _, err := readDotBody(r, buf); err != nil {
			return err
		}
	}
	io.WriteString(c, "QUIT\r\n")
	return ok()
}

// readDotBody reads a multi-line body up to CRLF.CRLF (nothing follows it
// in this benchmark, so it ends the last read).
func readDotBody(r *bufio.Reader, buf []byte) (int64, error) {
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
