package proxy

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"testing"

	"github.com/popgate/popgate/backends"
)

// hintBackend wraps a Backend; its mailboxes record HintNext calls.
type hintBackend struct {
	backends.Backend
	mu    sync.Mutex
	hints []string // the hinted messages' UIDLs
}

type hintMailbox struct {
	backends.Mailbox
	b *hintBackend
}

func (b *hintBackend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	mb, err := b.Backend.Login(ctx, c)
	if err != nil {
		return nil, err
	}
	return &hintMailbox{Mailbox: mb, b: b}, nil
}

func (m *hintMailbox) HintNext(next backends.Message) {
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	m.b.hints = append(m.b.hints, next.UIDL)
}

// TestHintNext pins when the proxy names the next message to a store that
// fetches ahead (backends.NextHinter): after a RETR taken in order (the
// session's first, or the one after the last), for the following message
// unless it is the last or marked deleted; never after TOP or a RETR out
// of order.
func TestHintNext(t *testing.T) {
	hb := &hintBackend{}
	e := newEnv(t, envConfig{opts: func(o *Options) { hb.Backend = o.Backend; o.Backend = hb }})
	var uidls []string
	for i := 0; i < 6; i++ {
		e.be.Append("alice", []byte("Subject: m\r\n\r\nbody\r\n"))
	}
	c := e.login("alice", "secret pw")
	for _, l := range func() []string { c.OK("UIDL"); return c.Multi() }() {
		var n int
		var u string
		if _, err := fmt.Sscan(l, &n, &u); err == nil {
			uidls = append(uidls, u)
		}
	}
	c.OK("RETR 2") // first RETR: hint 3
	c.Body()
	c.OK("RETR 3") // in order: hint 4
	c.Body()
	c.OK("TOP 4 0") // TOP: no hint
	c.Body()
	c.OK("RETR 1") // out of order: no hint
	c.Body()
	c.OK("DELE 3")
	c.OK("RETR 2") // in order, but 3 is deleted: no hint
	c.Body()
	c.OK("RETR 5") // out of order: no hint
	c.Body()
	c.OK("RETR 6") // in order, the last message: no hint
	c.Body()
	c.OK("QUIT")
	hb.mu.Lock()
	defer hb.mu.Unlock()
	if want := []string{uidls[2], uidls[3]}; !reflect.DeepEqual(hb.hints, want) {
		t.Fatalf("hints %q, want %q", hb.hints, want)
	}
}
