package imap

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"sync"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
)

// warmPool keeps authenticated upstream sessions between POP3 sessions
// (Config.Reuse). An entry is keyed by the upstream user and an HMAC of
// the credential under a key drawn at start and never stored, so the pool
// holds no credential and a session is only handed to a login presenting
// the credential the upstream accepted when it was opened. An entry is in
// the pool or in one session, never both.
type warmPool struct {
	cfg    Reuse
	secret []byte
	mu     sync.Mutex
	lru    *lru.Cache[string, *warmConn]
	stop   chan struct{}
	done   chan struct{}
	now    func() time.Time
	closed bool // under mu: put logs out instead of parking
}

// warmConn is one parked upstream session.
type warmConn struct {
	m        *Mailbox // its connection, capabilities and user (no session state)
	loggedIn time.Time
	parked   time.Time
	taken    bool // handed to a session: removing it from the LRU must not log it out
}

func newWarmPool(cfg Reuse) *warmPool {
	if cfg.Max <= 0 {
		return nil
	}
	p := &warmPool{cfg: cfg, secret: make([]byte, 32), stop: make(chan struct{}), done: make(chan struct{}), now: time.Now}
	rand.Read(p.secret)
	// Evicted entries (pool full, Purge) are logged out outside the lock.
	p.lru, _ = lru.NewWithEvict[string, *warmConn](cfg.Max, func(_ string, w *warmConn) {
		if !w.taken {
			go w.m.logout()
		}
	})
	go p.janitor()
	return p
}

// key is the pool key of user with credential secret.
func (p *warmPool) key(user, credential string) string {
	h := hmac.New(sha256.New, p.secret)
	h.Write([]byte(credential))
	return user + "\x00" + hex.EncodeToString(h.Sum(nil))
}

// take removes and returns the warm session for key, or nil. A session
// idle longer than Idle or logged in longer than MaxAge ago is logged out
// instead.
func (p *warmPool) take(key string) *warmConn {
	p.mu.Lock()
	w, ok := p.lru.Peek(key)
	if ok {
		w.taken = true
		p.lru.Remove(key)
	}
	p.mu.Unlock()
	if !ok {
		return nil
	}
	if p.expired(w) {
		go w.m.logout()
		return nil
	}
	return w
}

// put parks w under key; an older entry under the same key is logged out.
func (p *warmPool) put(key string, w *warmConn) {
	w.parked = p.now()
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		w.m.logout()
		return
	}
	p.lru.Remove(key) // Add would replace an older entry without logging it out
	p.lru.Add(key, w)
	p.mu.Unlock()
}

func (p *warmPool) expired(w *warmConn) bool {
	now := p.now()
	return now.Sub(w.parked) > p.cfg.Idle || now.Sub(w.loggedIn) > p.cfg.MaxAge
}

// janitor logs out expired sessions, so that an idle upstream connection
// is not held longer than Idle (plus a tick).
func (p *warmPool) janitor() {
	defer close(p.done)
	t := time.NewTicker(max(p.cfg.Idle/4, 100*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		p.mu.Lock()
		for _, k := range p.lru.Keys() {
			if w, ok := p.lru.Peek(k); ok && p.expired(w) {
				p.lru.Remove(k) // the evict callback logs it out
			}
		}
		p.mu.Unlock()
	}
}

// close stops the janitor and logs out every parked session.
func (p *warmPool) close() {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	p.closed = true
	p.lru.Purge() // the evict callback logs each out
	p.mu.Unlock()
}

// revalidate checks a warm session before reuse with one NOOP (RFC 3501
// §6.1.2), under the command timeout: any doubt means a fresh login.
func (m *Mailbox) revalidate(ctx context.Context) error {
	return m.guard(ctx, "noop", func() error { return m.c.Noop().Wait() })
}
