package tlsconf

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// BenchmarkHandshake measures full TLS handshakes per second on an
// implicit-TLS listener using a Manager's ServerConfig (static files), with
// an ECDSA P-256 and an RSA 2048 certificate. The client keeps no session
// cache, so every handshake is a full one (no resumption). Client and
// server share the machine's CPUs; handshakes/s counts completed
// handshakes over all parallel clients, cpu-µs/handshake is the process CPU
// time (client + server) per handshake.
//
//	go test -run '^$' -bench Handshake -benchtime 3s ./tlsconf
func BenchmarkHandshake(b *testing.B) {
	for _, key := range []string{"ecdsa-p256", "rsa-2048"} {
		for _, ver := range []uint16{tls.VersionTLS13, tls.VersionTLS12} {
			name := fmt.Sprintf("%s/tls1.%d", key, ver-tls.VersionTLS10)
			b.Run(name, func(b *testing.B) { benchHandshake(b, key, ver) })
		}
	}
}

func benchHandshake(b *testing.B, key string, ver uint16) {
	ca := newTestCA(b)
	dir := b.TempDir()
	kt := "ecdsa"
	if key == "rsa-2048" {
		kt = "rsa"
	}
	certPEM, keyPEM, _ := ca.issue(b, kt, "pop.example.test")
	c := Config{CertFile: filepath.Join(dir, "c.pem"), KeyFile: filepath.Join(dir, "k.pem")}
	writePair(b, c.CertFile, c.KeyFile, certPEM, keyPEM)
	m, err := New(context.Background(), c, zerolog.Nop(), WithPollInterval(0))
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(time.Minute))
				tc := tls.Server(conn, m.ServerConfig())
				if tc.Handshake() == nil {
					// Wait for the client to close so the server side
					// finishes its work (session tickets) inside the timing.
					var buf [1]byte
					_, _ = tc.Read(buf[:])
				}
			}()
		}
	}()
	addr := ln.Addr().String()
	clientCfg := &tls.Config{RootCAs: ca.pool, ServerName: "pop.example.test",
		MinVersion: ver, MaxVersion: ver, NextProtos: []string{"pop3"}}

	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			conn, err := tls.Dial("tcp", addr, clientCfg)
			if err != nil {
				b.Error(err)
				return
			}
			conn.Close()
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "handshakes/s")
	if cpu := processCPU() - cpu0; cpu > 0 {
		// CPU per handshake, client and server sides together: steadier
		// than handshakes/s on a shared machine.
		b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/handshake")
	}
}
