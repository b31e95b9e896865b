package haproxy

import (
	"bufio"
	"net"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// TestProxyV2AndHealth: a connection through HAProxy arrives with a PROXY v2
// header naming the client's address, and the health check follows /readyz.
func TestProxyV2AndHealth(t *testing.T) {
	Require(t)
	backend, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer backend.Close()
	var ready atomic.Bool
	ready.Store(true)
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || r.Header.Get("Authorization") != "Bearer tok" || !ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusOK)
	})}
	go hs.Serve(hl)
	defer hs.Close()

	s := Start(t, Options{
		Backends:   []Backend{{Name: "only", Addr: backend.Addr().String(), CheckAddr: hl.Addr().String()}},
		SendProxy:  "v2",
		CheckToken: "tok",
	})
	waitState(t, s, "only", "UP")

	headers := make(chan *proxyproto.Header, 1)
	go func() {
		c, err := backend.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		h, err := proxyproto.Read(bufio.NewReader(c))
		if err != nil {
			t.Errorf("reading the PROXY header: %v", err)
		}
		headers <- h
	}()
	c, err := net.Dial("tcp", s.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	h := <-headers
	if h == nil || h.Version != 2 {
		t.Fatalf("header %+v, want version 2", h)
	}
	if got, want := h.SourceAddr.String(), c.LocalAddr().String(); got != want {
		t.Errorf("header source %s, want the client's %s", got, want)
	}

	ready.Store(false)
	waitState(t, s, "only", "DOWN")
}

func waitState(t *testing.T, s *Server, name, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := s.States()
		if err != nil {
			t.Fatal(err)
		}
		if st[name] == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server %s is %q, want %q; log: %s", name, st[name], want, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
