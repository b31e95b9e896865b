package proxy

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The server-wide cap on long SASL lines (issue 13): with MaxSASLBuffers
// long lines being read, one more AUTH initial response or continuation
// line over 255 octets is discarded and answered -ERR [SYS/TEMP]; once the
// lines in progress end, long lines are read again. Short AUTH lines never
// need a buffer. The refusals are logged at most once a second, counted.
func TestSASLBufferCap(t *testing.T) {
	const max = 2
	longPass := strings.Repeat("p", 600) // base64: 800 octets
	e := newEnv(t, envConfig{opts: func(o *Options) { o.MaxSASLBuffers = max }})
	e.be.AddUser("carol", longPass)
	used := func() int64 { return e.srv.saslBufs.used.Load() }

	// Two slow senders each hold a long line, unfinished (longer than the
	// 4 KiB read buffer: it is being accumulated).
	var holders []*client
	for i := 0; i < max; i++ {
		c := e.dialReady()
		c.SendRaw("AUTH PLAIN " + strings.Repeat("A", 6000))
		holders = append(holders, c)
	}
	eventually(t, "both long lines held", func() bool { return used() == max })

	// A short AUTH PLAIN still works.
	c := e.dialReady()
	c.CmdPrefix("AUTH PLAIN "+b64("\x00alice\x00secret pw"), "+OK")
	c.CmdPrefix("QUIT", "+OK")

	// Long lines are refused: an initial response, then a continuation.
	start := time.Now()
	const refusals = 10
	for i := 0; i < refusals/2; i++ {
		c := e.dialReady()
		c.CmdPrefix("AUTH PLAIN "+strings.Repeat("B", 2000), "-ERR [SYS/TEMP]")
		c.CmdPrefix("AUTH LOGIN", "+ ")
		c.CmdPrefix(b64("carol"), "+ ")
		c.CmdPrefix(b64(longPass), "-ERR [SYS/TEMP]")
		// Refusals are not protocol faults and not failed logins: the
		// session goes on.
		c.CmdPrefix("NOOP", "-ERR")
		c.CmdPrefix("QUIT", "+OK")
	}
	elapsed := time.Since(start)
	if u := used(); u != max {
		t.Errorf("%d long lines held after the refusals, want %d", u, max)
	}

	// The holders finish their lines: the buffers come back.
	for _, h := range holders {
		h.SendRaw("\r\n")
		h.ExpectPrefix("-ERR")
	}
	eventually(t, "long lines released", func() bool { return used() == 0 })
	c = e.dialReady()
	c.CmdPrefix("AUTH LOGIN", "+ ")
	c.CmdPrefix(b64("carol"), "+ ")
	c.CmdPrefix(b64(longPass), "+OK")
	c.CmdPrefix("QUIT", "+OK")
	eventually(t, "released after login", func() bool { return used() == 0 })
	// A connection dropped in the middle of a long line gives its buffer
	// back too.
	c = e.dialReady()
	c.SendRaw("AUTH PLAIN " + strings.Repeat("C", 6000))
	eventually(t, "a long line held", func() bool { return used() == 1 })
	c.Conn().Close()
	eventually(t, "released after a drop", func() bool { return used() == 0 })

	// The log: aggregated, never one line per refusal.
	var lines, counted int
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if !strings.Contains(l, "SASL buffer limit reached") {
			continue
		}
		lines++
		var m struct {
			Refused int `json:"refused"`
			Max     int `json:"max_sasl_buffers"`
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil || m.Max != max || m.Refused < 1 {
			t.Errorf("log line %s (%v)", l, err)
		}
		counted += m.Refused
	}
	if lines == 0 || lines > 1+int(elapsed/time.Second) || counted > refusals {
		t.Errorf("%d log lines counting %d refusals for %d refusals in %v: want one a second at most", lines, counted, refusals, elapsed)
	}
}
