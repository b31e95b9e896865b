package metrics

import (
	"context"
	"io"
	"time"

	"github.com/popgate/popgate/backends"
)

// Backend wraps b so that every call to it, and to the mailboxes it opens,
// is observed in popgate_upstream_call_duration_seconds under the backend
// name. With a nil m it returns b unchanged. The wrapped Mailbox keeps the
// optional interface backends.MaildropIdentifier when the original has it.
func (m *Metrics) Backend(name string, b backends.Backend) backends.Backend {
	if m == nil {
		return b
	}
	return &timedBackend{m: m, name: name, b: b}
}

type timedBackend struct {
	m    *Metrics
	name string
	b    backends.Backend
}

func (t *timedBackend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	start := time.Now()
	mb, err := t.b.Login(ctx, c)
	t.m.Upstream(t.name, OpLogin, time.Since(start))
	if err != nil || mb == nil {
		return mb, err
	}
	tm := &timedMailbox{m: t.m, name: t.name, mb: mb}
	if id, ok := mb.(backends.MaildropIdentifier); ok {
		return &timedMailboxID{timedMailbox: tm, id: id}, nil
	}
	return tm, nil
}

// AcceptsBearer forwards backends.BearerAcceptor of the wrapped backend
// (CAPA offers XOAUTH2/OAUTHBEARER only when a backend takes tokens).
func (t *timedBackend) AcceptsBearer() bool { return backends.AcceptsBearer(t.b) }

// Close implements backends.Backend: it closes the wrapped backend.
func (t *timedBackend) Close() error { return t.b.Close() }

type timedMailbox struct {
	m    *Metrics
	name string
	mb   backends.Mailbox
}

func (t *timedMailbox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	defer t.m.Time(t.name, OpSnapshot)()
	return t.mb.Snapshot(ctx)
}

// Open observes the time to the first byte being available (the call), not
// the streaming of the message.
func (t *timedMailbox) Open(ctx context.Context, msg backends.Message, bodyLines int) (io.ReadCloser, error) {
	defer t.m.Time(t.name, OpOpen)()
	return t.mb.Open(ctx, msg, bodyLines)
}

func (t *timedMailbox) Commit(ctx context.Context, deleted []backends.Message) error {
	defer t.m.Time(t.name, OpCommit)()
	return t.mb.Commit(ctx, deleted)
}

func (t *timedMailbox) Close() error {
	defer t.m.Time(t.name, OpClose)()
	return t.mb.Close()
}

type timedMailboxID struct {
	*timedMailbox
	id backends.MaildropIdentifier
}

func (t *timedMailboxID) MaildropID() string { return t.id.MaildropID() }

// Unwrap returns the store's own Mailbox, so that its optional interfaces
// (backends.Find) stay reachable through the timing wrapper.
func (t *timedMailbox) Unwrap() backends.Mailbox { return t.mb }
