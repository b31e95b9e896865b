package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/popgate/popgate/backends"
	"github.com/popgate/popgate/internal/lock"
)

// TLSMode is how a listener protects its connections.
type TLSMode string

// The listener TLS modes.
const (
	TLSNone     TLSMode = "none"     // plain POP3, no STLS offered
	TLSStartTLS TLSMode = "starttls" // plain POP3 with STLS (RFC 2595 §4)
	TLSImplicit TLSMode = "implicit" // POP3S: TLS from the first byte (RFC 8314 §3.3)
)

// Options configure a Server. Zero durations and counts take the defaults
// documented on each field.
type Options struct {
	Backend backends.Backend // required; popgate's router is itself a Backend
	// Locker is the maildrop lock; nil: an in-process lock.Local owned by
	// the Server. A lock.Leaser (the Redis lock) is confirmed before each
	// commit: a session that cannot confirm it commits nothing.
	Locker lock.Locker
	// Metrics observes sessions, logins, the lock and commits; nil: none.
	Metrics Observer
	// TLSConfig is required by starttls and implicit listeners. Certificates
	// may be swapped through GetCertificate (reload).
	TLSConfig *tls.Config
	// AllowPlaintext allows USER/PASS and AUTH PLAIN/LOGIN before TLS.
	AllowPlaintext bool
	IdleTimeout    time.Duration // TRANSACTION idle; default 10m (RFC 1939 §3 minimum)
	LoginTimeout   time.Duration // before login (and TLS handshakes); default 60s
	WriteTimeout   time.Duration // deadline per write; default 60s
	// CommandTimeout is the deadline of each backend call (Login, TryLock,
	// Snapshot, UIDLMapper, Open, Commit: each its own), and the longest a
	// message stream may wait for data from the store (then the client is
	// disconnected, never given a terminator); default 60s.
	CommandTimeout   time.Duration
	AuthFailureDelay time.Duration // 0 or negative: no delay (DefaultOptions has DefaultAuthFailureDelay)
	MaxAuthFailures  int           // per connection, default 3
	// MaxSASLBuffers caps, server-wide, the SASL lines longer than a
	// command line (255 octets) being read at once: an AUTH line with an
	// initial response or a continuation line (RFC 5034 §4), each up to 32
	// KiB, holds one of these buffers until the exchange ends. Over the cap
	// the line is discarded and AUTH answered -ERR [SYS/TEMP]. Default
	// DefaultMaxSASLBuffers (8 MiB of buffers at most).
	MaxSASLBuffers int
	// MaxErrors closes the connection after this many consecutive protocol
	// faults (default DefaultMaxErrors): unknown commands, commands not valid
	// in the current state, missing, extra or malformed arguments (a message
	// number that is not a decimal number included), overlong lines. Answers
	// about well-formed message numbers that are deleted or out of range,
	// upstream failures and failed logins (see MaxAuthFailures) do not count,
	// and do not reset the count; a +OK resets it.
	MaxErrors     int
	MaxConns      int           // open connections, all listeners together; 0 = unlimited
	MaxConnsPerIP int           // open connections from one client address; 0 = unlimited (the default: NAT)
	LoginDelay    time.Duration // >0: advertise LOGIN-DELAY (RFC 2449 §6.5), in seconds; enforcing it is the Backend's (internal/identity)
	// LoginDelayVaries, when set and true, adds USER to LOGIN-DELAY before
	// login: a login may get its own delay, announced after login from the
	// Mailbox's backends.LoginDelayer (RFC 2449 §6.5).
	LoginDelayVaries func() bool
	Expire           string // "": not advertised; "NEVER" or days (RFC 2449 §6.7)
	Implementation   string // CAPA IMPLEMENTATION; default "popgate"
	// UIDLMapper, when set, may change the UIDLs of every snapshot before
	// the session presents them (UIDL migration); its error fails the login
	// with [SYS/TEMP].
	UIDLMapper UIDLMapper
	Logger     zerolog.Logger
}

