// Package proxyproto puts the PROXY protocol (HAProxy's, versions 1 and 2)
// in front of a listener: a connection from a trusted source must open with
// a PROXY header, whose source address then becomes the connection's
// RemoteAddr (what logs, connection limits and throttling see); a
// connection from any other source is refused. Refusals are logged at most
// once per LogInterval per reason, with the count of those not logged.
//
// The header is read before Accept returns the connection, in a goroutine
// of its own (bounded by HeaderTimeout and MaxPending), so a slow or silent
// peer never holds up the accept loop, per-address limits counted at accept
// time already see the client's address, and implicit TLS works unchanged
// (the header precedes the TLS handshake). Parsing is done by
// github.com/pires/go-proxyproto; this package reads exactly the header's
// octets, so nothing the client sent after it is held in a buffer here.
package proxyproto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	pp "github.com/pires/go-proxyproto"
	"github.com/rs/zerolog"
)

// Refusal reasons (for logs and the metrics callback).
const (
	ReasonUntrusted = "untrusted" // source not in Trusted
	ReasonMissing   = "missing"   // trusted source, no PROXY header (or none within HeaderTimeout)
	ReasonInvalid   = "invalid"   // a malformed header
	ReasonBusy      = "busy"      // MaxPending header reads already under way
)

// Defaults of Options.
const (
	DefaultHeaderTimeout = 10 * time.Second
	DefaultMaxPending    = 1024
	DefaultLogInterval   = 10 * time.Second
)

// Options configure a Listener.
type Options struct {
	// Trusted are the sources (load balancers) allowed to connect; each
	// must send a PROXY header. Connections from elsewhere are refused.
	Trusted []netip.Prefix
	// HeaderTimeout bounds the wait for the header (default 10s).
	HeaderTimeout time.Duration
	// MaxPending bounds the connections whose header is being read
	// (default 1024); more are refused.
	MaxPending int
	// LogInterval: at most one refusal line per reason per interval
	// (default 10s).
	LogInterval time.Duration
	// Logger receives the refusal lines (warn) with "listener" when set.
	Logger zerolog.Logger
	// OnRefused, if set, is called for every refused connection.
	OnRefused func(reason string)
}

// ParseTrusted parses CIDRs ("10.0.0.0/8") and single addresses
// ("192.0.2.7", as /32 or /128).
func ParseTrusted(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither a CIDR nor an IP address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// Listener is a net.Listener that accepts PROXY-protocol connections.
type Listener struct {
	inner net.Listener
	opts  Options

	ready chan accepted
	done  chan struct{}
	sem   chan struct{}

	mu      sync.Mutex
	pending map[net.Conn]struct{}
	closed  bool
	limiter logLimiter
	wg      sync.WaitGroup
}

type accepted struct {
	c   net.Conn
	err error
}

// Listen wraps inner. Closing the Listener closes inner.
func Listen(inner net.Listener, opts Options) *Listener {
	if opts.HeaderTimeout <= 0 {
		opts.HeaderTimeout = DefaultHeaderTimeout
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.LogInterval <= 0 {
		opts.LogInterval = DefaultLogInterval
	}
	l := &Listener{
		inner:   inner,
		opts:    opts,
		ready:   make(chan accepted),
		done:    make(chan struct{}),
		sem:     make(chan struct{}, opts.MaxPending),
		pending: map[net.Conn]struct{}{},
		limiter: logLimiter{interval: opts.LogInterval, last: map[string]time.Time{}, suppressed: map[string]int{}},
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l
}

// Accept returns the next connection whose PROXY header was read.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case a := <-l.ready:
		return a.c, a.err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close closes the inner listener and every connection still waiting for
// its header.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	for c := range l.pending {
		c.Close()
	}
	l.mu.Unlock()
	err := l.inner.Close()
	l.wg.Wait()
	return err
}

func (l *Listener) acceptLoop() {
	defer l.wg.Done()
	for {
		c, err := l.inner.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and friends: hand the error to Accept, whose caller
			// backs off; this loop waits until it is taken.
			select {
			case l.ready <- accepted{err: err}:
				continue
			case <-l.done:
				return
			}
		}
		src, ok := addrPort(c.RemoteAddr())
		if !ok || !l.trusted(src.Addr()) {
			c.Close()
			l.refuse(ReasonUntrusted, c.RemoteAddr(), nil)
			continue
		}
		select {
		case l.sem <- struct{}{}:
		default:
			c.Close()
			l.refuse(ReasonBusy, c.RemoteAddr(), nil)
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			<-l.sem
			return
		}
		l.pending[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Add(1)
		go l.handshake(c)
	}
}

// handshake reads the header of c and hands the connection to Accept.
func (l *Listener) handshake(c net.Conn) {
	defer l.wg.Done()
	hc, reason, err := readHeader(c, l.opts.HeaderTimeout)
	l.mu.Lock()
	delete(l.pending, c)
	l.mu.Unlock()
	<-l.sem
	if err != nil {
		c.Close()
		l.refuse(reason, c.RemoteAddr(), err)
		return
	}
	select {
	case l.ready <- accepted{c: hc}:
	case <-l.done:
		c.Close()
	}
}

func (l *Listener) trusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range l.opts.Trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (l *Listener) refuse(reason string, from net.Addr, err error) {
	if l.opts.OnRefused != nil {
		l.opts.OnRefused(reason)
	}
	log, suppressed := l.limiter.allow(reason, time.Now())
	if !log {
		return
	}
	ev := l.opts.Logger.Warn().Str("reason", reason).Str("source", from.String()).Int("suppressed", suppressed)
	if err != nil {
		ev = ev.Err(err)
	}
	ev.Msg("PROXY protocol: connection refused")
}

// logLimiter lets one line per reason through per interval and counts the
// others.
type logLimiter struct {
	mu         sync.Mutex
	interval   time.Duration
	last       map[string]time.Time
	suppressed map[string]int
}

// allow reports whether to log now, and how many were suppressed since the
// last line of this reason.
func (r *logLimiter) allow(reason string, now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.last[reason]; ok && now.Sub(t) < r.interval {
		r.suppressed[reason]++
		return false, 0
	}
	r.last[reason] = now
	n := r.suppressed[reason]
	r.suppressed[reason] = 0
	return true, n
}

func addrPort(a net.Addr) (netip.AddrPort, bool) {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort(), true
	}
	ap, err := netip.ParseAddrPort(a.String())
	return ap, err == nil
}

