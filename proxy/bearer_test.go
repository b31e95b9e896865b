package proxy

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/popgate/popgate/backends"
)

// bearerBackend takes a client's token: it accepts the token "good-token"
// for alice and records what it was given.
type bearerBackend struct {
	backends.Backend
	accepts bool
	mu      sync.Mutex
	got     []backends.Credentials
}

func (b *bearerBackend) AcceptsBearer() bool { return b.accepts }

func (b *bearerBackend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	b.mu.Lock()
	b.got = append(b.got, c)
	b.mu.Unlock()
	if c.Token == "" {
		return b.Backend.Login(ctx, c)
	}
	if c.Token != "good-token" || c.Password != "" {
		return nil, backends.ErrAuthFailed
	}
	c.Password = "secret pw" // the memory store knows passwords only
	return b.Backend.Login(ctx, c)
}

// AUTH XOAUTH2 and OAUTHBEARER (RFC 7628) are offered and passed through
// when the backend takes tokens, and neither offered nor accepted when it
// does not.
func TestBearerPassThrough(t *testing.T) {
	for _, accepts := range []bool{true, false} {
		bb := &bearerBackend{accepts: accepts}
		e := newEnv(t, envConfig{opts: func(o *Options) { bb.Backend = o.Backend; o.Backend = bb }})
		c := e.dialReady()
		c.Send("CAPA")
		c.ExpectPrefix("+OK")
		capa := strings.Join(c.Multi(), "\n")
		if got := strings.Contains(capa, "SASL PLAIN LOGIN OAUTHBEARER XOAUTH2"); got != accepts {
			t.Fatalf("accepts=%t: CAPA\n%s", accepts, capa)
		}
		c.Send("AUTH")
		c.ExpectPrefix("+OK")
		if got := strings.Contains(strings.Join(c.Multi(), " "), "XOAUTH2"); got != accepts {
			t.Fatalf("accepts=%t: AUTH list", accepts)
		}
		if !accepts {
			c.CmdPrefix("AUTH XOAUTH2 "+b64("user=alice\x01auth=Bearer good-token\x01\x01"), "-ERR")
			continue
		}
		// A wrong token: [AUTH]. The token is not logged.
		c.CmdPrefix("AUTH XOAUTH2 "+b64("user=alice\x01auth=Bearer bad-token-123\x01\x01"), "-ERR [AUTH]")
		// Malformed: [AUTH] too.
		c.CmdPrefix("AUTH XOAUTH2 "+b64("user=alice\x01\x01"), "-ERR")
		// The token on a continuation line, longer than a command line.
		c.CmdPrefix("AUTH OAUTHBEARER", "+ ")
		long := b64("n,a=alice,\x01host=x\x01auth=Bearer good-token\x01" + strings.Repeat("k=v\x01", 80) + "\x01")
		c.CmdPrefix(long, "+OK")
		c.OK("STAT")
		c.OK("QUIT")
		c2 := e.dialReady()
		c2.CmdPrefix("AUTH XOAUTH2 "+b64("user=alice\x01auth=Bearer good-token\x01\x01"), "+OK")
		c2.OK("QUIT")
		bb.mu.Lock()
		for _, g := range bb.got {
			if g.Username != "alice" || (g.Mechanism != "XOAUTH2" && g.Mechanism != "OAUTHBEARER") {
				t.Errorf("backend got %v", g)
			}
		}
		bb.mu.Unlock()
		eventually(t, "session end logged", func() bool { return strings.Count(e.logs.String(), "session end") >= 2 })
		if l := e.logs.String(); strings.Contains(l, "good-token") || strings.Contains(l, "bad-token-123") {
			t.Fatalf("a token in the log:\n%s", l)
		}
	}
}
