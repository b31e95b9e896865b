package proxyproto_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/proxyproto"
	"github.com/popgate/popgate/proxy"
)

// TestConnectionLimitUsesHeaderAddress: behind a balancer every connection
// comes from its address; session.max_connections_per_ip counts the
// client address of the PROXY header (issue 12: limits counted at accept
// time move after the header is read). Two clients behind one balancer
// both get in; a second connection of one client is refused.
func TestConnectionLimitUsesHeaderAddress(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := proxyproto.ParseTrusted([]string{"127.0.0.1/32"})
	if err != nil {
		t.Fatal(err)
	}
	l := proxyproto.Listen(inner, proxyproto.Options{Trusted: trusted, Logger: zerolog.Nop()})
	srv := proxy.New(proxy.Options{Backend: memory.New(), MaxConnsPerIP: 1, AllowPlaintext: true, Logger: zerolog.Nop()})
	go srv.Serve(l, proxy.ListenerConfig{Name: "pop3", TLS: proxy.TLSNone})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	greet := func(client string) string {
		c, err := net.DialTimeout("tcp", inner.Addr().String(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_, port, _ := net.SplitHostPort(inner.Addr().String())
		fmt.Fprintf(c, "PROXY TCP4 %s 127.0.0.1 40001 %s\r\n", client, port)
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return line
	}
	if l := greet("192.0.2.1"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("first client: %q", l)
	}
	if l := greet("192.0.2.2"); !strings.HasPrefix(l, "+OK") {
		t.Fatalf("second client behind the same balancer: %q (the limit counted the balancer's address)", l)
	}
	if l := greet("192.0.2.1"); !strings.HasPrefix(l, "-ERR [SYS/TEMP] too many connections") {
		t.Fatalf("second connection of the first client: %q, want refused", l)
	}
}
