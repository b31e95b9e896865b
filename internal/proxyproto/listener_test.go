package proxyproto_test

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"

	"github.com/popgate/popgate/internal/proxyproto"
	"github.com/popgate/popgate/internal/testutil"
)

type refusals struct {
	mu      sync.Mutex
	reasons []string
}

func (r *refusals) add(s string) {
	r.mu.Lock()
	r.reasons = append(r.reasons, s)
	r.mu.Unlock()
}

func (r *refusals) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.reasons...)
}

func listen(t *testing.T, trusted string, opts proxyproto.Options) (*proxyproto.Listener, *refusals, *testutil.SyncBuffer) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p, err := proxyproto.ParseTrusted([]string{trusted})
	if err != nil {
		t.Fatal(err)
	}
	r := &refusals{}
	logs := &testutil.SyncBuffer{}
	opts.Trusted = p
	opts.OnRefused = r.add
	opts.Logger = zerolog.New(logs)
	l := proxyproto.Listen(inner, opts)
	t.Cleanup(func() { l.Close() })
	return l, r, logs
}

func acceptOne(t *testing.T, l net.Listener) <-chan net.Conn {
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	return ch
}

func TestV1(t *testing.T) {
	l, _, _ := listen(t, "127.0.0.1", proxyproto.Options{})
	got := acceptOne(t, l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The header and the first client bytes in one write: nothing is lost.
	io.WriteString(c, "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\nCAPA\r\n")
	sc := <-got
	if sc == nil {
		t.Fatal("no connection accepted")
	}
	defer sc.Close()
	if sc.RemoteAddr().String() != "192.0.2.7:40000" || sc.LocalAddr().String() != "198.51.100.1:110" {
		t.Fatalf("addresses %v %v", sc.RemoteAddr(), sc.LocalAddr())
	}
	line, err := bufio.NewReader(sc).ReadString('\n')
	if err != nil || line != "CAPA\r\n" {
		t.Fatalf("after the header: %q %v", line, err)
	}
}

func TestV2WithImplicitTLS(t *testing.T) {
	l, _, _ := listen(t, "127.0.0.0/8", proxyproto.Options{})
	got := acceptOne(t, l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := pp.HeaderProxyFromAddrs(2, &net.TCPAddr{IP: net.ParseIP("2001:db8::5"), Port: 5555}, &net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 995})
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	sc := <-got
	if sc == nil {
		t.Fatal("no connection accepted")
	}
	defer sc.Close()
	if sc.RemoteAddr().String() != "[2001:db8::5]:5555" {
		t.Fatalf("remote %v", sc.RemoteAddr())
	}
	// TLS after the header (implicit TLS on port 995).
	cert, err := testutil.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		ts := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{cert.TLS}})
		if err := ts.Handshake(); err != nil {
			errc <- err
			return
		}
		_, err := io.WriteString(ts, "+OK POP3 ready\r\n")
		errc <- err
	}()
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true})
	line, err := bufio.NewReader(tc).ReadString('\n')
	if err != nil || line != "+OK POP3 ready\r\n" {
		t.Fatalf("over TLS: %q %v", line, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestV2Local: a LOCAL header (the balancer's own health check) keeps the
// socket's addresses.
func TestV2Local(t *testing.T) {
	l, _, _ := listen(t, "127.0.0.1/32", proxyproto.Options{})
	got := acceptOne(t, l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := &pp.Header{Version: 2, Command: pp.LOCAL, TransportProtocol: pp.UNSPEC}
	if _, err := h.WriteTo(c); err != nil {
		t.Fatal(err)
	}
	sc := <-got
	if sc == nil {
		t.Fatal("no connection accepted")
	}
	defer sc.Close()
	if sc.RemoteAddr().String() != c.LocalAddr().String() {
		t.Fatalf("remote %v, want the socket's %v", sc.RemoteAddr(), c.LocalAddr())
	}
}

// closedByServer fails t unless the server closed c without sending
// anything.
func closedByServer(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || err == nil {
		t.Fatalf("read %d %v, want the connection closed", n, err)
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("the connection stayed open")
	}
}

func TestRefusals(t *testing.T) {
	t.Run("untrusted", func(t *testing.T) {
		l, r, logs := listen(t, "10.0.0.0/8", proxyproto.Options{LogInterval: time.Hour})
		for range 3 {
			c, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "PROXY TCP4 192.0.2.7 198.51.100.1 40000 110\r\n")
			closedByServer(t, c)
			c.Close()
		}
		waitRefusals(t, r, 3)
		if got := strings.Count(logs.String(), "connection refused"); got != 1 {
			t.Fatalf("%d log lines for 3 refusals in one interval, want 1:\n%s", got, logs)
		}
		if !strings.Contains(logs.String(), `"reason":"untrusted"`) {
			t.Fatalf("log: %s", logs)
		}
	})
	t.Run("missing", func(t *testing.T) {
		l, r, _ := listen(t, "127.0.0.1", proxyproto.Options{})
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "USER alice\r\n")
		closedByServer(t, c)
		waitRefusals(t, r, 1)
		if r.list()[0] != proxyproto.ReasonMissing {
			t.Fatalf("reasons %v", r.list())
		}
	})
	t.Run("silent", func(t *testing.T) {
		l, r, _ := listen(t, "127.0.0.1", proxyproto.Options{HeaderTimeout: 200 * time.Millisecond})
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		closedByServer(t, c)
		waitRefusals(t, r, 1)
	})
	t.Run("invalid", func(t *testing.T) {
		l, r, _ := listen(t, "127.0.0.1", proxyproto.Options{})
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "PROXY TCP4 not-an-address 198.51.100.1 40000 110\r\n")
		closedByServer(t, c)
		waitRefusals(t, r, 1)
		if r.list()[0] != proxyproto.ReasonInvalid {
			t.Fatalf("reasons %v", r.list())
		}
	})
}

// TestSlowHeaderDoesNotBlock: a peer that never sends its header does not
// keep the next connection from being accepted.
func TestSlowHeaderDoesNotBlock(t *testing.T) {
	l, _, _ := listen(t, "127.0.0.1", proxyproto.Options{HeaderTimeout: time.Minute})
	slow, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	got := acceptOne(t, l)
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PROXY TCP4 192.0.2.9 198.51.100.1 1 110\r\n")
	sc := <-got
	if sc == nil || sc.RemoteAddr().String() != "192.0.2.9:1" {
		t.Fatalf("accepted %v", sc)
	}
	sc.Close()
	l.Close()
	closedByServer(t, slow) // Close also closes connections still waiting
}

func waitRefusals(t *testing.T, r *refusals, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(r.list()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("refusals %v, want %d", r.list(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestParseTrusted(t *testing.T) {
	p, err := proxyproto.ParseTrusted([]string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "10.1.2.3/8"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("10.0.0.0/8")}
	for i := range want {
		if p[i] != want[i] {
			t.Fatalf("%v, want %v", p, want)
		}
	}
	if _, err := proxyproto.ParseTrusted([]string{"ten"}); err == nil {
		t.Fatal("ParseTrusted accepted garbage")
	}
}
