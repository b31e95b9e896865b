package main

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends/memory"
	"github.com/popgate/popgate/internal/testutil"
	"github.com/popgate/popgate/proxy"
)

// attackServer is popgate's engine in-process, in front of the memory
// backend with user "probe" (one message): a STLS listener allowing
// plaintext logins and an implicit-TLS listener, login_timeout 1s.
func attackServer(t *testing.T) (plain, implicit string, log *testutil.SyncBuffer) {
	t.Helper()
	cert, err := testutil.SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	be := memory.New()
	be.AddUser("probe", "probe-pw")
	be.Append("probe", []byte("From: a@example.com\r\nSubject: probe\r\n\r\nhello\r\n.dot\r\n"))
	log = &testutil.SyncBuffer{}
	s := proxy.New(proxy.Options{
		Backend:          be,
		TLSConfig:        &tls.Config{Certificates: []tls.Certificate{cert.TLS}},
		AllowPlaintext:   true,
		LoginTimeout:     time.Second,
		AuthFailureDelay: -1,
		Logger:           zerolog.New(log),
	})
	serve := func(mode proxy.TLSMode) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(ln, proxy.ListenerConfig{Name: string(mode), TLS: mode})
		return ln.Addr().String()
	}
	plain, implicit = serve(proxy.TLSStartTLS), serve(proxy.TLSImplicit)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return plain, implicit, log
}

// field returns the integer value of key in the output line starting with
// prefix.
func field(t *testing.T, out, prefix, key string) int {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, prefix) {
			m := regexp.MustCompile(`\b` + regexp.QuoteMeta(key) + `=(\d+)`).FindStringSubmatch(l)
			if m == nil {
				t.Fatalf("no %s in %q", key, l)
			}
			n, _ := strconv.Atoi(m[1])
			return n
		}
	}
	t.Fatalf("no line %q in:\n%s", prefix, out)
	return 0
}

// Every attack at a small size against the engine: each connection gets
// -ERR or is closed (never ignored, never a panic), the held ones are
// closed by login_timeout, every handshake of a flood ends, and a
// normal client is served throughout.
func TestAttacksAreBounded(t *testing.T) {
	plain, implicit, log := attackServer(t)
	cfg, err := parseFlags([]string{
		"-addr", plain, "-tls-addr", implicit,
		"-attacks", "slowloris,silent,sasl-slow,tls-stall,garbage,tls-flood",
		"-n", "20", "-garbage-n", "3", "-flood-n", "20", "-c", "8", "-sources", "40",
		"-interval", "200ms", "-hold", "5s", "-timeout", "10s",
		"-probe-user", "probe", "-probe-pass", "probe-pw", "-probes", "5",
		"-pid", strconv.Itoa(os.Getpid()),
	}, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	var out testutil.SyncBuffer
	run(cfg, &out)
	o := out.String()
	t.Log("\n" + o)

	for _, p := range []string{"probe quiet:", "probe under attack:"} {
		if n := field(t, o, p, "errors"); n != 0 {
			t.Errorf("%s %d errors", p, n)
		}
	}
	// 20 slowloris, 20 silent, 20 slow SASL lines, 20 stalled on each TLS
	// port: all closed by the server (login_timeout 1s, held 5s).
	if n := field(t, o, "hold ", "opened"); n != 100 {
		t.Errorf("opened %d held connections, want 100", n)
	}
	if n := field(t, o, "hold ", "server_closed"); n != 100 {
		t.Errorf("server closed %d held connections, want all 100 (login_timeout)", n)
	}
	for _, kind := range garbageKinds {
		p := "garbage " + kind + ":"
		if n := field(t, o, p, "conns"); n != 3 {
			t.Errorf("%s %d connections, want 3", p, n)
		}
		if n := field(t, o, p, "closed_by_server"); n != 3 {
			t.Errorf("%s %d closed by the server, want 3 (after QUIT or errors)", p, n)
		}
		switch kind {
		case "longline", "binary", "nul", "authb64":
			if n := field(t, o, p, "answered_err"); n != 3 {
				t.Errorf("%s %d answered -ERR, want 3", p, n)
			}
		}
	}
	// Every handshake completes or is closed by the server (a handshake
	// slower than login_timeout, 1s, on a loaded machine): none hangs.
	for _, p := range []string{"tls-flood implicit:", "tls-flood stls:"} {
		ok, failed := field(t, o, p, "ok"), field(t, o, p, "failed")
		if ok+failed != 20 || ok == 0 {
			t.Errorf("%s %d handshakes completed, %d closed, want all 20 one or the other and some completed", p, ok, failed)
		}
	}
	if strings.Contains(log.String(), "panicked") {
		t.Errorf("a session panicked:\n%s", log.String())
	}
}

// The pipelined commands are all answered, in order, before QUIT.
func TestPipelineAnswered(t *testing.T) {
	plain, _, _ := attackServer(t)
	tg := &target{plain: plain, timeout: 10 * time.Second, sources: sources(1)}
	g := garbage(tg, "pipeline", 1, 1)
	_, lines := garbagePayload("pipeline")
	if g.lines.Load() != int64(lines+1) || g.closed.Load() != 1 {
		t.Fatalf("%s; want answer_lines=%d (greeting and one per command) and closed", g, lines+1)
	}
}

func TestFlags(t *testing.T) {
	for _, bad := range [][]string{
		{"-addr", "10.0.0.1:110"},
		{"-attacks", "nuke"},
		{"-c", "0"},
		{"-hold", "0s"},
		{"extra"},
	} {
		if _, err := parseFlags(bad, &strings.Builder{}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	cfg, err := parseFlags([]string{"-sources", "300"}, &strings.Builder{})
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.target.sources; len(s) != 300 || s[0].String() != "127.0.10.1" || s[254].String() != "127.0.11.1" {
		t.Fatalf("sources %v…", s[:3])
	}
}