// UIDLMapper rewrites the UIDLs of a snapshot just taken from mb, the
// maildrop locked under key maildrop. The result must keep the order and
// the sizes, and give every message a UIDL that is valid and unique
// (RFC 1939 §7); the proxy checks it like any snapshot.
type UIDLMapper interface {
	MapUIDLs(ctx context.Context, maildrop string, mb backends.Mailbox, msgs []backends.Message) ([]backends.Message, error)
}

// Defaults of Options.
const (
	DefaultIdleTimeout      = 10 * time.Minute
	DefaultLoginTimeout     = 60 * time.Second
	DefaultWriteTimeout     = 60 * time.Second
	DefaultCommandTimeout   = 60 * time.Second
	DefaultAuthFailureDelay = 2 * time.Second
	DefaultMaxAuthFailures  = 3
	DefaultMaxSASLBuffers   = 256
	DefaultMaxErrors        = 20
	DefaultMaxConns         = 1000
	DefaultMaxConnsPerIP    = 0 // none: many clients share one address behind NAT
)

// DefaultOptions returns Options holding every default: the gateway's
// configuration starts from them, so each default is defined here only.
// New also fills a zero timeout, MaxAuthFailures, MaxErrors or
// MaxSASLBuffers with its default; a zero AuthFailureDelay, MaxConns or MaxConnsPerIP is a value
// (no delay, no limit).
func DefaultOptions() Options {
	return Options{
		IdleTimeout:      DefaultIdleTimeout,
		LoginTimeout:     DefaultLoginTimeout,
		WriteTimeout:     DefaultWriteTimeout,
		CommandTimeout:   DefaultCommandTimeout,
		AuthFailureDelay: DefaultAuthFailureDelay,
		MaxAuthFailures:  DefaultMaxAuthFailures,
		MaxSASLBuffers:   DefaultMaxSASLBuffers,
		MaxErrors:        DefaultMaxErrors,
		MaxConns:         DefaultMaxConns,
		MaxConnsPerIP:    DefaultMaxConnsPerIP,
		Implementation:   "popgate",
	}
}

func (o Options) withDefaults() Options {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&o.IdleTimeout, DefaultIdleTimeout)
	def(&o.LoginTimeout, DefaultLoginTimeout)
	def(&o.WriteTimeout, DefaultWriteTimeout)
	def(&o.CommandTimeout, DefaultCommandTimeout)
	if o.AuthFailureDelay < 0 {
		o.AuthFailureDelay = 0
	}
	if o.MaxAuthFailures <= 0 {
		o.MaxAuthFailures = DefaultMaxAuthFailures
	}
	if o.MaxErrors <= 0 {
		o.MaxErrors = DefaultMaxErrors
	}
	if o.MaxSASLBuffers <= 0 {
		o.MaxSASLBuffers = DefaultMaxSASLBuffers
	}
	if o.Implementation == "" {
		o.Implementation = "popgate"
	}
	return o
}

// check reports options that cannot serve a listener of mode lc.TLS.
func (o Options) check(lc ListenerConfig) error {
	if o.Backend == nil {
		return errors.New("proxy: Options.Backend is nil")
	}
	if lc.TLS != TLSNone && o.TLSConfig == nil {
		return fmt.Errorf("proxy: listener %q: TLS mode %s needs Options.TLSConfig", lc.Name, lc.TLS)
	}
	return o.validate()
}

// validate checks the options that would otherwise produce a wrong CAPA.
func (o Options) validate() error {
	// RFC 2449 §6.7: EXPIRE is "NEVER" or a number of days.
	if o.Expire != "" && o.Expire != "NEVER" {
		if _, ok := parseNumber(o.Expire); !ok {
			return fmt.Errorf("proxy: Expire %q is neither NEVER nor a number of days", o.Expire)
		}
	}
	if strings.ContainsAny(o.Implementation, "\r\n") {
		return errors.New("proxy: Implementation holds a line break")
	}
	return nil
}

