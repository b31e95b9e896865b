package backends

import (
	"context"
	"sync"
)

// Instance is a Backend shared by the sessions of several configurations
// in turn: a reload keeps an unchanged backend's Instance (its caches
// survive) and retires a replaced one. Close retires it: no new login is
// accepted, and the Backend is closed when the last session that logged in
// through the Instance has closed its Mailbox (open sessions finish on the
// instance they started with).
type Instance struct {
	b Backend

	mu      sync.Mutex
	active  int // logins in progress and open mailboxes
	retired bool
	closed  bool
	err     error
	done    chan struct{} // closed once b is closed
}

// NewInstance wraps b.
func NewInstance(b Backend) *Instance { return &Instance{b: b, done: make(chan struct{})} }

// Backend returns the wrapped Backend.
func (in *Instance) Backend() Backend { return in.b }

// Login implements Backend. After Close it fails with ErrUnavailable.
func (in *Instance) Login(ctx context.Context, c Credentials) (Mailbox, error) {
	in.mu.Lock()
	if in.retired {
		in.mu.Unlock()
		return nil, ErrUnavailable
	}
	in.active++
	in.mu.Unlock()
	mb, err := in.b.Login(ctx, c)
	if err != nil {
		in.release()
		return nil, err
	}
	return &instanceMailbox{Mailbox: mb, in: in}, nil
}

// AcceptsBearer implements BearerAcceptor for the wrapped Backend.
func (in *Instance) AcceptsBearer() bool { return AcceptsBearer(in.b) }

// Close implements Backend: it retires the instance and closes the
// Backend now when no session uses it, else when the last one ends. It
// returns the Backend's Close error when that happened now.
func (in *Instance) Close() error {
	in.mu.Lock()
	in.retired = true
	idle := in.active == 0
	in.mu.Unlock()
	if idle {
		return in.closeBackend()
	}
	return nil
}

// Done is closed once the Backend has been closed.
func (in *Instance) Done() <-chan struct{} { return in.done }

func (in *Instance) release() {
	in.mu.Lock()
	in.active--
	last := in.retired && in.active == 0
	in.mu.Unlock()
	if last {
		in.closeBackend()
	}
}

func (in *Instance) closeBackend() error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return in.err
	}
	in.closed = true
	in.mu.Unlock()
	err := in.b.Close()
	in.mu.Lock()
	in.err = err
	in.mu.Unlock()
	close(in.done)
	return err
}

// instanceMailbox releases its Instance when closed.
type instanceMailbox struct {
	Mailbox
	in   *Instance
	once sync.Once
}

func (m *instanceMailbox) Close() error {
	err := m.Mailbox.Close()
	m.once.Do(m.in.release)
	return err
}

// MaildropID implements MaildropIdentifier with the backend's own.
func (m *instanceMailbox) MaildropID() string {
	if id, ok := m.Mailbox.(MaildropIdentifier); ok {
		return id.MaildropID()
	}
	return ""
}

// Unwrap returns the backend's own Mailbox.
func (m *instanceMailbox) Unwrap() Mailbox { return m.Mailbox }
