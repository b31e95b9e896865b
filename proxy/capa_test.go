package proxy

import (
	"crypto/tls"
	"net"
	"reflect"
	"testing"
	"time"

	"github.com/popgate/popgate/internal/testutil"
)

// CAPA answers (RFC 2449 §5) in every state, listener and TLS situation,
// as one table: the lines between "+OK capability list follows" and ".".
func TestCAPA(t *testing.T) {
	base := []string{"TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }
	cases := []struct {
		name     string
		mode     TLSMode // listener
		plain    bool    // AllowPlaintext
		opts     func(*Options)
		stls     bool // run STLS first
		loggedIn bool
		want     []string
	}{
		{
			name: "plaintext allowed, before login, all announcements",
			mode: TLSNone, plain: true,
			opts: func(o *Options) {
				o.Implementation = "popgate-test"
				o.LoginDelay = 90 * time.Second
				o.Expire = "NEVER"
			},
			want: with("USER", "SASL PLAIN LOGIN", "LOGIN-DELAY 90", "EXPIRE NEVER", "IMPLEMENTATION popgate-test"),
		},
		{
			name: "login delays vary per user: the global value with USER before login",
			mode: TLSNone, plain: true,
			opts: func(o *Options) {
				o.LoginDelay = 300 * time.Second
				o.LoginDelayVaries = func() bool { return true }
			},
			want: with("USER", "SASL PLAIN LOGIN", "LOGIN-DELAY 300 USER", "IMPLEMENTATION popgate"),
		},
		{
			name: "after login, a mailbox without its own delay: the global value, no USER",
			mode: TLSNone, plain: true, loggedIn: true,
			opts: func(o *Options) {
				o.LoginDelay = 300 * time.Second
				o.LoginDelayVaries = func() bool { return true }
			},
			want: with("LOGIN-DELAY 300", "IMPLEMENTATION popgate"),
		},
		{
			name: "after login: no USER, no SASL",
			mode: TLSNone, plain: true, loggedIn: true,
			want: with("IMPLEMENTATION popgate"),
		},
		{
			name: "starttls listener before STLS: STLS, no USER, no SASL",
			mode: TLSStartTLS,
			want: with("STLS", "IMPLEMENTATION popgate"),
		},
		{
			name: "starttls listener after STLS: USER and SASL, no STLS",
			mode: TLSStartTLS, stls: true,
			want: with("USER", "SASL PLAIN LOGIN", "IMPLEMENTATION popgate"),
		},
		{
			name: "implicit TLS: USER and SASL, no STLS",
			mode: TLSImplicit,
			want: with("USER", "SASL PLAIN LOGIN", "IMPLEMENTATION popgate"),
		},
		{
			name: "plain listener, plaintext refused: no way to log in is announced",
			mode: TLSNone,
			want: with("IMPLEMENTATION popgate"),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cert, pool := testCert(t)
			e := newEnv(t, envConfig{lc: ListenerConfig{Name: string(tc.mode), TLS: tc.mode}, opts: func(o *Options) {
				if tc.mode != TLSNone {
					o.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
				}
				o.AllowPlaintext = tc.plain
				if tc.opts != nil {
					tc.opts(o)
				}
			}})
			var c *client
			if tc.mode == TLSImplicit {
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: ioTimeout}, "tcp", e.addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				c = testutil.NewPOP3(t, conn)
				c.ExpectPrefix("+OK")
			} else {
				c = e.dialReady()
			}
			if tc.stls {
				c.CmdPrefix("STLS", "+OK begin TLS negotiation")
				startTLS(c, pool)
			}
			if tc.loggedIn {
				c.CmdPrefix("USER alice", "+OK")
				c.CmdPrefix("PASS secret pw", "+OK")
			}
			c.Send("CAPA")
			c.Expect("+OK capability list follows")
			if got := c.Multi(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("CAPA =\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
}