// ListenerConfig describes one listener passed to Serve.
type ListenerConfig struct {
	Name string // for logs ("pop3", "pop3s", …)
	TLS  TLSMode
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("proxy: server closed")

// Server serves POP3 on any number of listeners. Its methods are safe for
// concurrent use.
type Server struct {
	localLock *lock.Local

	mu        sync.Mutex
	opts      Options
	closing   bool
	listeners map[net.Listener]ListenerConfig
	sessions  map[*session]struct{}
	total     int            // connections counted against MaxConns
	perIP     map[string]int // connections per client IP
	refused   refusalLog
	saslBufs  lineBudget     // the long SASL lines being read (MaxSASLBuffers)
	wg        sync.WaitGroup // session and rejection goroutines

	nextID    atomic.Uint64
	baseCtx   context.Context
	cancelAll context.CancelFunc
}

// New returns a Server using opts.
func New(opts Options) *Server {
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		localLock: lock.NewLocal(),
		listeners: map[net.Listener]ListenerConfig{},
		sessions:  map[*session]struct{}{},
		perIP:     map[string]int{},
		baseCtx:   ctx,
		cancelAll: cancel,
	}
	s.opts = s.normalize(opts)
	s.saslBufs.max.Store(int64(s.opts.MaxSASLBuffers))
	return s
}

func (s *Server) normalize(o Options) Options {
	o = o.withDefaults()
	if o.Locker == nil {
		o.Locker = s.localLock
	}
	if o.Metrics == nil {
		o.Metrics = nopObserver{}
	}
	return o
}

// Update replaces the options (SIGHUP reload): new sessions use opts, open
// sessions keep the options they started with. Connection limits apply to
// connections accepted after the call. Options that Serve would refuse for
// one of the listeners being served (no Backend, no TLSConfig for a TLS
// listener, a bad Expire) are refused with an error, and the options in
// use stay.
func (s *Server) Update(opts Options) error {
	o := s.normalize(opts)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := o.check(ListenerConfig{TLS: TLSNone}); err != nil {
		return err
	}
	for _, lc := range s.listeners {
		if err := o.check(lc); err != nil {
			return err
		}
	}
	s.opts = o
	s.saslBufs.max.Store(int64(o.MaxSASLBuffers)) // buffers held over a lowered cap drain as their lines end
	return nil
}

// Serve accepts connections on l until Shutdown (it then returns
// ErrServerClosed) or until l fails. It closes l when it returns.
func (s *Server) Serve(l net.Listener, lc ListenerConfig) error {
	defer l.Close()
	switch lc.TLS {
	case "":
		lc.TLS = TLSNone
	case TLSNone, TLSStartTLS, TLSImplicit:
	default:
		return fmt.Errorf("proxy: listener %q: unknown TLS mode %q", lc.Name, lc.TLS)
	}
	s.mu.Lock()
	o := s.opts
	if err := o.check(lc); err != nil {
		s.mu.Unlock()
		return err
	}
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = lc
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE and friends: back off and go on serving.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			o.Logger.Warn().Err(err).Str("listener", lc.Name).Dur("backoff", backoff).Msg("accept failed")
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		s.accept(nc, lc)
	}
}

// accept registers nc and starts its goroutine, or rejects it when a
// connection limit is reached (RFC 2449 §8: [SYS/TEMP]).
func (s *Server) accept(nc net.Conn, lc ListenerConfig) {
	ip := remoteIP(nc.RemoteAddr())
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		nc.Close()
		return
	}
	o := s.opts
	id := s.nextID.Add(1)
	over := (o.MaxConns > 0 && s.total >= o.MaxConns) || (o.MaxConnsPerIP > 0 && s.perIP[ip] >= o.MaxConnsPerIP)
	if over {
		logNow := s.refused.count(time.Now())
		s.mu.Unlock()
		s.reject(nc, lc, o, id, logNow)
		return
	}
	s.wg.Add(1)
	s.total++
	s.perIP[ip]++
	ss := newSession(s, nc, lc, o, id)
	s.sessions[ss] = struct{}{}
	s.mu.Unlock()
	o.Metrics.SessionStarted()
	go func() {
		defer s.wg.Done()
		defer s.release(ss, ip)
		ss.serve()
	}()
}

