// Package demo is popgate's embedded mail store: an in-process IMAP server
// (go-imap's imapserver with its in-memory backend, imapmemserver) listening
// on loopback, with a demo user whose INBOX holds a handful of realistic
// messages (see Samples).
//
// popgate's IMAP backend talks to it like to any other IMAP server, so the
// demo exercises the real code path, and a user can watch the same mailbox
// with an IMAP client (for example see a POP3 deletion happen at QUIT).
//
// The store keeps everything in memory and allows plaintext LOGIN, which is
// why it only ever listens on a loopback address.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapserver"
	"github.com/emersion/go-imap/v2/imapserver/imapmemserver"
	"github.com/rs/zerolog"
)

// The demo account Start creates.
const (
	DemoUser     = "demo"
	DemoPassword = "demo"
)

// DefaultIMAPAddress is where Start listens when Options.IMAPAddress is empty.
const DefaultIMAPAddress = "127.0.0.1:1143"

// Options configures Start.
type Options struct {
	// IMAPAddress is the loopback host:port the IMAP server listens on
	// ("127.0.0.1:1143"; port 0 picks a free port, see Store.IMAPAddr).
	// Empty: DefaultIMAPAddress. A non-loopback host is an error: the store
	// accepts plaintext passwords.
	IMAPAddress string
	// Logger receives the IMAP server's error messages. Credentials and
	// message contents are never logged.
	Logger zerolog.Logger
	// NoSeed leaves out the demo user and its sample messages, for tests
	// that add their own users.
	NoSeed bool
}

// Store is a running embedded store. Its methods are safe for concurrent use.
type Store struct {
	mem    *imapmemserver.Server
	server *imapserver.Server
	ln     net.Listener
	log    zerolog.Logger
	done   chan struct{}

	mu    sync.Mutex
	users map[string]*imapmemserver.User

	closeOnce sync.Once
	closeErr  error
}

// Start listens on opts.IMAPAddress and serves IMAP there until Close. Unless
// opts.NoSeed is set, it creates the user DemoUser (password DemoPassword)
// with Samples in its INBOX. ctx bounds the start only; the store runs until
// Close.
func Start(ctx context.Context, opts Options) (*Store, error) {
	addr := opts.IMAPAddress
	if addr == "" {
		addr = DefaultIMAPAddress
	}
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}

	s := &Store{
		mem:   imapmemserver.New(),
		log:   opts.Logger,
		done:  make(chan struct{}),
		users: make(map[string]*imapmemserver.User),
	}
	if !opts.NoSeed {
		if err := s.AddUser(DemoUser, DemoPassword); err != nil {
			return nil, err
		}
		for _, m := range Samples() {
			if err := s.appendAt(DemoUser, m.Raw, m); err != nil {
				return nil, err
			}
		}
	}

	s.server = imapserver.New(&imapserver.Options{
		NewSession: func(*imapserver.Conn) (imapserver.Session, *imapserver.GreetingData, error) {
			return s.mem.NewSession(), nil, nil
		},
		// IMAP4rev2 brings UIDPLUS (UID EXPUNGE) and MOVE to IMAP4rev1
		// clients too, which popgate's delete policies use.
		Caps: imap.CapSet{
			imap.CapIMAP4rev1: {},
			imap.CapIMAP4rev2: {},
		},
		Logger: printfLogger{s.log},
		// Plaintext LOGIN is acceptable only because the listener is
		// loopback-only (checked above).
		InsecureAuth: true,
	})

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("demo: listen on %s: %w", addr, err)
	}
	s.ln = ln
	go func() {
		defer close(s.done)
		if err := s.server.Serve(ln); err != nil {
			s.log.Error().Err(err).Msg("demo IMAP server stopped")
		}
	}()
	s.log.Debug().Str("imap_address", ln.Addr().String()).Msg("demo store listening")
	return s, nil
}

// checkLoopback refuses addresses whose host is not a loopback IP or
// "localhost".
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("demo: IMAP address %q: %w", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("demo: IMAP address %q is not a loopback address; the demo store accepts plaintext passwords and listens on loopback only", addr)
}

// IMAPAddr returns the address the IMAP server listens on (host:port, with
// the actual port when Options.IMAPAddress asked for port 0).
func (s *Store) IMAPAddr() string { return s.ln.Addr().String() }

// Close stops the IMAP server and closes its connections. The data is lost.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closeErr = s.server.Close()
		<-s.done
	})
	return s.closeErr
}

// AddUser creates a user with an empty INBOX and a Trash folder. Adding a
// user that exists is an error.
func (s *Store) AddUser(name, password string) error {
	if name == "" {
		return errors.New("demo: empty user name")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.users[name]; ok {
		return fmt.Errorf("demo: user %q exists", name)
	}
	u := imapmemserver.NewUser(name, password)
	for _, mbox := range []string{"INBOX", "Trash"} {
		if err := u.Create(mbox, nil); err != nil {
			return fmt.Errorf("demo: create %s for %q: %w", mbox, name, err)
		}
	}
	// Subscribed, so that IMAP clients show it.
	if err := u.Subscribe("INBOX"); err != nil {
		return err
	}
	s.mem.AddUser(u)
	s.users[name] = u
	return nil
}

// Append adds raw to user's INBOX with the current time as internal date.
// raw should use CRLF line endings: IMAP clients and POP3 see it as is.
func (s *Store) Append(user string, raw []byte) error {
	return s.appendAt(user, raw, Sample{})
}

func (s *Store) appendAt(user string, raw []byte, m Sample) error {
	s.mu.Lock()
	u := s.users[user]
	s.mu.Unlock()
	if u == nil {
		return fmt.Errorf("demo: no user %q", user)
	}
	// imapmemserver dereferences the options: never pass nil.
	opts := &imap.AppendOptions{Time: m.Date}
	buf := bytes.Clone(raw)
	if _, err := u.Append("INBOX", bytes.NewReader(buf), opts); err != nil {
		return fmt.Errorf("demo: append for %q: %w", user, err)
	}
	return nil
}

// printfLogger adapts zerolog to imapserver.Logger. imapserver logs only
// server-side errors through it, never commands or credentials.
type printfLogger struct{ log zerolog.Logger }

func (l printfLogger) Printf(format string, args ...any) {
	l.log.Warn().Str("component", "demo-imap").Msgf(format, args...)
}