// v2sig is the PROXY protocol v2 signature (its §2.2).
var v2sig = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxV1 is the longest v1 header, CRLF included (its §2.1).
const maxV1 = 107

// readHeader reads exactly one PROXY header from c within timeout and
// returns c with the header's addresses.
func readHeader(c net.Conn, timeout time.Duration) (net.Conn, string, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, ReasonMissing, err
	}
	var buf []byte
	first := make([]byte, 6)
	if _, err := io.ReadFull(c, first); err != nil {
		return nil, ReasonMissing, fmt.Errorf("no PROXY header: %w", err)
	}
	buf = append(buf, first...)
	switch {
	case bytes.Equal(first, []byte("PROXY ")): // v1, its §2.1
		var b [1]byte
		for !bytes.HasSuffix(buf, []byte("\r\n")) {
			if len(buf) >= maxV1 {
				return nil, ReasonInvalid, errors.New("PROXY v1 header longer than 107 octets")
			}
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return nil, ReasonInvalid, fmt.Errorf("PROXY v1 header cut short: %w", err)
			}
			buf = append(buf, b[0])
		}
	case bytes.Equal(first, v2sig[:6]): // v2, its §2.2
		rest := make([]byte, 10)
		if _, err := io.ReadFull(c, rest); err != nil {
			return nil, ReasonInvalid, fmt.Errorf("PROXY v2 header cut short: %w", err)
		}
		buf = append(buf, rest...)
		if !bytes.Equal(buf[:12], v2sig) {
			return nil, ReasonInvalid, errors.New("bad PROXY v2 signature")
		}
		n := int(binary.BigEndian.Uint16(buf[14:16]))
		body := make([]byte, n)
		if _, err := io.ReadFull(c, body); err != nil {
			return nil, ReasonInvalid, fmt.Errorf("PROXY v2 header cut short: %w", err)
		}
		buf = append(buf, body...)
	default:
		return nil, ReasonMissing, errors.New("the connection did not start with a PROXY header")
	}
	h, err := pp.Read(bufio.NewReader(bytes.NewReader(buf)))
	if err != nil {
		return nil, ReasonInvalid, err
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		return nil, ReasonMissing, err
	}
	out := &Conn{Conn: c, remote: c.RemoteAddr(), local: c.LocalAddr(), Header: h}
	// LOCAL (v2) and UNKNOWN (v1) carry no client: the socket's addresses
	// stay (its §2.2: health checks from the proxy itself).
	if h.Command.IsProxy() && h.SourceAddr != nil && h.DestinationAddr != nil {
		if _, ok := h.SourceAddr.(*net.TCPAddr); ok {
			out.remote, out.local = h.SourceAddr, h.DestinationAddr
		}
	}
	return out, "", nil
}

// Conn is a connection whose PROXY header was read: RemoteAddr and
// LocalAddr are the client's and the address it connected to, as the
// header says.
type Conn struct {
	net.Conn
	remote, local net.Addr
	// Header is the PROXY header as received.
	Header *pp.Header
}

// RemoteAddr is the client's address from the header.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// LocalAddr is the destination address from the header.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// SyscallConn gives access to the socket (nothing is buffered here), so
// that idle sessions can wait without a read buffer.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("proxyproto: the connection has no socket")
}