func (s *Server) release(ss *session, ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.sessions, ss)
	s.total--
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
}

// rejectWrite bounds the one write to a refused connection. It never
// blocks in practice: a new socket's send buffer is empty.
const rejectWrite = 100 * time.Millisecond

// reject refuses a connection over the limits in the accept loop itself,
// so that a flood costs no goroutine and no buffer: a plain or STLS
// listener answers "-ERR [SYS/TEMP] too many connections" (RFC 2449 §8,
// RFC 3206 §5); an implicit-TLS listener closes the connection at once, as
// that answer would cost a TLS handshake per refused connection. The log
// line comes at most once a second, with the number refused (n) since the
// last one; n is 0 when this refusal is not to be logged.
func (s *Server) reject(nc net.Conn, lc ListenerConfig, o Options, id uint64, n int) {
	defer nc.Close()
	if n > 0 {
		o.Logger.Warn().Uint64("conn", id).Str("remote", nc.RemoteAddr().String()).Str("listener", lc.Name).
			Int("refused", n).Int("max_connections", o.MaxConns).Int("max_connections_per_ip", o.MaxConnsPerIP).
			Msg("connection limit reached, connection refused")
	}
	if lc.TLS == TLSImplicit {
		if tc, ok := nc.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // reset: nothing is buffered for this peer
		}
		return
	}
	_ = nc.SetWriteDeadline(time.Now().Add(rejectWrite))
	_, _ = nc.Write([]byte("-ERR [SYS/TEMP] too many connections\r\n"))
}

// refusalLog aggregates the refusal log lines: one a second at most.
type refusalLog struct {
	last    time.Time
	pending int // refused since the last line
}

// count records a refusal and returns how many to report now, or 0 if
// this one is only counted. The caller holds Server.mu.
func (r *refusalLog) count(now time.Time) int {
	r.pending++
	if now.Sub(r.last) < time.Second {
		return 0
	}
	n := r.pending
	r.last, r.pending = now, 0
	return n
}

// lineBudget counts the long SASL lines being read, server-wide, against
// Options.MaxSASLBuffers, and aggregates the log of its refusals.
type lineBudget struct {
	max, used atomic.Int64

	mu      sync.Mutex
	refused refusalLog
}

// acquire takes one buffer if the cap allows. A nil budget has no cap.
func (b *lineBudget) acquire() bool {
	if b == nil {
		return true
	}
	for {
		u := b.used.Load()
		if u >= b.max.Load() {
			return false
		}
		if b.used.CompareAndSwap(u, u+1) {
			return true
		}
	}
}

func (b *lineBudget) release() {
	if b != nil {
		b.used.Add(-1)
	}
}

// refusal records one refusal and returns how many to log now (at most
// one line a second), 0 if this one is only counted.
func (b *lineBudget) refusal(now time.Time) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.refused.count(now)
}

// Sessions returns the number of open client connections (for metrics and
// drain logs).
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops accepting, waits for open sessions until ctx is done, then
// closes the remaining ones without committing (DESIGN invariant 1) and
// waits for their goroutines to end. It returns ctx.Err() when sessions had
// to be closed, else nil.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for l := range s.listeners {
		l.Close()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancelAll()
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	for ss := range s.sessions {
		ss.kill(endShutdown)
	}
	s.mu.Unlock()
	s.cancelAll() // interrupts backend calls in flight
	<-done
	return ctx.Err()
}

func remoteIP(a net.Addr) string {
	if a == nil {
		return ""
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.String()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}
