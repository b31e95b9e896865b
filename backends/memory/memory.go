// Package memory is a small in-memory backends.Backend: a test double for
// the proxy tests and benchmarks. It keeps users with passwords and their
// messages, records what sessions committed, and lets tests inject faults
// (errors from Login/Snapshot/Open/Commit, a reader that fails mid-stream, a
// slow reader). It is not the demo store: nothing is persisted.
//
// Messages are stored and delivered exactly as given to Append (no line-end
// normalisation), and Snapshot reports len(raw) as the size, so tests can
// feed the proxy's dot-stuffer bare LFs or a missing final CRLF on purpose.
package memory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/popgate/popgate/backends"
)

// Faults are the failures a test injects. The zero value injects none.
type Faults struct {
	Login    error // returned by Login (checked before the password)
	Snapshot error // returned by Snapshot
	Open     error // returned by Open
	Commit   error // returned by Commit; nothing is removed
	// Break: the reader Open returns fails with ErrBroken after delivering
	// BreakAfter octets (0: at the first Read).
	Break      bool
	BreakAfter int64
	// SlowRead > 0: every Read of an opened message sleeps this long and
	// delivers at most SlowChunk octets (default 512).
	SlowRead  time.Duration
	SlowChunk int
	// WholeOnTop: Open ignores bodyLines and always delivers the whole
	// message (a backend that cannot cut TOP itself).
	WholeOnTop bool
}

// ErrBroken is the error of a reader broken by Faults.BreakAfter.
var ErrBroken = errors.New("memory: stream broken (injected fault)")

type message struct {
	uidl string
	raw  []byte
}

type user struct {
	password string
	msgs     []message
}

// Backend is the in-memory store. The zero value is not usable; call New.
type Backend struct {
	mu      sync.Mutex
	users   map[string]*user
	seq     int
	faults  Faults
	commits []Commit
	calls   int // Commit calls, failed ones included
	logins  int
	open    int // mailboxes not yet closed
}

// Commit records one successful Mailbox.Commit call.
type Commit struct {
	User  string
	UIDLs []string // the UIDLs the session asked to remove, in order
}

// New returns an empty store.
func New() *Backend { return &Backend{users: map[string]*user{}} }

// AddUser creates (or resets the password of) a user.
func (b *Backend) AddUser(name, password string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u, ok := b.users[name]; ok {
		u.password = password
		return
	}
	b.users[name] = &user{password: password}
}

// Append adds a message to user's maildrop and returns its UIDL. The UIDL
// is unique in the store and never reused. raw is copied.
func (b *Backend) Append(name string, raw []byte) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	u, ok := b.users[name]
	if !ok {
		u = &user{}
		b.users[name] = u
	}
	b.seq++
	m := message{uidl: fmt.Sprintf("mem%08d", b.seq), raw: bytes.Clone(raw)}
	u.msgs = append(u.msgs, m)
	return m.uidl
}

// Remove deletes a message behind the sessions' back (as another client
// would); an open session then gets ErrMessageGone from Open.
func (b *Backend) Remove(name, uidl string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u, ok := b.users[name]; ok {
		u.msgs = removeUIDL(u.msgs, map[string]bool{uidl: true})
	}
}

// SetFaults replaces the injected faults; they apply to calls made after.
func (b *Backend) SetFaults(f Faults) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.faults = f
}

// UIDLs returns the UIDLs of user's messages, in order.
func (b *Backend) UIDLs(name string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	u, ok := b.users[name]
	if !ok {
		return nil
	}
	out := make([]string, len(u.msgs))
	for i, m := range u.msgs {
		out[i] = m.uidl
	}
	return out
}

// Commits returns the successful Commit calls so far.
func (b *Backend) Commits() []Commit {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]Commit(nil), b.commits...)
}

// CommitCalls returns how many times Commit was called, failures included.
func (b *Backend) CommitCalls() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls
}

// Logins returns how many logins succeeded.
func (b *Backend) Logins() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.logins
}

// OpenMailboxes returns how many mailboxes were returned by Login and not
// yet closed.
func (b *Backend) OpenMailboxes() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

// Close implements backends.Backend; the store keeps its users and
// messages (tests read them after the gateway stopped).
func (b *Backend) Close() error { return nil }

// Login implements backends.Backend.
func (b *Backend) Login(ctx context.Context, c backends.Credentials) (backends.Mailbox, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.faults.Login != nil {
		return nil, b.faults.Login
	}
	u, ok := b.users[c.Username]
	if !ok || u.password != c.Password {
		return nil, backends.ErrAuthFailed
	}
	b.logins++
	b.open++
	return &mailbox{b: b, user: c.Username}, nil
}

type mailbox struct {
	b      *Backend
	user   string
	closed bool
}

// MaildropID implements backends.MaildropIdentifier.
func (m *mailbox) MaildropID() string { return "memory:" + m.user }

func (m *mailbox) Snapshot(ctx context.Context) ([]backends.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	if m.b.faults.Snapshot != nil {
		return nil, m.b.faults.Snapshot
	}
	u := m.b.users[m.user]
	out := make([]backends.Message, len(u.msgs))
	for i, msg := range u.msgs {
		out[i] = backends.Message{UIDL: msg.uidl, Size: int64(len(msg.raw)), Ref: msg.uidl}
	}
	return out, nil
}

func (m *mailbox) Open(ctx context.Context, msg backends.Message, bodyLines int) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	f := m.b.faults
	if f.Open != nil {
		return nil, f.Open
	}
	var raw []byte
	for _, x := range m.b.users[m.user].msgs {
		if x.uidl == msg.Ref {
			raw = x.raw
		}
	}
	if raw == nil {
		return nil, backends.ErrMessageGone
	}
	if bodyLines >= 0 && !f.WholeOnTop {
		raw = cutTop(raw, bodyLines)
	}
	var r io.Reader = bytes.NewReader(raw)
	if f.Break {
		r = io.MultiReader(io.LimitReader(r, f.BreakAfter), errReader{ErrBroken})
	}
	if f.SlowRead > 0 {
		chunk := f.SlowChunk
		if chunk <= 0 {
			chunk = 512
		}
		r = &slowReader{r: r, d: f.SlowRead, chunk: chunk}
	}
	return io.NopCloser(r), nil
}

func (m *mailbox) Commit(ctx context.Context, deleted []backends.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	m.b.calls++
	if m.b.faults.Commit != nil {
		return m.b.faults.Commit
	}
	set := map[string]bool{}
	c := Commit{User: m.user}
	for _, d := range deleted {
		set[d.Ref] = true
		c.UIDLs = append(c.UIDLs, d.UIDL)
	}
	u := m.b.users[m.user]
	u.msgs = removeUIDL(u.msgs, set)
	m.b.commits = append(m.b.commits, c)
	return nil
}

func (m *mailbox) Close() error {
	m.b.mu.Lock()
	defer m.b.mu.Unlock()
	if m.closed {
		return errors.New("memory: mailbox closed twice")
	}
	m.closed = true
	m.b.open--
	return nil
}

func removeUIDL(msgs []message, set map[string]bool) []message {
	out := msgs[:0:0]
	for _, m := range msgs {
		if !set[m.uidl] {
			out = append(out, m)
		}
	}
	return out
}

// cutTop returns the header and the first n body lines of raw.
func cutTop(raw []byte, n int) []byte {
	i := 0
	// header: up to and including the first empty line
	for i < len(raw) {
		j := bytes.IndexByte(raw[i:], '\n')
		if j < 0 {
			return raw
		}
		line := raw[i : i+j]
		i += j + 1
		if len(bytes.TrimRight(line, "\r")) == 0 {
			break
		}
	}
	for ; n > 0 && i < len(raw); n-- {
		j := bytes.IndexByte(raw[i:], '\n')
		if j < 0 {
			return raw
		}
		i += j + 1
	}
	return raw[:i]
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

type slowReader struct {
	r     io.Reader
	d     time.Duration
	chunk int
}

func (s *slowReader) Read(p []byte) (int, error) {
	time.Sleep(s.d)
	if len(p) > s.chunk {
		p = p[:s.chunk]
	}
	return s.r.Read(p)
}
